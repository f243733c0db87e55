// Embed and CountTokens: each is one call of a sidecar method ("embed",
// "count_tokens"), answered from a bridge thread when the sidecar replies;
// no gRPC thread waits for it.
//
// Embed costs the backend real work (a forward pass per input), so it goes
// through admission control like a completion: it counts towards
// --max_concurrent and --max_queue, and a client's cancel or deadline
// cancels it in the sidecar. CountTokens only tokenizes, so it only waits
// for a ready sidecar, like ListTools.
#include <algorithm>
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "rpc_bridge/error_reason.h"
#include "service/call_context.h"
#include "service/grpc_status.h"
#include "service/local_llm_service.h"
#include "service/logging.h"
#include "service/model_router.h"
#include "service/unary_conversion.h"

namespace llmbridge::service {
namespace {

// Fills the call's response from the sidecar's result.
using FillResponse = std::function<absl::Status(const rpc::Json& result)>;

// How the call reaches the sidecar.
enum class Admission { kAdmitted, kWaitForReady };

// One unary call forwarded to a sidecar method. Finish runs exactly once,
// under mu_: from the sidecar call's on_reply (which the pool runs exactly
// once, also after a cancel) or before anything was sent. OnDone takes mu_
// before deleting the reactor, so no thread touches it after.
class SidecarCallReactor : public grpc::ServerUnaryReactor {
 public:
  SidecarCallReactor(LocalLLMService* service, grpc::CallbackServerContext* context,
                     Metrics* metrics, std::string method)
      : service_(service),
        context_(context),
        method_(std::move(method)),
        observer_(metrics, method_),
        request_id_(RequestIdOf(*context)),
        start_(std::chrono::steady_clock::now()) {
    context->AddInitialMetadata(kRequestIdHeader, request_id_);
  }

  // Sends `params` to `sidecar_method` of the sidecars that serve `model`
  // (the request's), or ends the call with the first error among them.
  // Call once, right after construction.
  void Start(const ModelRouter& router, const std::string& model,
             const char* sidecar_method, absl::StatusOr<rpc::Json> params,
             Admission admission, FillResponse fill) {
    // Written before the call is sent: the bridge thread that reads it in
    // End is started by that send.
    error_context_ = {"", model, request_id_};
    if (!service_->CallStarted()) {
      End(rpc::WithReason(absl::UnavailableError(
                              "the server is shutting down; retry on another instance"),
                          rpc::reason::kShuttingDown));
      return;
    }
    counted_ = true;
    if (!params.ok()) {
      End(params.status());
      return;
    }
    absl::StatusOr<ModelRouter::Route> route = router.Resolve(model);
    if (!route.ok()) {
      End(route.status());
      return;
    }
    rpc::Client* client = route->model->client.get();
    const rpc::Config& config = client->config();
    error_context_ = {config.backend, model.empty() ? route->model->entry.name : model,
                      request_id_};
    // The sidecar is asked for the backend's name of the model (none: its own).
    if (route->backend_model.empty()) {
      params->erase("model");
    } else {
      (*params)["model"] = route->backend_model;
    }
    auto on_reply = [this, fill = std::move(fill)](absl::StatusOr<rpc::Json> reply) {
      absl::Status status = reply.status();
      if (reply.ok()) status = fill(*reply);
      End(status);
    };
    const std::optional<std::chrono::steady_clock::time_point> deadline =
        SteadyDeadline(*context_);
    if (admission == Admission::kWaitForReady) {
      const auto limit = deadline.value_or(std::chrono::steady_clock::now() +
                                           config.request_timeout);
      const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
          limit - std::chrono::steady_clock::now());
      client->CallAsync(sidecar_method, *std::move(params),
                           std::max(timeout, std::chrono::milliseconds(1)),
                           std::move(on_reply));
      return;
    }
    rpc::CallOptions call;
    call.deadline = deadline;
    rpc::StreamHandle handle = client->CallAdmitted(
        sidecar_method, *std::move(params), std::move(on_reply), call);
    bool cancel_now;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handle_ = handle;
      cancel_now = cancel_requested_;
    }
    if (cancel_now) handle.Cancel(WhyCancelled(service_->draining(), *context_));
  }

  void OnCancel() override {
    std::optional<rpc::StreamHandle> handle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancel_requested_ = true;
      handle = handle_;
    }
    // on_reply follows (now or soon) and finishes the call; must not hold mu_.
    if (handle.has_value()) handle->Cancel(WhyCancelled(service_->draining(), *context_));
  }

  void OnDone() override {
    absl::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = final_status_;
    }
    nlohmann::json fields = {
        {"request_id", request_id_},
        {"method", method_},
        {"model", error_context_.model},
        {"code", CodeName(status.code())},
        {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - start_)
                   .count()}};
    if (!status.ok()) {
      fields["reason"] = ReasonFor(status);
      fields["error"] = std::string(status.message());
    }
    LogEvent(status.ok() ? "info" : "warn", "request_done", std::move(fields));
    if (counted_) service_->CallEnded();
    delete this;
  }

 private:
  void End(const absl::Status& status) {
    observer_.Finish(status.code());
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    final_status_ = status;
    Finish(ToGrpcStatus(status, error_context_));
  }

  LocalLLMService* const service_;
  grpc::CallbackServerContext* const context_;
  const std::string method_;
  Metrics::Call observer_;
  const std::string request_id_;
  const std::chrono::steady_clock::time_point start_;
  bool counted_ = false;        // counted in the service's in-flight calls
  ErrorContext error_context_;  // set in Start, before the call is sent

  std::mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::optional<rpc::StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
};

// A FillResponse that stores `convert(result)` in `*response`.
template <typename Response, typename Convert>
FillResponse StoreIn(Response* response, Convert convert) {
  return [response, convert](const rpc::Json& result) -> absl::Status {
    absl::StatusOr<Response> converted = convert(result);
    if (!converted.ok()) return converted.status();
    *response = *std::move(converted);
    return absl::OkStatus();
  };
}

RequestLimits LimitsOf(const ServiceOptions& options) {
  RequestLimits limits;
  limits.max_request_bytes = options.max_request_bytes;
  return limits;
}

}  // namespace

grpc::ServerUnaryReactor* LocalLLMService::Embed(
    grpc::CallbackServerContext* context, const llmbridge::v1::EmbedRequest* request,
    llmbridge::v1::EmbedResponse* response) {
  auto* reactor = new SidecarCallReactor(this, context, options_.metrics, "Embed");
  const int inputs = request->inputs_size();
  reactor->Start(*router_, request->model(), rpc::kMethodEmbed,
                 ToEmbedParams(*request, LimitsOf(options_)), Admission::kAdmitted,
                 StoreIn(response, [inputs](const rpc::Json& result) {
                   return ToEmbedResponse(result, inputs);
                 }));
  return reactor;
}

grpc::ServerUnaryReactor* LocalLLMService::CountTokens(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::CountTokensRequest* request,
    llmbridge::v1::CountTokensResponse* response) {
  auto* reactor = new SidecarCallReactor(this, context, options_.metrics, "CountTokens");
  reactor->Start(*router_, request->model(), rpc::kMethodCountTokens,
                 ToCountTokensParams(*request, LimitsOf(options_)),
                 Admission::kWaitForReady, StoreIn(response, ToCountTokensResponse));
  return reactor;
}

}  // namespace llmbridge::service
