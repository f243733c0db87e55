// Embed and CountTokens: the params sent to the sidecar, the requests
// refused before it (INVALID_ARGUMENT naming the field), and the sidecar's
// untrusted results (INTERNAL, reason SIDECAR_PROTOCOL_ERROR, when
// malformed).
#include "service/unary_conversion.h"

#include <string>

#include "gtest/gtest.h"
#include "rpc_bridge/error_reason.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::CountTokensRequest;
using llmbridge::v1::EmbedRequest;

template <typename T>
void ExpectInvalid(const absl::StatusOr<T>& got, const std::string& starts_with) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(got.status().message().substr(0, starts_with.size()), starts_with)
      << got.status().message();
}

template <typename T>
void ExpectProtocolError(const absl::StatusOr<T>& got) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(rpc::AttachedReason(got.status()), rpc::reason::kSidecarProtocolError)
      << got.status();
}

TEST(EmbedConversionTest, ParamsCarryWhatTheRequestSets) {
  EmbedRequest r;
  r.add_inputs("a cat");
  r.add_inputs("a dog");
  absl::StatusOr<rpc::Json> plain = ToEmbedParams(r, {});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(*plain, rpc::Json::parse(R"({"inputs": ["a cat", "a dog"]})"));
  r.set_model("m");
  r.set_dimensions(64);
  r.set_normalize(true);
  absl::StatusOr<rpc::Json> full = ToEmbedParams(r, {});
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(*full, rpc::Json::parse(
                       R"({"inputs": ["a cat", "a dog"], "model": "m",
                           "dimensions": 64, "normalize": true})"));
}

TEST(EmbedConversionTest, BadRequestsNameTheField) {
  EmbedRequest none;
  ExpectInvalid(ToEmbedParams(none, {}), "inputs: at least one text is required");
  EmbedRequest empty;
  empty.add_inputs("x");
  empty.add_inputs("");
  ExpectInvalid(ToEmbedParams(empty, {}), "inputs[1]: must not be empty");
  EmbedRequest negative;
  negative.add_inputs("x");
  negative.set_dimensions(-1);
  ExpectInvalid(ToEmbedParams(negative, {}), "dimensions: must be >= 0");
  EmbedRequest many;
  for (int i = 0; i <= kMaxEmbedInputs; ++i) many.add_inputs("x");
  ExpectInvalid(ToEmbedParams(many, {}), "inputs: 2049 texts");
  EmbedRequest big;
  big.add_inputs(std::string(600, 'x'));
  big.add_inputs(std::string(600, 'y'));
  RequestLimits limits;
  limits.max_request_bytes = 1000;
  ExpectInvalid(ToEmbedParams(big, limits), "inputs: the request's text is 1200 bytes");
}

TEST(EmbedConversionTest, ResultBecomesTheResponse) {
  absl::StatusOr<llmbridge::v1::EmbedResponse> got = ToEmbedResponse(
      rpc::Json::parse(R"({"embeddings": [[0.5, -1, 2e-3], [0, 0, 1]], "model": "m",
                           "usage": {"input_tokens": 5, "output_tokens": 0,
                                     "total_tokens": 5}})"),
      2);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->embeddings_size(), 2);
  EXPECT_EQ(got->embeddings(0).values_size(), 3);
  EXPECT_FLOAT_EQ(got->embeddings(0).values(0), 0.5f);
  EXPECT_FLOAT_EQ(got->embeddings(0).values(1), -1.0f);
  EXPECT_FLOAT_EQ(got->embeddings(1).values(2), 1.0f);
  EXPECT_EQ(got->model(), "m");
  EXPECT_EQ(got->usage().input_tokens(), 5);
  EXPECT_EQ(got->usage().total_tokens(), 5);
}

TEST(EmbedConversionTest, MalformedResultsAreProtocolErrors) {
  for (const char* bad : {
           R"([])",
           R"({"model": "m"})",
           R"({"embeddings": [[1.0]]})",                  // one for two inputs
           R"({"embeddings": [[1.0], "x"]})",
           R"({"embeddings": [[1.0], [true]]})",
           R"({"embeddings": [[1.0], [1e300]]})",         // not a float
           R"({"embeddings": [[1], [2]], "usage": {"input_tokens": -1}})",
       }) {
    SCOPED_TRACE(bad);
    ExpectProtocolError(ToEmbedResponse(rpc::Json::parse(bad), 2));
  }
}

TEST(CountTokensConversionTest, ChecksTheConversationAsCompleteDoes) {
  CountTokensRequest r;
  ExpectInvalid(ToCountTokensParams(r, {}), "messages: at least one message");
  auto* m = r.add_messages();
  m->set_role("robot");
  ExpectInvalid(ToCountTokensParams(r, {}), "messages[0].role: unknown role");
  m->set_role("user");
  m->set_content("How many tokens?");
  r.set_system_prompt("Be brief.");
  r.set_model("m");
  absl::StatusOr<rpc::Json> got = ToCountTokensParams(r, {});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, rpc::Json::parse(R"({"messages": [{"role": "user",
      "content": "How many tokens?"}], "model": "m", "system_prompt": "Be brief."})"));
}

TEST(CountTokensConversionTest, Result) {
  absl::StatusOr<llmbridge::v1::CountTokensResponse> got =
      ToCountTokensResponse(rpc::Json::parse(R"({"input_tokens": 17})"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->input_tokens(), 17);
  for (const char* bad : {R"({})", R"({"input_tokens": -1})", R"({"input_tokens": 1.5})",
                          R"({"input_tokens": "3"})", R"({"input_tokens": 4294967296})",
                          R"(7)"}) {
    SCOPED_TRACE(bad);
    ExpectProtocolError(ToCountTokensResponse(rpc::Json::parse(bad)));
  }
}

}  // namespace
}  // namespace llmbridge::service
