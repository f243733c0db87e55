#include "rpc_bridge/status_mapping.h"

#include <chrono>
#include <optional>
#include <string>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gmock/gmock.h"
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
  // A backend's 401 / 403 says more (CredentialsRefusal below).
  EXPECT_NE(s.message().find("what to do"), absl::string_view::npos) << s.message();
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
            absl::StatusCode::kFailedPrecondition, "BACKEND_CREDENTIALS_REJECTED"},
        Row{rpc::kBackendError, Json{{"http_status", 403}},
            absl::StatusCode::kFailedPrecondition, "BACKEND_CREDENTIALS_REJECTED"},
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
        // The connection dropped or went silent mid-stream.
        Row{rpc::kStreamError, Json{{"http_status", 200}},
            absl::StatusCode::kUnavailable, "STREAM_INTERRUPTED"},
        // The backend itself reported an error mid-stream.
        Row{rpc::kStreamError,
            Json{{"http_status", 200}, {"upstream_error", "model runner stopped"}},
            absl::StatusCode::kInternal, "STREAM_INTERRUPTED"},
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

TEST(StatusMappingTest, HttpStatusOfACredentialsRefusalIsFailedPrecondition) {
  EXPECT_EQ(rpc::HttpStatusToCode(401), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(rpc::HttpStatusToCode(403), absl::StatusCode::kFailedPrecondition);
}

// A backend's 401 / 403 must not read as the client's own bearer token
// failing (UNAUTHENTICATED / PERMISSION_DENIED): it names the backend and
// its credentials, and keeps the sidecar's message (address, body).
TEST(StatusMappingTest, CredentialsRefusalNamesTheBackendNotTheClient) {
  for (int http : {401, 403}) {
    const std::string sidecar_message =
        "vllm at http://10.0.0.7:8000 answered HTTP " + std::to_string(http) +
        " for model 'm': Unauthorized";
    absl::Status s = rpc::RpcErrorToStatus(
        {rpc::kBackendError, sidecar_message,
         Json{{"backend", "vllm"}, {"model", "m"}, {"http_status", http},
              {"upstream_error", "Unauthorized"}}});
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << http;
    const std::string message(s.message());
    EXPECT_EQ(message.find("the backend (vllm) refused the sidecar's request with HTTP " +
                           std::to_string(http)),
              0u)
        << message;
    EXPECT_NE(message.find(sidecar_message), std::string::npos) << message;
    EXPECT_NE(message.find("not the client's token"), std::string::npos) << message;
    EXPECT_NE(message.find("--api-key"), std::string::npos) << message;
    ASSERT_TRUE(rpc::RpcErrorFromStatus(s).has_value());  // the error travels on
    EXPECT_EQ(rpc::RpcErrorFromStatus(s)->message, sidecar_message);
  }
}

TEST(ErrorReasonTest, RetryDelayTravelsAsAPayload) {
  EXPECT_FALSE(rpc::AttachedRetryDelay(absl::UnavailableError("x")).has_value());
  absl::Status s = rpc::WithRetryDelay(
      rpc::WithReason(absl::UnavailableError("x"), rpc::reason::kSidecarUnavailable),
      std::chrono::milliseconds(12500));
  EXPECT_EQ(rpc::AttachedRetryDelay(s), std::chrono::milliseconds(12500));
  EXPECT_EQ(rpc::AttachedReason(s), rpc::reason::kSidecarUnavailable);  // kept
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "x");
  // Attaching again replaces; a negative delay is no wait at all.
  EXPECT_EQ(rpc::AttachedRetryDelay(rpc::WithRetryDelay(s, std::chrono::seconds(2))),
            std::chrono::milliseconds(2000));
  EXPECT_EQ(rpc::AttachedRetryDelay(
                rpc::WithRetryDelay(absl::UnavailableError("x"), std::chrono::milliseconds(-5))),
            std::chrono::milliseconds(0));
  // OK carries no payloads.
  EXPECT_FALSE(rpc::AttachedRetryDelay(
                   rpc::WithRetryDelay(absl::OkStatus(), std::chrono::seconds(3)))
                   .has_value());
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

// What a client decodes from grpc-status-details-bin.
struct Details {
  grpc::StatusCode code;
  std::string reason;
  std::optional<google::rpc::RetryInfo> retry;
};

Details Decode(const grpc::Status& g) {
  google::rpc::Status status;
  EXPECT_TRUE(status.ParseFromString(g.error_details()));
  EXPECT_EQ(status.code(), g.error_code());
  Details out{g.error_code(), "", std::nullopt};
  int infos = 0, retries = 0;
  for (const auto& any : status.details()) {
    google::rpc::ErrorInfo info;
    google::rpc::RetryInfo retry;
    if (any.UnpackTo(&info)) {
      ++infos;
      out.reason = info.reason();
    } else if (any.UnpackTo(&retry)) {
      ++retries;
      out.retry = retry;
    }
  }
  EXPECT_EQ(infos, 1);
  EXPECT_LE(retries, 1);
  return out;
}

std::chrono::milliseconds DelayOf(const google::rpc::RetryInfo& retry) {
  return std::chrono::seconds(retry.retry_delay().seconds()) +
         std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::nanoseconds(retry.retry_delay().nanos()));
}

