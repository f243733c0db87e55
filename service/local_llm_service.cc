#include "service/local_llm_service.h"

#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "rpc_bridge/error_reason.h"
#include "service/grpc_status.h"
#include "service/logging.h"
#include "service/request_conversion.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::CompleteResponse;

constexpr char kRequestIdHeader[] = "x-request-id";

// The caller's x-request-id (so logs join across services), else a new one.
std::string RequestIdOf(const grpc::CallbackServerContext& context) {
  auto it = context.client_metadata().find(kRequestIdHeader);
  if (it != context.client_metadata().end() && !it->second.empty() &&
      it->second.size() <= 128) {
    return std::string(it->second.data(), it->second.size());
  }
  return NewRequestId();
}

// The gRPC deadline on our steady clock; nullopt when the client set none.
std::optional<std::chrono::steady_clock::time_point> SteadyDeadline(
    const grpc::CallbackServerContext& context) {
  auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return std::nullopt;
  }
  return std::chrono::steady_clock::now() +
         (deadline - std::chrono::system_clock::now());
}

// One Complete call. The sidecar's stream feeds a queue; gRPC drains it one
// write at a time. Finish runs exactly once, after the stream's on_done, so
// no sidecar callback can touch the reactor after OnDone deletes it.
class CompleteReactor : public grpc::ServerWriteReactor<CompleteResponse> {
 public:
  CompleteReactor(LocalLLMService* service, rpc::Client* client,
                  const ServiceOptions& options,
                  grpc::CallbackServerContext* context,
                  const llmbridge::v1::CompleteRequest& request)
      : service_(service),
        observer_(options.metrics, "Complete"),
        request_id_(RequestIdOf(*context)),
        error_context_{client->config().backend,
                       request.model().empty() ? client->config().model
                                               : request.model()},
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
    rpc::StreamHandlers handlers;
    handlers.on_chunk = [this](const std::string& delta) {
      observer_.FirstChunk();
      CompleteResponse response;
      response.set_content(delta);
      Enqueue(std::move(response));
    };
    handlers.on_tool_event = [this](const rpc::ToolEvent& event) {
      Enqueue(ToToolResponse(event));
    };
    handlers.on_done = [this](absl::StatusOr<rpc::CompleteResult> result) {
      if (result.ok()) {
        output_tokens_ = result->usage.output_tokens;
        observer_.OutputTokens(result->usage.output_tokens);
        Enqueue(ToFinalResponse(*result));
      }
      End(result.status());
    };
    rpc::CallOptions call;
    call.deadline = SteadyDeadline(*context);
    absl::StatusOr<rpc::StreamHandle> handle =
        client->Stream(*std::move(params), std::move(handlers), call);
    if (!handle.ok()) {
      End(handle.status());
      return;
    }
    bool cancel_now;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handle_ = *handle;
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
    if (!ok) queue_.clear();
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
    nlohmann::json fields = {
        {"request_id", request_id_},
        {"method", "Complete"},
        {"code", CodeName(status.code())},
        {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - start_)
                   .count()},
        {"output_tokens", output_tokens_}};
    if (!status.ok()) {
      fields["reason"] = ReasonFor(status);
      fields["error"] = std::string(status.message());
    }
    LogEvent(status.ok() ? "info" : "warn", "request_done", std::move(fields));
    if (counted_) service_->CallEnded();
    delete this;
  }

 private:
  static absl::Status ClientCancelled() {
    return rpc::WithReason(absl::CancelledError("the client cancelled the call"),
                           rpc::reason::kRequestCancelled);
  }

  void CancelStream(const absl::Status& why) {
    std::optional<rpc::StreamHandle> handle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handle = handle_;
    }
    // Runs on_done synchronously unless it already ran; must not hold mu_.
    if (handle.has_value()) handle->Cancel(why);
  }

  void Enqueue(CompleteResponse response) {
    std::lock_guard<std::mutex> lock(mu_);
    if (end_.has_value()) return;
    queue_.push_back(std::move(response));
    StartNextLocked();
  }

  void End(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (end_.has_value()) return;
    final_status_ = status;
    end_ = ToGrpcStatus(status, error_context_);
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
      writing_ = true;
      StartWrite(&current_);
      return;
    }
    if (end_.has_value()) {
      finished_ = true;
      Finish(*end_);
    }
  }

  LocalLLMService* const service_;
  bool counted_ = false;  // counted in the service's in-flight calls
  Metrics::Call observer_;
  const std::string request_id_;
  const ErrorContext error_context_;
  const std::chrono::steady_clock::time_point start_;
  int output_tokens_ = 0;  // written on the reader thread before End

  std::mutex mu_;
  std::deque<CompleteResponse> queue_ ABSL_GUARDED_BY(mu_);
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
  return new CompleteReactor(this, client_, options_, context, *request);
}

grpc::ServerUnaryReactor* LocalLLMService::ListTools(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::ListToolsRequest* /*request*/,
    llmbridge::v1::ListToolsResponse* response) {
  Metrics::Call observer(options_.metrics, "ListTools");
  auto deadline = SteadyDeadline(*context);
  auto timeout = std::chrono::milliseconds(30000);
  if (deadline.has_value()) {
    timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
        *deadline - std::chrono::steady_clock::now());
  }
  absl::StatusOr<rpc::Json> tools = client_->Call(
      rpc::kMethodTools, rpc::Json::object(),
      std::max(timeout, std::chrono::milliseconds(1)));
  absl::Status status = tools.status();
  if (tools.ok()) {
    absl::StatusOr<llmbridge::v1::ListToolsResponse> converted =
        ToListToolsResponse(*tools);
    status = converted.status();
    if (converted.ok()) *response = *std::move(converted);
  }
  observer.Finish(status.code());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(
      status, {client_->config().backend, client_->config().model}));
  return reactor;
}

bool LocalLLMService::CallStarted() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (draining_) return false;
  ++in_flight_;
  return true;
}

void LocalLLMService::CallEnded() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (--in_flight_ == 0) drain_cv_.notify_all();
}

void LocalLLMService::StopAccepting() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  draining_ = true;
}

bool LocalLLMService::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(drain_mu_);
  return drain_cv_.wait_until(lock, deadline, [this] { return in_flight_ == 0; });
}

grpc::ServerUnaryReactor* LocalLLMService::GetCapabilities(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::GetCapabilitiesRequest* /*request*/,
    llmbridge::v1::Capabilities* response) {
  Metrics::Call observer(options_.metrics, "GetCapabilities");
  // The answer comes from the running sidecar's init result; the health
  // monitor normally has it started already.
  (void)client_->EnsureStarted();
  rpc::Capabilities caps = client_->GetCapabilities();
  response->set_streaming(caps.streaming);
  response->set_tools(caps.tools);
  response->set_mcp(caps.mcp);
  response->set_sessions(caps.sessions);
  response->set_images(caps.images);
  for (const std::string& t : caps.native_tools) response->add_native_tools(t);
  response->set_backend(client_->config().backend);
  response->set_model(client_->config().model);
  observer.Finish(absl::StatusCode::kOk);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace llmbridge::service
