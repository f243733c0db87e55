#include "service/call_lifecycle.h"

#include <utility>

#include "rpc_bridge/error_reason.h"
#include "service/call_context.h"
#include "service/local_llm_service.h"
#include "service/logging.h"

namespace llmbridge::service {

void CancelLatch::Set(rpc::StreamHandle handle) {
  std::optional<absl::Status> why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = handle;
    why = why_;
  }
  // Outside mu_: the call's end may run now, on this thread.
  if (why.has_value()) handle.Cancel(*why);
}

void CancelLatch::Cancel(const absl::Status& why) {
  std::optional<rpc::StreamHandle> handle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (why_.has_value()) return;
    why_ = why;
    handle = handle_;
  }
  if (handle.has_value()) handle->Cancel(why);
}

CallLifecycle::CallLifecycle(LocalLLMService* service, grpc::CallbackServerContext* context,
                             Metrics* metrics, std::string method)
    : service_(service),
      context_(context),
      method_(std::move(method)),
      observer_(metrics, method_),
      request_id_(RequestIdOf(*context)),
      start_(std::chrono::steady_clock::now()) {
  context->AddInitialMetadata(kRequestIdHeader, request_id_);
}

CallLifecycle::~CallLifecycle() {
  if (counted_) service_->CallEnded(latch_);
}

absl::Status CallLifecycle::Begin() {
  if (!service_->CallStarted(latch_)) {
    return rpc::WithReason(
        absl::UnavailableError("the server is shutting down; retry on another instance"),
        rpc::reason::kShuttingDown);
  }
  counted_ = true;
  return absl::OkStatus();
}

void CallLifecycle::OnGrpcCancel() { Cancel(WhyCancelled(service_->draining(), *context_)); }

void CallLifecycle::LogDone(const absl::Status& status, nlohmann::json extra) const {
  nlohmann::json fields = {
      {"request_id", request_id_},
      {"method", method_},
      {"code", CodeName(status.code())},
      {"cause", CauseOf(status)},
      {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - start_)
                 .count()}};
  if (!status.ok()) {
    fields["reason"] = ReasonFor(status);
    fields["error"] = std::string(status.message());
  }
  if (extra.is_object()) {
    for (auto& [key, value] : extra.items()) fields[key] = std::move(value);
  }
  LogEvent(status.ok() ? "info" : "warn", "request_done", std::move(fields));
}

std::string CauseOf(const absl::Status& status) {
  if (status.ok()) return "completed";
  const std::string reason = ReasonFor(status);
  if (reason == rpc::reason::kOverloaded) return "overload";
  if (reason == rpc::reason::kClientTooSlow) return "client_too_slow";
  if (reason == rpc::reason::kShuttingDown) return "shutdown";
  if (absl::IsDeadlineExceeded(status)) return "deadline";
  if (absl::IsCancelled(status)) return "client";
  return "error";
}

}  // namespace llmbridge::service