// Deterministic failures carry no RetryInfo: the same call fails the same
// way. Transient ones keep it.
TEST(GrpcStatusTest, RetryInfoOnlyWhereRetryingCanHelp) {
  struct Row {
    const char* what;
    absl::Status status;
    grpc::StatusCode code;
    const char* reason;
    bool retry;
  };
  const Row rows[] = {
      {"backend error event mid-stream",
       rpc::RpcErrorToStatus({rpc::kStreamError, "Ollama reported an error mid-stream",
                              Json{{"http_status", 200}, {"upstream_error", "boom"}}}),
       grpc::StatusCode::INTERNAL, "STREAM_INTERRUPTED", false},
      {"backend dropped the connection mid-stream",
       rpc::RpcErrorToStatus({rpc::kStreamError, "dropped the connection",
                              Json{{"http_status", 200}}}),
       grpc::StatusCode::UNAVAILABLE, "STREAM_INTERRUPTED", true},
      {"backend refused the sidecar's credentials",
       rpc::RpcErrorToStatus({rpc::kBackendError, "HTTP 401", Json{{"http_status", 401}}}),
       grpc::StatusCode::FAILED_PRECONDITION, "BACKEND_CREDENTIALS_REJECTED", false},
      {"backend forbade the sidecar",
       rpc::RpcErrorToStatus({rpc::kBackendError, "HTTP 403", Json{{"http_status", 403}}}),
       grpc::StatusCode::FAILED_PRECONDITION, "BACKEND_CREDENTIALS_REJECTED", false},
      {"backend unreachable",
       rpc::RpcErrorToStatus({rpc::kConnectionError, "cannot reach", Json()}),
       grpc::StatusCode::UNAVAILABLE, "BACKEND_UNAVAILABLE", true},
      {"sidecar unavailable",
       rpc::WithReason(absl::UnavailableError("starting"), rpc::reason::kSidecarUnavailable),
       grpc::StatusCode::UNAVAILABLE, "SIDECAR_UNAVAILABLE", true},
      {"overloaded",
       rpc::WithReason(absl::ResourceExhaustedError("full"), rpc::reason::kOverloaded),
       grpc::StatusCode::RESOURCE_EXHAUSTED, "OVERLOADED", true},
      {"answer over the line cap",
       rpc::WithReason(absl::ResourceExhaustedError("line over 16 MiB"),
                       rpc::reason::kResponseTooLarge),
       grpc::StatusCode::RESOURCE_EXHAUSTED, "RESPONSE_TOO_LARGE", false},
  };
  for (const Row& row : rows) {
    Details d = Decode(service::ToGrpcStatus(row.status, {"ollama", "m", "req-1"}));
    EXPECT_EQ(d.code, row.code) << row.what;
    EXPECT_EQ(d.reason, row.reason) << row.what;
    EXPECT_EQ(d.retry.has_value(), row.retry) << row.what;
    if (d.retry.has_value()) {
      EXPECT_EQ(DelayOf(*d.retry), std::chrono::seconds(1)) << row.what;  // the default
    }
  }
}

// A delay the bridge attached (a crash loop's back-off) is the RetryInfo's,
// to the millisecond; it never makes a deterministic failure retryable.
TEST(GrpcStatusTest, AttachedRetryDelayBecomesTheRetryInfo) {
  Details d = Decode(service::ToGrpcStatus(rpc::WithRetryDelay(
      rpc::WithReason(absl::UnavailableError("crash loop"), rpc::reason::kSidecarUnavailable),
      std::chrono::milliseconds(12500))));
  EXPECT_EQ(d.code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(d.reason, "SIDECAR_UNAVAILABLE");
  ASSERT_TRUE(d.retry.has_value());
  EXPECT_EQ(d.retry->retry_delay().seconds(), 12);
  EXPECT_EQ(d.retry->retry_delay().nanos(), 500000000);

  Details thirty = Decode(service::ToGrpcStatus(rpc::WithRetryDelay(
      absl::ResourceExhaustedError("full"), std::chrono::seconds(30))));
  ASSERT_TRUE(thirty.retry.has_value());
  EXPECT_EQ(DelayOf(*thirty.retry), std::chrono::seconds(30));

  Details not_found = Decode(service::ToGrpcStatus(rpc::WithRetryDelay(
      absl::NotFoundError("no such model file"), std::chrono::seconds(30))));
  EXPECT_EQ(not_found.code, grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(not_found.retry.has_value());
}

}  // namespace
}  // namespace llmbridge

namespace llmbridge {
namespace {

// The bridge names the settings behind a refusal; the gRPC status names the
// server flags that set them, and lists the settings in ErrorInfo.
TEST(GrpcStatusTest, LimitsTheBridgeNamesBecomeServerFlags) {
  absl::Status full = rpc::WithLimits(
      rpc::WithReason(absl::ResourceExhaustedError("at capacity; retry shortly"),
                      rpc::reason::kOverloaded),
      {rpc::limit::kMaxConcurrent, rpc::limit::kMaxQueue});
  EXPECT_THAT(rpc::AttachedLimits(full), ::testing::ElementsAre("max_concurrent", "max_queue"));
  grpc::Status g = service::ToGrpcStatus(full, {"ollama", "m", "req-9"});
  EXPECT_EQ(g.error_message(),
            "at capacity; retry shortly (server flags: --max_concurrent, --max_queue)");
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(g.error_details()));
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(info.metadata().at("limits"), "max_concurrent,max_queue");

  // The sidecar command is two flags; the request id still comes last.
  grpc::Status spawn = service::ToGrpcStatus(
      rpc::WithLimits(absl::UnavailableError("cannot start the sidecar"),
                      {rpc::limit::kSidecarCommand}),
      {"ollama", "m", "req-9"});
  EXPECT_EQ(spawn.error_message(),
            "cannot start the sidecar (server flags: --python, --sidecar) (request id req-9)");
  // Without limits, nothing is added.
  EXPECT_EQ(service::ToGrpcStatus(absl::ResourceExhaustedError("x")).error_message(), "x");
  EXPECT_TRUE(rpc::AttachedLimits(absl::ResourceExhaustedError("x")).empty());
}

}  // namespace
}  // namespace llmbridge
