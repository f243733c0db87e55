#include "service/call_context.h"

#include "rpc_bridge/error_reason.h"
#include "service/logging.h"

namespace llmbridge::service {

std::string RequestIdOf(const grpc::CallbackServerContext& context) {
  auto it = context.client_metadata().find(kRequestIdHeader);
  if (it != context.client_metadata().end() && !it->second.empty() &&
      it->second.size() <= 128) {
    return std::string(it->second.data(), it->second.size());
  }
  return NewRequestId();
}

std::optional<std::chrono::steady_clock::time_point> SteadyDeadline(
    const grpc::CallbackServerContext& context) {
  auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return std::nullopt;
  }
  return std::chrono::steady_clock::now() +
         (deadline - std::chrono::system_clock::now());
}

absl::Status WhyCancelled(bool draining, const grpc::CallbackServerContext& context) {
  if (draining) {
    return rpc::WithReason(
        absl::UnavailableError(
            "the server shut down before the model finished; retry on "
            "another instance"),
        rpc::reason::kShuttingDown);
  }
  if (context.deadline() <= std::chrono::system_clock::now()) {
    return rpc::WithReason(absl::DeadlineExceededError("the client's deadline passed"),
                           rpc::reason::kDeadlineExceeded);
  }
  return rpc::WithReason(absl::CancelledError("the client cancelled the call"),
                         rpc::reason::kRequestCancelled);
}

}  // namespace llmbridge::service
