// DescribeUndecodable names what is wrong with request bytes that protobuf
// refuses: not protobuf at all, or a string field that is not UTF-8 (by
// its path). The gRPC side is covered end to end in tests/e2e.
#include "service/request_decoding.h"

#include <string>

#include "gtest/gtest.h"
#include "llmbridge/v1/llmbridge.pb.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::CompleteRequest;

std::string Serialized(const CompleteRequest& r) {
  std::string bytes;
  EXPECT_TRUE(r.SerializePartialToString(&bytes));
  return bytes;
}

CompleteRequest TwoMessages() {
  CompleteRequest r;
  for (const char* text : {"first", "second"}) {
    auto* m = r.add_messages();
    m->set_role("user");
    m->set_content(text);
  }
  return r;
}

// Replaces the UTF-8 text `from` inside serialized bytes with bytes of the
// same length that are not UTF-8 (protobuf would not serialize those).
std::string Corrupt(std::string bytes, const std::string& from) {
  size_t at = bytes.find(from);
  EXPECT_NE(at, std::string::npos);
  bytes[at] = '\xff';
  return bytes;
}

TEST(DescribeUndecodableTest, TruncatedBytes) {
  std::string bytes = Serialized(TwoMessages());
  bytes.resize(bytes.size() - 3);
  CompleteRequest parsed;
  ASSERT_FALSE(parsed.ParseFromString(bytes));
  absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
  EXPECT_EQ(why.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(why.message().find("not a valid llmbridge.v1.CompleteRequest"),
            absl::string_view::npos)
      << why.message();
  EXPECT_NE(why.message().find("truncated or corrupt"), absl::string_view::npos);
}

TEST(DescribeUndecodableTest, NamesTheStringFieldThatIsNotUtf8) {
  std::string bytes = Corrupt(Serialized(TwoMessages()), "second");
  CompleteRequest parsed;
  ASSERT_FALSE(parsed.ParseFromString(bytes));
  absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
  EXPECT_EQ(why.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(why.message().substr(0, 40),
            "messages[1].content: not valid UTF-8; pr")
      << why.message();
}

TEST(DescribeUndecodableTest, FindsFieldsInsideOptions) {
  CompleteRequest r = TwoMessages();
  (*r.mutable_options()->mutable_fields())["stop"].set_string_value("halt");
  std::string bytes = Corrupt(Serialized(r), "halt");
  absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
  EXPECT_EQ(why.message().substr(0, why.message().find(':')),
            "options.fields[0].value.string_value")
      << why.message();
}

TEST(DescribeUndecodableTest, OverlongAndSurrogateEncodingsAreNotUtf8) {
  for (std::string bad : {std::string("\xc0\xaf"), std::string("\xed\xa0\x80"),
                          std::string("\xf4\x90\x80\x80"), std::string("ab\xe2\x82")}) {
    CompleteRequest r;
    r.set_model("MODEL" + std::string(bad.size() > 5 ? 0 : 5 - bad.size(), '_'));
    std::string bytes = Serialized(r);
    size_t at = bytes.find("MODEL");
    bytes.replace(at, bad.size(), bad);
    absl::Status why = DescribeUndecodable(bytes, CompleteRequest::descriptor());
    EXPECT_EQ(why.message().substr(0, 6), "model:") << why.message();
  }
}

}  // namespace
}  // namespace llmbridge::service
