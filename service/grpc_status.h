// The one conversion from absl::Status to grpc::Status for every RPC.
#ifndef LLMBRIDGE_SERVICE_GRPC_STATUS_H_
#define LLMBRIDGE_SERVICE_GRPC_STATUS_H_

#include <cstddef>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace llmbridge::service {

// Messages longer than this are cut (with a marker): a status travels in
// HTTP/2 trailers, and a huge stderr quote must not break the call.
inline constexpr size_t kMaxStatusMessageBytes = 2048;

// absl and gRPC share code numbers, so the code maps one to one.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_GRPC_STATUS_H_
