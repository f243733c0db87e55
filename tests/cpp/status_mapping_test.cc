#include "rpc_bridge/status_mapping.h"

#include "gtest/gtest.h"
#include "service/grpc_status.h"

namespace llmbridge {
namespace {

using rpc::Json;
using rpc::RpcError;

struct Row {
  int code;
  Json data;
  absl::StatusCode want;
};

class MappingTest : public ::testing::TestWithParam<Row> {};

TEST_P(MappingTest, MapsCodeAsDocumented) {
  const Row& row = GetParam();
  absl::Status s = rpc::RpcErrorToStatus({row.code, "what to do", row.data});
  EXPECT_EQ(s.code(), row.want) << "JSON-RPC code " << row.code << " data "
                                << row.data.dump();
  EXPECT_EQ(s.message(), "what to do");
}

INSTANTIATE_TEST_SUITE_P(
    ReadmeTable, MappingTest,
    ::testing::Values(
        Row{rpc::kParseError, nullptr, absl::StatusCode::kInternal},
        Row{rpc::kInvalidRequest, nullptr, absl::StatusCode::kInternal},
        Row{rpc::kInternalError, nullptr, absl::StatusCode::kInternal},
        Row{rpc::kMethodNotFound, nullptr, absl::StatusCode::kUnimplemented},
        Row{rpc::kInvalidParams, nullptr, absl::StatusCode::kInvalidArgument},
        Row{rpc::kBackendError, Json{{"http_status", 400}},
            absl::StatusCode::kInvalidArgument},
        Row{rpc::kBackendError, Json{{"http_status", 404}},
            absl::StatusCode::kNotFound},
        Row{rpc::kBackendError, Json{{"http_status", 429}},
            absl::StatusCode::kResourceExhausted},
        Row{rpc::kBackendError, Json{{"http_status", 500}},
            absl::StatusCode::kInternal},
        Row{rpc::kBackendError, Json{{"http_status", 503}},
            absl::StatusCode::kUnavailable},
        Row{rpc::kBackendError, Json{{"http_status", 504}},
            absl::StatusCode::kDeadlineExceeded},
        Row{rpc::kBackendError, nullptr, absl::StatusCode::kUnknown},
        Row{rpc::kModelNotFound, nullptr, absl::StatusCode::kNotFound},
        Row{rpc::kStreamError, nullptr, absl::StatusCode::kUnavailable},
        Row{rpc::kConnectionError, nullptr, absl::StatusCode::kUnavailable},
        Row{rpc::kRequestCancelled, nullptr, absl::StatusCode::kCancelled},
        Row{-31999, nullptr, absl::StatusCode::kUnknown}));

TEST(StatusMappingTest, KeepsOriginalErrorAsPayload) {
  absl::Status s = rpc::RpcErrorToStatus(
      {rpc::kModelNotFound, "model x", Json{{"model", "x"}}});
  auto original = rpc::RpcErrorFromStatus(s);
  ASSERT_TRUE(original.has_value());
  EXPECT_EQ(original->code, rpc::kModelNotFound);
  EXPECT_EQ(original->data["model"], "x");
  EXPECT_FALSE(rpc::RpcErrorFromStatus(absl::InternalError("x")).has_value());
}

TEST(GrpcStatusTest, KeepsCodeAndTruncatesLongMessages) {
  grpc::Status ok = service::ToGrpcStatus(absl::OkStatus());
  EXPECT_TRUE(ok.ok());
  grpc::Status nf = service::ToGrpcStatus(absl::NotFoundError("model x"));
  EXPECT_EQ(nf.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(nf.error_message(), "model x");
  std::string long_message(10000, 'a');
  long_message += "\xC3\xA9";  // a multibyte character at the very end
  grpc::Status cut = service::ToGrpcStatus(absl::UnavailableError(
      std::string(service::kMaxStatusMessageBytes - 10, 'b') + "\xC3\xA9" +
      long_message));
  EXPECT_EQ(cut.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_LE(cut.error_message().size(), service::kMaxStatusMessageBytes);
  EXPECT_NE(cut.error_message().find("[truncated]"), std::string::npos);
}

}  // namespace
}  // namespace llmbridge
