// The unary RPCs that reach a sidecar: Embed, CountTokens, ListTools and
// GetCapabilities. Each is one SidecarCallReactor: one sidecar call,
// answered from a bridge thread when the sidecar replies (no gRPC thread
// waits for it), cancelled in the pool and the sidecar when the client
// cancels, its deadline passes or the server shuts down, and counted in the
// service's calls in flight, so shutdown's grace covers it.
//
// Embed costs the backend real work (a forward pass per input), so it goes
// through admission control like a completion: it counts towards
// --max_concurrent and --max_queue. The others only wait for a ready
// sidecar (in the pool's control queue, bounded on its own).
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
#include "service/call_lifecycle.h"
#include "service/grpc_status.h"
#include "service/local_llm_service.h"
#include "service/logging.h"
#include "service/model_router.h"
#include "service/request_conversion.h"
#include "service/unary_conversion.h"

namespace llmbridge::service {
namespace {

// What the sidecar's reply becomes: the call's status (having filled the
// response when it is OK).
using OnSidecarReply = std::function<absl::Status(absl::StatusOr<rpc::Json> reply)>;

// How the call reaches the sidecar.
enum class Admission { kAdmitted, kWaitForReady };

// One unary call forwarded to a sidecar method. End runs exactly once,
// under mu_: from the sidecar call's on_reply (which the pool runs exactly
// once, also after a cancel) or before anything was sent. OnDone takes mu_
// before deleting the reactor, so no thread touches it after.
//
// Threading: Start (and Route / Send / Answer) on the gRPC thread that
// made the reactor, once; OnCancel and OnDone on gRPC threads; End on any.
class SidecarCallReactor : public grpc::ServerUnaryReactor {
 public:
  SidecarCallReactor(LocalLLMService* service, grpc::CallbackServerContext* context,
                     Metrics* metrics, std::string method)
      : context_(context), life_(service, context, metrics, std::move(method)) {}

  // Sends `params` to `sidecar_method` of the sidecars that serve `model`
  // (the request's), or ends the call with the first error among them.
  // Call once, right after construction (or Route, then Send or Answer).
  void Start(const ModelRouter& router, const std::string& model,
             const char* sidecar_method, absl::StatusOr<rpc::Json> params,
             Admission admission, OnSidecarReply on_reply) {
    if (!Admit(model)) return;
    if (!params.ok()) {
      End(params.status());
      return;
    }
    std::optional<ModelRouter::Route> route = Route(router, model);
    if (!route.has_value()) return;
    Send(*route, sidecar_method, *std::move(params), admission, std::move(on_reply));
  }

  // Counts the call in the service's calls in flight; ends it (and returns
  // nullopt) once the server is shutting down. Then resolves `model`: the
  // route, or nullopt with the call ended (NOT_FOUND naming the served
  // models).
  std::optional<ModelRouter::Route> Route(const ModelRouter& router,
                                          const std::string& model) {
    if (!admitted_ && !Admit(model)) return std::nullopt;
    absl::StatusOr<ModelRouter::Route> route = router.Resolve(model);
    if (!route.ok()) {
      End(route.status());
      return std::nullopt;
    }
    const rpc::Config& config = route->model->client->config();
    error_context_ = {config.backend, model.empty() ? route->model->entry.name : model,
                      life_.request_id()};
    return *std::move(route);
  }

  // Sends the call to the route's sidecars. A "model" in `params` becomes
  // the backend's name of the model (none: the sidecar's own).
  void Send(const ModelRouter::Route& route, const char* sidecar_method, rpc::Json params,
            Admission admission, OnSidecarReply on_reply) {
    rpc::Client* client = route.model->client.get();
    if (params.is_object() && params.contains("model")) {
      if (route.backend_model.empty()) {
        params.erase("model");
      } else {
        params["model"] = route.backend_model;
      }
    }
    auto reply = [this, on_reply = std::move(on_reply)](absl::StatusOr<rpc::Json> r) {
      End(on_reply(std::move(r)));
    };
    const std::optional<std::chrono::steady_clock::time_point> deadline =
        SteadyDeadline(*context_);
    if (admission == Admission::kWaitForReady) {
      const auto limit = deadline.value_or(std::chrono::steady_clock::now() +
                                           client->config().request_timeout);
      const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
          limit - std::chrono::steady_clock::now());
      life_.SetHandle(client->CallAsync(sidecar_method, std::move(params),
                                        std::max(timeout, std::chrono::milliseconds(1)),
                                        std::move(reply)));
      return;
    }
    rpc::CallOptions call;
    call.deadline = deadline;
    life_.SetHandle(
        client->CallAdmitted(sidecar_method, std::move(params), std::move(reply), call));
  }

