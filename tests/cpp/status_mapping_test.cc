#include "rpc_bridge/status_mapping.h"

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"
#include "rpc_bridge/error_reason.h"
#include "service/grpc_status.h"

namespace llmbridge {
namespace {

using rpc::Json;
using rpc::RpcError;

struct Row {
  int code;
  Json data;
  absl::StatusCode want;
  const char* reason;  // the ErrorInfo reason the gRPC layer gives it
};

class MappingTest : public ::testing::TestWithParam<Row> {};

TEST_P(MappingTest, MapsCodeAsDocumented) {
  const Row& row = GetParam();
  absl::Status s = rpc::RpcErrorToStatus({row.code, "what to do", row.data});
  EXPECT_EQ(s.code(), row.want) << "JSON-RPC code " << row.code << " data "
                                << row.data.dump();
  EXPECT_EQ(s.message(), "what to do");
  EXPECT_EQ(service::ReasonFor(s), row.reason);
}

INSTANTIATE_TEST_SUITE_P(
    ReadmeTable, MappingTest,
    ::testing::Values(
        Row{rpc::kParseError, nullptr, absl::StatusCode::kInternal,
            "SIDECAR_ERROR"},
        Row{rpc::kInvalidRequest, nullptr, absl::StatusCode::kInternal,
            "SIDECAR_ERROR"},
        Row{rpc::kInternalError, nullptr, absl::StatusCode::kInternal,
            "SIDECAR_ERROR"},
        Row{rpc::kMethodNotFound, nullptr, absl::StatusCode::kUnimplemented,
            "UNSUPPORTED"},
        Row{rpc::kInvalidParams, nullptr, absl::StatusCode::kInvalidArgument,
            "INVALID_REQUEST"},
        Row{rpc::kBackendError, Json{{"http_status", 400}},
            absl::StatusCode::kInvalidArgument, "BACKEND_ERROR"},
        Row{rpc::kBackendError, Json{{"http_status", 401}},
            absl::StatusCode::kUnauthenticated, "BACKEND_ERROR"},
        Row{rpc::kBackendError, Json{{"http_status", 403}},
            absl::StatusCode::kPermissionDenied, "BACKEND_ERROR"},
        Row{rpc::kBackendError, Json{{"http_status", 404}},
            absl::StatusCode::kNotFound, "MODEL_NOT_FOUND"},
        Row{rpc::kBackendError, Json{{"http_status", 408}},
            absl::StatusCode::kDeadlineExceeded, "BACKEND_TIMEOUT"},
        Row{rpc::kBackendError, Json{{"http_status", 429}},
            absl::StatusCode::kResourceExhausted, "BACKEND_RATE_LIMITED"},
        Row{rpc::kBackendError, Json{{"http_status", 500}},
            absl::StatusCode::kInternal, "BACKEND_ERROR"},
        Row{rpc::kBackendError, Json{{"http_status", 502}},
            absl::StatusCode::kUnavailable, "BACKEND_UNAVAILABLE"},
        Row{rpc::kBackendError, Json{{"http_status", 503}},
            absl::StatusCode::kUnavailable, "BACKEND_UNAVAILABLE"},
        Row{rpc::kBackendError, Json{{"http_status", 504}},
            absl::StatusCode::kDeadlineExceeded, "BACKEND_TIMEOUT"},
        Row{rpc::kBackendError, nullptr, absl::StatusCode::kUnknown,
            "BACKEND_ERROR"},
        Row{rpc::kModelNotFound, nullptr, absl::StatusCode::kNotFound,
            "MODEL_NOT_FOUND"},
        Row{rpc::kStreamError, nullptr, absl::StatusCode::kUnavailable,
            "STREAM_INTERRUPTED"},
        Row{rpc::kConnectionError, nullptr, absl::StatusCode::kUnavailable,
            "BACKEND_UNAVAILABLE"},
        Row{rpc::kRequestCancelled, nullptr, absl::StatusCode::kCancelled,
            "REQUEST_CANCELLED"},
        Row{-31999, nullptr, absl::StatusCode::kUnknown, "SIDECAR_ERROR"}));

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

TEST(GrpcStatusTest, CarriesExactlyOneErrorInfoAndRetryInfoWhenRetryable) {
  absl::Status s = rpc::RpcErrorToStatus(
      {rpc::kConnectionError, "start Ollama at host h",
       Json{{"backend", "ollama"}, {"model", "m"}, {"http_status", 503}}});
  grpc::Status g = service::ToGrpcStatus(s, {"ollama", "ignored"});
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(g.error_details()));
  EXPECT_EQ(details.code(), grpc::StatusCode::UNAVAILABLE);
  int infos = 0, retries = 0;
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    google::rpc::RetryInfo retry;
    if (any.UnpackTo(&info)) {
      ++infos;
      EXPECT_EQ(info.reason(), "BACKEND_UNAVAILABLE");
      EXPECT_EQ(info.domain(), "llmbridge.io");
      EXPECT_EQ(info.metadata().at("jsonrpc_code"), "-32003");
      EXPECT_EQ(info.metadata().at("backend"), "ollama");
      EXPECT_EQ(info.metadata().at("model"), "m");  // the sidecar's word wins
      EXPECT_EQ(info.metadata().at("http_status"), "503");
    } else if (any.UnpackTo(&retry)) {
      ++retries;
      EXPECT_GE(retry.retry_delay().seconds(), 1);
    }
  }
  EXPECT_EQ(infos, 1);
  EXPECT_EQ(retries, 1);

