#include "service/local_llm_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"
#include "service/call_context.h"
#include "service/grpc_status.h"
#include "service/logging.h"
#include "service/request_conversion.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::CompleteResponse;

bool IsPlainText(const CompleteResponse& r) {
  return !r.done() && !r.has_tool_call() && !r.has_tool_result();
}

// Why a call ended, for the log: the client, its deadline, the server's
// shutdown, admission control, a slow client, or the outcome itself.
std::string CauseOf(const absl::Status& status, const std::string& reason) {
  if (status.ok()) return "completed";
  if (reason == rpc::reason::kOverloaded) return "overload";
  if (reason == rpc::reason::kClientTooSlow) return "client_too_slow";
  if (reason == rpc::reason::kShuttingDown) return "shutdown";
  if (absl::IsDeadlineExceeded(status)) return "deadline";
  if (absl::IsCancelled(status)) return "client";
  return "error";
}

// One Complete call. The sidecar's stream feeds a queue; gRPC drains it one
// write at a time. While a write is in flight, text deltas are merged into
// the last queued message, so a slow client gets fewer, larger messages
// instead of a message per token; past max_unsent_bytes the call ends.
// Finish runs exactly once, after the stream's on_done, so no sidecar
// callback can touch the reactor after OnDone deletes it.
class CompleteReactor : public grpc::ServerWriteReactor<CompleteResponse> {
 public:
  CompleteReactor(LocalLLMService* service, const ModelRouter* router,
                  const ServiceOptions& options,
                  grpc::CallbackServerContext* context,
                  const llmbridge::v1::CompleteRequest& request)
      : service_(service),
        context_(context),
        max_unsent_bytes_(options.max_unsent_bytes),
        observer_(options.metrics, "Complete"),
        request_id_(RequestIdOf(*context)),
        route_(router->Resolve(request.model())),
        error_context_{route_.ok() ? route_->model->entry.client.backend : "",
                       request.model().empty() && route_.ok()
                           ? route_->model->entry.name
                           : request.model(),
                       request_id_},
        start_(std::chrono::steady_clock::now()) {
    context->AddInitialMetadata(kRequestIdHeader, request_id_);
    nlohmann::json fields = {{"request_id", request_id_},
                             {"method", "Complete"},
                             {"model", error_context_.model},
                             {"messages", request.messages_size()},
                             {"max_tokens", request.max_tokens()}};
    if (options.log_prompts) {
      nlohmann::json messages = nlohmann::json::array();
      for (const auto& m : request.messages()) {
        messages.push_back({{"role", m.role()}, {"content", m.content()}});
      }
      fields["prompt"] = messages;
    }
    LogEvent("info", "request_start", std::move(fields));

    if (!service_->CallStarted()) {
      End(rpc::WithReason(
          absl::UnavailableError(
              "the server is shutting down; retry on another instance"),
          rpc::reason::kShuttingDown));
      return;
    }
    counted_ = true;
    absl::StatusOr<rpc::CompleteParams> params =
        ToCompleteParams(request, options.max_request_bytes);
    if (!params.ok()) {
      End(params.status());
      return;
    }
    if (!route_.ok()) {
      End(route_.status());
      return;
    }
    params->model = route_->backend_model;
    rpc::Client* client = route_->model->client.get();
    rpc::StreamHandlers handlers;
    handlers.collect_content = false;
    handlers.on_chunk = [this](std::string& delta) { OnDelta(delta); };
    handlers.on_tool_event = [this](const rpc::ToolEvent& event) {
      CompleteResponse response = ToToolResponse(event);
      Push(std::move(response), 0);
    };
    handlers.on_done = [this](absl::StatusOr<rpc::CompleteResult> result) {
      if (result.ok()) {
        output_tokens_ = result->usage.output_tokens;
        observer_.OutputTokens(result->usage.output_tokens);
        Push(ToFinalResponse(*result), 0);
      }
      End(result.status());
    };
    rpc::CallOptions call;
    call.deadline = SteadyDeadline(*context);
    // Never blocks: the pool sends the call, queues it, or refuses it (then
    // on_done has run already).
    rpc::StreamHandle handle =
        client->Stream(*std::move(params), std::move(handlers), call);
    bool cancel_now;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handle_ = handle;
      cancel_now = cancel_requested_;
    }
    if (cancel_now) CancelStream(ClientCancelled());
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      // The client is gone: stop the model's work too.
      CancelStream(rpc::WithReason(
          absl::CancelledError("the client went away mid-stream"),
          rpc::reason::kRequestCancelled));
    }
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      queue_.clear();
      unsent_bytes_ = 0;
    }
    StartNextLocked();
  }

  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancel_requested_ = true;
      if (!handle_.has_value()) return;  // the constructor will cancel
    }
    CancelStream(ClientCancelled());
  }

  void OnDone() override {
    absl::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = final_status_;
    }
    observer_.Finish(status.code());
    const std::string reason = status.ok() ? "" : ReasonFor(status);
    nlohmann::json fields = {
        {"request_id", request_id_},
        {"method", "Complete"},
        {"code", CodeName(status.code())},
        {"cause", CauseOf(status, reason)},
        {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - start_)
                   .count()},
        {"output_tokens", output_tokens_},
        {"tokens_sent", tokens_sent_}};
    if (!status.ok()) {
      fields["reason"] = reason;
      fields["error"] = std::string(status.message());
    }
    LogEvent(status.ok() ? "info" : "warn", "request_done", std::move(fields));
    if (counted_) service_->CallEnded();
    delete this;
  }

 private:
  absl::Status ClientCancelled() {
    return WhyCancelled(service_->draining(), *context_);
  }

  void CancelStream(const absl::Status& why) {
    std::optional<rpc::StreamHandle> handle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handle = handle_;
    }
    // on_done follows (now or soon); must not hold mu_.
    if (handle.has_value()) handle->Cancel(why);
  }

  void OnDelta(std::string& delta) {
    observer_.FirstChunk();
    bool too_slow = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (end_.has_value() || overflowed_) return;
      ++tokens_sent_;
      unsent_bytes_ += delta.size();
      if (!queue_.empty() && IsPlainText(queue_.back())) {
        queue_.back().mutable_content()->append(delta);
      } else {
        CompleteResponse response;
        response.set_content(std::move(delta));
        queue_.push_back(std::move(response));
      }
      too_slow = unsent_bytes_ > max_unsent_bytes_;
      if (too_slow) {
        overflowed_ = true;
        queue_.clear();
        unsent_bytes_ = 0;
      } else {
        StartNextLocked();
      }
    }
    if (too_slow) {
      CancelStream(rpc::WithReason(
          absl::ResourceExhaustedError(absl::StrCat(
              "the client read the stream too slowly: more than ",
              max_unsent_bytes_,
              " bytes of answer were waiting for it (--max_unsent_bytes); "
              "the generation was stopped")),
          rpc::reason::kClientTooSlow));
    }
  }

  void Push(CompleteResponse response, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (end_.has_value() || overflowed_) return;
    unsent_bytes_ += bytes;
    queue_.push_back(std::move(response));
    StartNextLocked();
  }

  void End(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (end_.has_value()) return;
    final_status_ = status;
    end_ = ToGrpcStatus(status, error_context_);
    if (!status.ok()) {
      // An error ends the stream now: whatever text waits is dropped, and
      // Finish does not wait for a client that may not be reading.
      queue_.clear();
      unsent_bytes_ = 0;
      FinishLocked();
      return;
    }
    StartNextLocked();
  }

  // Starts the next write, or finishes once the stream ended and the queue
  // drained. gRPC's callback server never runs reactions inline from
  // StartWrite/Finish, so calling them under mu_ cannot deadlock.
  void StartNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (!queue_.empty()) {
      current_ = std::move(queue_.front());
      queue_.pop_front();
      unsent_bytes_ -= std::min(unsent_bytes_, current_.content().size());
      writing_ = true;
      if (queue_.empty() && end_.has_value() && end_->ok()) {
        // The last message and the status go out in one batch: one
        // completion less per call (no OnWriteDone), and gRPC can send the
        // final DATA frame and the trailers together.
        FinishLocked(&current_);
        return;
      }
      StartWrite(&current_);
      return;
    }
    if (end_.has_value()) FinishLocked();
  }

  // Ends the call with *end_, after `last` when given. Counted before the
  // client can see the status, so that a scrape right after a call ended
  // includes it.
  void FinishLocked(const CompleteResponse* last = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    finished_ = true;
    observer_.Finish(final_status_.code());
    if (last != nullptr) {
      StartWriteAndFinish(last, grpc::WriteOptions(), *end_);
    } else {
      Finish(*end_);
    }
  }

  LocalLLMService* const service_;
  grpc::CallbackServerContext* const context_;
  const size_t max_unsent_bytes_;
  bool counted_ = false;  // counted in the service's in-flight calls
  Metrics::Call observer_;
  const std::string request_id_;
  const absl::StatusOr<ModelRouter::Route> route_;
  const ErrorContext error_context_;
  const std::chrono::steady_clock::time_point start_;
  int output_tokens_ = 0;  // written on the reader thread before End

  std::mutex mu_;
  std::deque<CompleteResponse> queue_ ABSL_GUARDED_BY(mu_);
  size_t unsent_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  CompleteResponse current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
  std::optional<rpc::StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<CompleteResponse>* LocalLLMService::Complete(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::CompleteRequest* request) {
  return new CompleteReactor(this, router_, options_, context, *request);
}

bool LocalLLMService::CallStarted() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (draining_) return false;
  ++in_flight_;
  trim_policy_.OnStarted(in_flight_);
  return true;
}

void LocalLLMService::CallEnded() {
  bool trim;
  {
    std::lock_guard<std::mutex> lock(drain_mu_);
    if (--in_flight_ == 0) drain_cv_.notify_all();
    trim = trim_policy_.OnEnded(in_flight_);
  }
  if (trim) ReleaseFreeMemory();  // once per burst, outside the lock
}

bool LocalLLMService::draining() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  return draining_;
}

void LocalLLMService::StopAccepting() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  draining_ = true;
}

bool LocalLLMService::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(drain_mu_);
  return drain_cv_.wait_until(lock, deadline, [this] { return in_flight_ == 0; });
}

}  // namespace llmbridge::service
