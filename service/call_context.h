// What every handler reads from a gRPC call's context: its request id (for
// logs and error details) and its deadline (for the sidecar call).
#ifndef LLMBRIDGE_SERVICE_CALL_CONTEXT_H_
#define LLMBRIDGE_SERVICE_CALL_CONTEXT_H_

#include <chrono>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"

namespace llmbridge::service {

inline constexpr char kRequestIdHeader[] = "x-request-id";

// The caller's x-request-id (so logs join across services), else a new one.
std::string RequestIdOf(const grpc::CallbackServerContext& context);

// The gRPC deadline on our steady clock; nullopt when the client set none.
std::optional<std::chrono::steady_clock::time_point> SteadyDeadline(
    const grpc::CallbackServerContext& context);

// Why gRPC cancelled the call: the server's shutdown (`draining`: it
// cancels what runs past the grace period; UNAVAILABLE, SHUTTING_DOWN), the
// client's deadline (DEADLINE_EXCEEDED) or the client (CANCELLED).
absl::Status WhyCancelled(bool draining, const grpc::CallbackServerContext& context);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_CALL_CONTEXT_H_