  grpc::Status not_retryable =
      service::ToGrpcStatus(absl::InvalidArgumentError("messages: empty"));
  ASSERT_TRUE(details.ParseFromString(not_retryable.error_details()));
  EXPECT_EQ(details.details_size(), 1);  // ErrorInfo only
}

TEST(GrpcStatusTest, BridgeReasonsWinOverCodeDefaults) {
  EXPECT_EQ(service::ReasonFor(rpc::WithReason(absl::UnavailableError("x"),
                                               rpc::reason::kSidecarExited)),
            "SIDECAR_EXITED");
  EXPECT_EQ(service::ReasonFor(absl::UnavailableError("x")),
            "SIDECAR_UNAVAILABLE");
  EXPECT_EQ(service::ReasonFor(absl::DeadlineExceededError("x")),
            "DEADLINE_EXCEEDED");
  EXPECT_EQ(service::ReasonFor(absl::InvalidArgumentError("x")),
            "INVALID_REQUEST");
}

// The rows of the README's "raised by the server itself" table that the
// serving core adds: each keeps its reason and gets RetryInfo exactly when
// retrying can help.
TEST(GrpcStatusTest, ServingCoreRowsHaveTheirReasonsAndRetryInfo) {
  struct Row {
    absl::Status status;
    grpc::StatusCode code;
    const char* reason;
    bool retry;
  };
  const Row rows[] = {
      {rpc::WithReason(absl::InternalError("bad line"), rpc::reason::kSidecarProtocolError),
       grpc::StatusCode::INTERNAL, "SIDECAR_PROTOCOL_ERROR", false},
      {rpc::WithReason(absl::ResourceExhaustedError("full"), rpc::reason::kOverloaded),
       grpc::StatusCode::RESOURCE_EXHAUSTED, "OVERLOADED", true},
      {rpc::WithReason(absl::ResourceExhaustedError("slow"), rpc::reason::kClientTooSlow),
       grpc::StatusCode::RESOURCE_EXHAUSTED, "CLIENT_TOO_SLOW", true},
      {rpc::WithReason(absl::UnavailableError("bye"), rpc::reason::kShuttingDown),
       grpc::StatusCode::UNAVAILABLE, "SHUTTING_DOWN", true},
      {rpc::RpcErrorToStatus({rpc::kModelNotFound, "no model", Json()}),
       grpc::StatusCode::NOT_FOUND, "MODEL_NOT_FOUND", false},
  };
  for (const Row& row : rows) {
    grpc::Status g = service::ToGrpcStatus(row.status, {"gguf", "m", "req-1"});
    EXPECT_EQ(g.error_code(), row.code) << row.reason;
    google::rpc::Status details;
    ASSERT_TRUE(details.ParseFromString(g.error_details()));
    bool retry = false;
    for (const auto& any : details.details()) {
      google::rpc::ErrorInfo info;
      if (any.UnpackTo(&info)) {
        EXPECT_EQ(info.reason(), row.reason);
        EXPECT_EQ(info.metadata().at("request_id"), "req-1");
      }
      retry = retry || any.Is<google::rpc::RetryInfo>();
    }
    EXPECT_EQ(retry, row.retry) << row.reason;
  }
  // Errors the server must explain quote the request id; a client's own
  // mistake does not need it.
  EXPECT_NE(service::ToGrpcStatus(absl::InternalError("x"), {"", "", "req-9"})
                .error_message()
                .find("request id req-9"),
            std::string::npos);
  EXPECT_EQ(service::ToGrpcStatus(absl::InvalidArgumentError("x"), {"", "", "req-9"})
                .error_message(),
            "x");
}

}  // namespace
}  // namespace llmbridge
