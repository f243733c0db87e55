#include "service/local_llm_service.h"

#include <deque>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "service/grpc_status.h"
#include "service/request_conversion.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::CompleteResponse;

// One Complete call. The sidecar's stream feeds a queue; gRPC drains it one
// write at a time. Finish runs exactly once, after the stream's on_done, so
// no sidecar callback can touch the reactor after OnDone deletes it.
class CompleteReactor : public grpc::ServerWriteReactor<CompleteResponse> {
 public:
  CompleteReactor(rpc::Client* client,
                  const llmbridge::v1::CompleteRequest& request) {
    absl::StatusOr<rpc::CompleteParams> params = ToCompleteParams(request);
    if (!params.ok()) {
      Finish(ToGrpcStatus(params.status()));
      return;
    }
    rpc::StreamHandlers handlers;
    handlers.on_chunk = [this](const std::string& delta) {
      CompleteResponse response;
      response.set_content(delta);
      Enqueue(std::move(response));
    };
    handlers.on_done = [this](absl::StatusOr<rpc::CompleteResult> result) {
      if (result.ok()) Enqueue(ToFinalResponse(*result));
      End(result.status());
    };
    absl::StatusOr<rpc::StreamHandle> handle =
        client->Stream(*std::move(params), std::move(handlers));
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
    if (cancel_now) CancelStream(absl::CancelledError("client cancelled"));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      // The client is gone: stop the model's work too.
      CancelStream(absl::CancelledError("the client went away"));
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
    CancelStream(absl::CancelledError("the client cancelled the call"));
  }

  void OnDone() override { delete this; }

 private:
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
    end_ = ToGrpcStatus(status);
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

  std::mutex mu_;
  std::deque<CompleteResponse> queue_ ABSL_GUARDED_BY(mu_);
  CompleteResponse current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_requested_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> end_ ABSL_GUARDED_BY(mu_);
  std::optional<rpc::StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<CompleteResponse>* LocalLLMService::Complete(
    grpc::CallbackServerContext* /*context*/,
    const llmbridge::v1::CompleteRequest* request) {
  return new CompleteReactor(client_, *request);
}

grpc::ServerUnaryReactor* LocalLLMService::GetCapabilities(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::GetCapabilitiesRequest* /*request*/,
    llmbridge::v1::Capabilities* response) {
  rpc::Capabilities caps = client_->GetCapabilities();
  response->set_streaming(caps.streaming);
  response->set_tools(caps.tools);
  response->set_mcp(caps.mcp);
  response->set_sessions(caps.sessions);
  response->set_images(caps.images);
  for (const std::string& t : caps.native_tools) response->add_native_tools(t);
  response->set_backend(client_->config().backend);
  response->set_model(client_->config().model);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace llmbridge::service
