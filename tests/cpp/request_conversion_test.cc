// The untrusted-input limits of a CompleteRequest: each one refuses with
// INVALID_ARGUMENT naming the field and the limit, and a request just
// inside every limit passes.
#include "service/request_conversion.h"

#include <string>

#include "gtest/gtest.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::CompleteRequest;

CompleteRequest Hello() {
  CompleteRequest r;
  auto* m = r.add_messages();
  m->set_role("user");
  m->set_content("Hello");
  return r;
}

void ExpectRejected(const absl::StatusOr<rpc::CompleteParams>& got,
                    const std::string& starts_with) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(got.status().message().substr(0, starts_with.size()), starts_with)
      << got.status().message();
}

google::protobuf::Struct Nested(int levels) {
  google::protobuf::Struct root;
  google::protobuf::Struct* at = &root;
  for (int i = 1; i < levels; ++i) {
    at = (*at->mutable_fields())["n"].mutable_struct_value();
  }
  (*at->mutable_fields())["leaf"].set_number_value(1);
  return root;
}

TEST(RequestLimitsTest, AcceptsARequestInsideEveryLimit) {
  RequestLimits limits;
  limits.max_messages = 3;
  limits.max_options_depth = 4;
  CompleteRequest r = Hello();
  r.add_messages()->set_role("assistant");
  r.add_messages()->set_role("user");
  *r.mutable_options() = Nested(4);
  r.set_max_tool_iterations(limits.max_tool_iterations);
  absl::StatusOr<rpc::CompleteParams> got = ToCompleteParams(r, limits);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->messages.size(), 3u);
  EXPECT_EQ(got->options["n"]["n"]["n"]["leaf"], 1);
}

TEST(RequestLimitsTest, TooManyMessages) {
  RequestLimits limits;
  limits.max_messages = 2;
  CompleteRequest r = Hello();
  for (int i = 0; i < 2; ++i) *r.add_messages() = r.messages(0);
  ExpectRejected(ToCompleteParams(r, limits),
                 "messages: 3 messages, over the server's limit of 2");
}

TEST(RequestLimitsTest, TotalSizeCountsEveryTextField) {
  RequestLimits limits;
  limits.max_request_bytes = 100;
  CompleteRequest r = Hello();
  r.mutable_messages(0)->set_name(std::string(60, 'n'));
  r.set_model(std::string(60, 'm'));  // content alone is 5 bytes
  ExpectRejected(ToCompleteParams(r, limits), "messages: the request's text is");
}

TEST(RequestLimitsTest, OptionsSizeAndDepth) {
  RequestLimits limits;
  limits.max_options_bytes = 64;
  CompleteRequest r = Hello();
  (*r.mutable_options()->mutable_fields())["stop"].set_string_value(
      std::string(100, 's'));
  ExpectRejected(ToCompleteParams(r, limits), "options: ");
  EXPECT_NE(ToCompleteParams(r, limits).status().message().find("limit of 64"),
            absl::string_view::npos);

  RequestLimits shallow;
  shallow.max_options_depth = 3;
  CompleteRequest deep = Hello();
  *deep.mutable_options() = Nested(4);
  ExpectRejected(ToCompleteParams(deep, shallow),
                 "options: nested 4 levels deep, over the server's limit of 3");
}

TEST(RequestLimitsTest, ToolIterations) {
  CompleteRequest r = Hello();
  r.set_max_tool_iterations(RequestLimits().max_tool_iterations + 1);
  ExpectRejected(ToCompleteParams(r, RequestLimits()), "max_tool_iterations: ");
  r.set_max_tool_iterations(-1);
  ExpectRejected(ToCompleteParams(r, RequestLimits()), "max_tool_iterations: ");
}

TEST(RequestLimitsTest, NamesAndModel) {
  RequestLimits limits;
  limits.max_name_bytes = 8;
  CompleteRequest r = Hello();
  r.set_model("a-very-long-model-name");
  ExpectRejected(ToCompleteParams(r, limits), "model: 22 bytes, over the server's limit of 8");
  CompleteRequest named = Hello();
  named.mutable_messages(0)->set_name("a-long-name");
  ExpectRejected(ToCompleteParams(named, limits), "messages[0].name: 11 bytes");
}

}  // namespace
}  // namespace llmbridge::service
