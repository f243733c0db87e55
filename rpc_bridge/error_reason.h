// Machine-readable reasons attached to statuses, for google.rpc.ErrorInfo.
//
// The bridge tags the statuses it makes itself (the sidecar exited, a
// deadline passed, ...) with a reason; statuses that come from a sidecar's
// JSON-RPC error carry the error itself (status_mapping.h) and get their
// reason from it. The bridge may also attach how long a caller should wait
// before retrying (e.g. a crash loop's back-off), for google.rpc.RetryInfo.
// The gRPC layer reads all of them in its one conversion function.
#ifndef LLMBRIDGE_RPC_BRIDGE_ERROR_REASON_H_
#define LLMBRIDGE_RPC_BRIDGE_ERROR_REASON_H_

#include <chrono>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace llmbridge::rpc {

// ErrorInfo reasons (UPPER_SNAKE_CASE, stable: clients switch on them).
namespace reason {
inline constexpr char kInvalidRequest[] = "INVALID_REQUEST";
inline constexpr char kModelNotFound[] = "MODEL_NOT_FOUND";
inline constexpr char kBackendUnavailable[] = "BACKEND_UNAVAILABLE";
inline constexpr char kBackendError[] = "BACKEND_ERROR";
// The backend answered 401 / 403: it wants credentials the sidecar does not
// send. Not the client's bearer token: the operator must fix the backend.
inline constexpr char kBackendCredentialsRejected[] = "BACKEND_CREDENTIALS_REJECTED";
inline constexpr char kBackendRateLimited[] = "BACKEND_RATE_LIMITED";
inline constexpr char kBackendTimeout[] = "BACKEND_TIMEOUT";
inline constexpr char kStreamInterrupted[] = "STREAM_INTERRUPTED";
inline constexpr char kSidecarExited[] = "SIDECAR_EXITED";
inline constexpr char kSidecarUnavailable[] = "SIDECAR_UNAVAILABLE";
inline constexpr char kSidecarError[] = "SIDECAR_ERROR";
// The sidecar sent a message that breaks the protocol (ill-typed, neither
// result nor error, not JSON) for this call.
inline constexpr char kSidecarProtocolError[] = "SIDECAR_PROTOCOL_ERROR";
// Admission control: too many calls in flight and queued; retry later.
inline constexpr char kOverloaded[] = "OVERLOADED";
// The client reads the stream more slowly than the model writes it, past
// the server's buffer limit.
inline constexpr char kClientTooSlow[] = "CLIENT_TOO_SLOW";
inline constexpr char kUnsupported[] = "UNSUPPORTED";
inline constexpr char kRequestCancelled[] = "REQUEST_CANCELLED";
inline constexpr char kDeadlineExceeded[] = "DEADLINE_EXCEEDED";
inline constexpr char kResponseTooLarge[] = "RESPONSE_TOO_LARGE";
inline constexpr char kShuttingDown[] = "SHUTTING_DOWN";
inline constexpr char kInternal[] = "INTERNAL_ERROR";
}  // namespace reason

// `status` with `reason` attached (a no-op on OK).
absl::Status WithReason(absl::Status status, std::string_view reason);

// The reason attached by WithReason, if any.
std::optional<std::string> AttachedReason(const absl::Status& status);

// The settings a status names as its cause, in the library's own terms
// (Config and PoolOptions fields): the bridge says which limit was met,
// and the gRPC layer turns that into the server flags to change, so the
// library never speaks a command line it does not have.
namespace limit {
inline constexpr char kMaxConcurrent[] = "max_concurrent";
inline constexpr char kMaxQueue[] = "max_queue";
inline constexpr char kQueueTimeout[] = "queue_timeout";
inline constexpr char kMaxLoadedModels[] = "max_loaded_models";
inline constexpr char kStartupTimeout[] = "startup_timeout";
inline constexpr char kRequestTimeout[] = "request_timeout";
inline constexpr char kSidecarCommand[] = "sidecar_command";  // python_path, sidecar_path
}  // namespace limit

// `status` with the settings behind it attached (a no-op on OK).
absl::Status WithLimits(absl::Status status, std::initializer_list<std::string_view> limits);

// The settings attached by WithLimits, in order; empty when none.
std::vector<std::string> AttachedLimits(const absl::Status& status);

// `status` with the delay a caller should wait before retrying attached
// (a no-op on OK; negative delays count as 0). It becomes the RetryInfo of
// a retryable status in place of the default.
absl::Status WithRetryDelay(absl::Status status, std::chrono::milliseconds delay);

// The delay attached by WithRetryDelay, if any.
std::optional<std::chrono::milliseconds> AttachedRetryDelay(const absl::Status& status);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_ERROR_REASON_H_
