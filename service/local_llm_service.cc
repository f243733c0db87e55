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
      : life_(service, context, options.metrics, "Complete"),
        max_unsent_bytes_(options.max_unsent_bytes),
        route_(router->Resolve(request.model())),
        error_context_{route_.ok() ? route_->model->entry.client.backend : "",
                       request.model().empty() && route_.ok()
                           ? route_->model->entry.name
                           : request.model(),
                       life_.request_id()} {
    nlohmann::json fields = {{"request_id", life_.request_id()},
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

    if (absl::Status begun = life_.Begin(); !begun.ok()) {
      End(begun);
      return;
    }
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
        life_.observer().OutputTokens(result->usage.output_tokens);
        Push(ToFinalResponse(*result), 0);
      }
      End(result.status());
    };
    rpc::CallOptions call;
    call.deadline = SteadyDeadline(*context);
    // Never blocks: the pool sends the call, queues it, or refuses it (then
    // on_done has run already).
    life_.SetHandle(client->Stream(*std::move(params), std::move(handlers), call));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      // The client is gone: stop the model's work too.
      life_.Cancel(rpc::WithReason(absl::CancelledError("the client went away mid-stream"),
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

  // on_done follows (now or soon) and ends the stream.
  void OnCancel() override { life_.OnGrpcCancel(); }

  void OnDone() override {
    absl::Status status;
    int64_t tokens_sent;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = final_status_;
      tokens_sent = tokens_sent_;
    }
    life_.observer().Finish(status.code());
    life_.LogDone(status, {{"output_tokens", output_tokens_}, {"tokens_sent", tokens_sent}});
    delete this;
  }

 private:

  void OnDelta(std::string& delta) {
    life_.observer().FirstChunk();
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
      life_.Cancel(rpc::WithReason(
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
    life_.observer().Finish(final_status_.code());
    if (last != nullptr) {
      StartWriteAndFinish(last, grpc::WriteOptions(), *end_);
    } else {
      Finish(*end_);
    }
  }

  CallLifecycle life_;
  const size_t max_unsent_bytes_;
  const absl::StatusOr<ModelRouter::Route> route_;
  const ErrorContext error_context_;
  int output_tokens_ = 0;  // written on the reader thread before End

  std::mutex mu_;
  std::deque<CompleteResponse> queue_ ABSL_GUARDED_BY(mu_);
  size_t unsent_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  CompleteResponse current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<CompleteResponse>* LocalLLMService::Complete(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::CompleteRequest* request) {
  return new CompleteReactor(this, router_, options_, context, *request);
}

bool LocalLLMService::CallStarted(std::shared_ptr<CancelLatch> latch) {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (draining_) return false;
  in_flight_.insert(std::move(latch));
  trim_policy_.OnStarted(static_cast<int>(in_flight_.size()));
  return true;
}

void LocalLLMService::CallEnded(const std::shared_ptr<CancelLatch>& latch) {
  bool trim;
  {
    std::lock_guard<std::mutex> lock(drain_mu_);
    in_flight_.erase(latch);
    if (in_flight_.empty()) drain_cv_.notify_all();
    trim = trim_policy_.OnEnded(static_cast<int>(in_flight_.size()));
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
  return drain_cv_.wait_until(lock, deadline, [this] { return in_flight_.empty(); });
}

void LocalLLMService::CancelAll(const absl::Status& why) {
  std::vector<std::shared_ptr<CancelLatch>> calls;
  {
    std::lock_guard<std::mutex> lock(drain_mu_);
    calls.assign(in_flight_.begin(), in_flight_.end());
  }
  // Outside drain_mu_: a call may end (and leave the set) as it is cancelled.
  for (const std::shared_ptr<CancelLatch>& call : calls) call->Cancel(why);
}

}  // namespace llmbridge::service
