// The one conversion from absl::Status to grpc::Status for every RPC.
//
// Every error carries rich details (google.rpc.Status in the
// grpc-status-details-bin trailer) with exactly one google.rpc.ErrorInfo:
//   reason    UPPER_SNAKE_CASE, stable (rpc_bridge/error_reason.h);
//   domain    "llmbridge.io";
//   metadata  jsonrpc_code, backend, model, request_id, and http_status /
//             field / limits when known.
// A status whose cause is a setting the bridge names (rpc::WithLimits) gets
// the server flags to change appended to its message: "(server flags:
// --max_concurrent, --max_queue)"; metadata "limits" lists the settings.
// Errors worth retrying (UNAVAILABLE, RESOURCE_EXHAUSTED, except a response
// over the sidecar's line cap) also carry google.rpc.RetryInfo: the delay the
// bridge attached (rpc::WithRetryDelay), else 1 s. Deterministic failures
// carry none.
#ifndef LLMBRIDGE_SERVICE_GRPC_STATUS_H_
#define LLMBRIDGE_SERVICE_GRPC_STATUS_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace llmbridge::service {

inline constexpr char kErrorDomain[] = "llmbridge.io";

// Messages longer than this are cut (with a marker): a status travels in
// HTTP/2 trailers, and a huge stderr quote must not break the call.
inline constexpr size_t kMaxStatusMessageBytes = 2048;

// What the server knows about the call, for ErrorInfo metadata when the
// error itself does not say.
struct ErrorContext {
  std::string backend;
  std::string model;
  // Put in ErrorInfo metadata, and in the message of errors the server
  // itself must explain (INTERNAL, UNAVAILABLE, UNKNOWN), so a user can
  // quote it and an operator find the details in the log.
  std::string request_id;
};

// absl and gRPC share code numbers, so the code maps one to one.
grpc::Status ToGrpcStatus(const absl::Status& status,
                          const ErrorContext& context = {});

// The ErrorInfo reason ToGrpcStatus gives `status`.
std::string ReasonFor(const absl::Status& status);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_GRPC_STATUS_H_