  // Ends the call without the sidecar.
  void Answer(const absl::Status& status) { End(status); }

  // on_reply follows (now or soon) and finishes the call.
  void OnCancel() override { life_.OnGrpcCancel(); }

  void OnDone() override {
    absl::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = final_status_;
    }
    life_.LogDone(status, {{"model", error_context_.model}});
    delete this;
  }

 private:
  // Counts the call in flight, or ends it when the server is shutting down.
  bool Admit(const std::string& model) {
    // Written before the call is sent: the bridge thread that reads it in
    // End is started by that send.
    error_context_ = {"", model, life_.request_id()};
    absl::Status begun = life_.Begin();
    if (!begun.ok()) {
      End(begun);
      return false;
    }
    admitted_ = true;
    return true;
  }

  void End(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    life_.observer().Finish(status.code());
    final_status_ = status;
    Finish(ToGrpcStatus(status, error_context_));
  }

  grpc::CallbackServerContext* const context_;
  CallLifecycle life_;
  bool admitted_ = false;
  ErrorContext error_context_;  // set before the call is sent

  std::mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
};

// An OnSidecarReply that stores `convert(result)` in `*response`.
template <typename Response, typename Convert>
OnSidecarReply StoreIn(Response* response, Convert convert) {
  return [response, convert](absl::StatusOr<rpc::Json> result) -> absl::Status {
    if (!result.ok()) return result.status();
    absl::StatusOr<Response> converted = convert(*result);
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

grpc::ServerUnaryReactor* LocalLLMService::ListTools(
    grpc::CallbackServerContext* context, const llmbridge::v1::ListToolsRequest* request,
    llmbridge::v1::ListToolsResponse* response) {
  auto* reactor = new SidecarCallReactor(this, context, options_.metrics, "ListTools");
  reactor->Start(*router_, request->model(), rpc::kMethodTools, rpc::Json::object(),
                 Admission::kWaitForReady, StoreIn(response, ToListToolsResponse));
  return reactor;
}

grpc::ServerUnaryReactor* LocalLLMService::GetCapabilities(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::GetCapabilitiesRequest* request,
    llmbridge::v1::Capabilities* response) {
  auto* reactor = new SidecarCallReactor(this, context, options_.metrics, "GetCapabilities");
  std::optional<ModelRouter::Route> route = reactor->Route(*router_, request->model());
  if (!route.has_value()) return reactor;
  rpc::Client* client = route->model->client.get();
  // A pass-through name is the model asked about; else the entry's own.
  const std::string model =
      !route->backend_model.empty() ? route->backend_model : client->config().model;
  auto answer = [client, response, model] {
    rpc::Capabilities caps = client->GetCapabilities();
    response->set_streaming(caps.streaming);
    response->set_tools(caps.tools);
    response->set_mcp(caps.mcp);
    response->set_sessions(caps.sessions);
    response->set_images(caps.images);
    for (const std::string& t : caps.native_tools) response->add_native_tools(t);
    response->set_backend(client->config().backend);
    response->set_model(model);
    return absl::OkStatus();
  };
  const rpc::PoolStatus status = client->Status();
  if (status.init.has_value() || (!status.demanded && !route->model->entry.preload)) {
    // Published by a sidecar that started, or a model that is not loaded
    // (asking must not load it: the seed's capabilities then).
    reactor->Answer(answer());
    return reactor;
  }
  // No sidecar has started yet: answer once one has (or its start failed).
  // A health call is the cheapest thing that waits for a ready sidecar in
  // the pool's queue; whatever it answers, the capabilities are then the
  // started sidecar's or the seed's. A cancel, the deadline or shutdown end
  // the wait as they end any call.
  reactor->Send(*route, rpc::kMethodHealth, rpc::Json::object(), Admission::kWaitForReady,
                [answer](absl::StatusOr<rpc::Json> health) {
                  if (absl::IsCancelled(health.status()) ||
                      absl::IsDeadlineExceeded(health.status()) ||
                      rpc::AttachedReason(health.status()) == rpc::reason::kShuttingDown) {
                    return health.status();
                  }
                  return answer();
                });
  return reactor;
}

}  // namespace llmbridge::service
