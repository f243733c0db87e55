// The typed sampling controls and response_format of a CompleteRequest: what
// reaches the sidecar (the exact JSON params), and every bad value refused
// with INVALID_ARGUMENT naming the field.
#include "service/sampling_controls.h"

#include <string>

#include "gtest/gtest.h"
#include "service/request_conversion.h"

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

void ExpectRejected(const CompleteRequest& r, const std::string& starts_with) {
  absl::StatusOr<rpc::CompleteParams> got = ToCompleteParams(r);
  ASSERT_FALSE(got.ok()) << "accepted: " << rpc::Json(*got).dump();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(got.status().message().substr(0, starts_with.size()), starts_with)
      << got.status().message();
}

TEST(SamplingControlsTest, EveryControlReachesTheSidecarUnderItsWireName) {
  CompleteRequest r = Hello();
  r.add_stop("\n\n");
  r.add_stop("END");
  r.set_seed(4294967295u);
  r.set_top_p(0.9);
  r.set_top_k(40);
  r.set_min_p(0.05);
  r.set_presence_penalty(-0.5);
  r.set_frequency_penalty(1.5);
  r.set_repeat_penalty(1.1);
  (*r.mutable_logit_bias())[42] = -100;
  (*r.mutable_logit_bias())[7] = 2.5;
  r.mutable_response_format()->mutable_json_schema()->set_schema(
      R"({"type": "object", "properties": {"n": {"type": "integer"}}})");
  r.mutable_response_format()->mutable_json_schema()->set_name("answer");
  r.mutable_response_format()->mutable_json_schema()->set_strict(true);
  absl::StatusOr<rpc::CompleteParams> got = ToCompleteParams(r);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(rpc::Json(*got), rpc::Json::parse(R"({
    "messages": [{"role": "user", "content": "Hello"}],
    "stop": ["\n\n", "END"], "seed": 4294967295, "top_p": 0.9, "top_k": 40,
    "min_p": 0.05, "presence_penalty": -0.5, "frequency_penalty": 1.5,
    "repeat_penalty": 1.1, "logit_bias": {"42": -100.0, "7": 2.5},
    "response_format": {"json_schema": {
      "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
      "name": "answer", "strict": true}}
  })"));
}

TEST(SamplingControlsTest, UnsetControlsAreLeftOutAndZeroesAreSent) {
  absl::StatusOr<rpc::CompleteParams> plain = ToCompleteParams(Hello());
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(rpc::Json(*plain),
            rpc::Json::parse(R"({"messages": [{"role": "user", "content": "Hello"}]})"));
  // proto3 `optional`: an explicit 0 is a value, not "unset".
  CompleteRequest r = Hello();
  r.set_seed(0);
  r.set_top_k(0);
  r.set_top_p(0);
  r.mutable_response_format()->mutable_json_object();
  absl::StatusOr<rpc::CompleteParams> got = ToCompleteParams(r);
  ASSERT_TRUE(got.ok()) << got.status();
  rpc::Json wire = *got;
  EXPECT_EQ(wire["seed"], 0);
  EXPECT_EQ(wire["top_k"], 0);
  EXPECT_EQ(wire["top_p"], 0.0);
  EXPECT_EQ(wire["response_format"], rpc::Json::parse(R"({"json_object": {}})"));
}

TEST(SamplingControlsTest, OutOfRangeValuesNameTheirField) {
  struct Case {
    void (*set)(CompleteRequest&);
    const char* error;
  };
  const Case cases[] = {
      {[](CompleteRequest& r) { r.set_top_p(1.5); }, "top_p: must be between 0 and 1"},
      {[](CompleteRequest& r) { r.set_top_p(-0.1); }, "top_p:"},
      {[](CompleteRequest& r) { r.set_min_p(2); }, "min_p:"},
      {[](CompleteRequest& r) { r.set_top_k(-1); }, "top_k: must be >= 0"},
      {[](CompleteRequest& r) { r.set_presence_penalty(2.5); }, "presence_penalty:"},
      {[](CompleteRequest& r) { r.set_frequency_penalty(-3); }, "frequency_penalty:"},
      {[](CompleteRequest& r) { r.set_repeat_penalty(0); },
       "repeat_penalty: must be greater than 0"},
      {[](CompleteRequest& r) { r.set_top_p(std::nan("")); }, "top_p:"},
      {[](CompleteRequest& r) { r.add_stop(""); }, "stop[0]: must not be empty"},
      {[](CompleteRequest& r) {
         for (int i = 0; i < 17; ++i) r.add_stop("x");
       },
       "stop: 17 strings, over the limit of 16"},
      {[](CompleteRequest& r) { r.add_stop(std::string(1025, 'x')); }, "stop[0]: 1025 bytes"},
      {[](CompleteRequest& r) { (*r.mutable_logit_bias())[-1] = 1; },
       "logit_bias: token id -1 is negative"},
      {[](CompleteRequest& r) { (*r.mutable_logit_bias())[5] = 101; },
       "logit_bias[5]: must be between -100 and 100"},
      {[](CompleteRequest& r) { r.mutable_response_format(); }, "response_format: set"},
      {[](CompleteRequest& r) { r.mutable_response_format()->mutable_json_schema(); },
       "response_format.json_schema.schema: required"},
      {[](CompleteRequest& r) {
         r.mutable_response_format()->mutable_json_schema()->set_schema("{\"type\": ");
       },
       "response_format.json_schema.schema: not valid JSON"},
      {[](CompleteRequest& r) {
         r.mutable_response_format()->mutable_json_schema()->set_schema("[1]");
       },
       "response_format.json_schema.schema: must be a JSON object"},
      {[](CompleteRequest& r) {
         r.mutable_response_format()->mutable_json_schema()->set_schema(
             std::string(100, '[') + std::string(100, ']'));
       },
       "response_format.json_schema.schema: nested 100 levels deep"},
  };
  for (const Case& c : cases) {
    CompleteRequest r = Hello();
    c.set(r);
    ExpectRejected(r, c.error);
  }
}

TEST(SamplingControlsTest, StopStringsAndSchemaCountTowardsTheRequestSize) {
  CompleteRequest r = Hello();
  r.add_stop(std::string(600, 's'));
  r.mutable_response_format()->mutable_json_schema()->set_schema(
      R"({"description": ")" + std::string(600, 'd') + R"("})");
  EXPECT_TRUE(ToCompleteParams(r, 2000).ok());
  absl::StatusOr<rpc::CompleteParams> got = ToCompleteParams(r, 1000);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SamplingControlsTest, ADepthCountIgnoresBracketsInsideStrings) {
  CompleteRequest r = Hello();
  r.mutable_response_format()->mutable_json_schema()->set_schema(
      R"({"pattern": ")" + std::string(100, '[') + R"(\""})");
  EXPECT_TRUE(ToCompleteParams(r).ok());
}

}  // namespace
}  // namespace llmbridge::service
