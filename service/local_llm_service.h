// The llmbridge.v1.LocalLLM service on gRPC's callback API, forwarding each
// call to the sidecars through rpc_bridge::Client.
//
// Threading: gRPC calls the service on its own threads, and no handler ever
// blocks there: calls are registered with the client's pool (which queues
// or refuses them) and answered from the bridge's threads. Each Complete
// call is one reactor object with one write in flight; text that arrives
// while a write is in flight is merged into the next message, and a client
// that falls further behind than max_unsent_bytes is ended with
// RESOURCE_EXHAUSTED (see local_llm_service.cc).
#ifndef LLMBRIDGE_SERVICE_LOCAL_LLM_SERVICE_H_
#define LLMBRIDGE_SERVICE_LOCAL_LLM_SERVICE_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <set>

#include "absl/base/thread_annotations.h"
#include "grpcpp/grpcpp.h"
#include "llmbridge/v1/llmbridge.grpc.pb.h"
#include "rpc_bridge/client.h"
#include "service/call_lifecycle.h"
#include "service/memory_trim.h"
#include "service/metrics.h"
#include "service/model_router.h"

namespace llmbridge::service {

struct ServiceOptions {
  // Requests whose message text adds up to more are rejected up front.
  size_t max_request_bytes = 4 * 1024 * 1024;
  // Put prompt and answer sizes... and the text itself in the logs.
  bool log_prompts = false;
  // Text waiting for a slow client beyond this ends the call
  // (RESOURCE_EXHAUSTED, reason CLIENT_TOO_SLOW) and stops the model.
  size_t max_unsent_bytes = 4 * 1024 * 1024;
  Metrics* metrics = nullptr;  // optional, not owned
};

class LocalLLMService final : public llmbridge::v1::LocalLLM::CallbackService {
 public:
  // `router` (and options.metrics) must outlive the service.
  LocalLLMService(const ModelRouter* router, ServiceOptions options)
      : router_(router), options_(options) {}

  grpc::ServerWriteReactor<llmbridge::v1::CompleteResponse>* Complete(
      grpc::CallbackServerContext* context,
      const llmbridge::v1::CompleteRequest* request) override;

  grpc::ServerUnaryReactor* GetCapabilities(
      grpc::CallbackServerContext* context,
      const llmbridge::v1::GetCapabilitiesRequest* request,
      llmbridge::v1::Capabilities* response) override;

  grpc::ServerUnaryReactor* ListTools(
      grpc::CallbackServerContext* context,
      const llmbridge::v1::ListToolsRequest* request,
      llmbridge::v1::ListToolsResponse* response) override;

  // Embed and CountTokens (service/api_calls.cc): one sidecar call each.
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const llmbridge::v1::EmbedRequest* request,
                                  llmbridge::v1::EmbedResponse* response) override;

  grpc::ServerUnaryReactor* CountTokens(
      grpc::CallbackServerContext* context,
      const llmbridge::v1::CountTokensRequest* request,
      llmbridge::v1::CountTokensResponse* response) override;

  grpc::ServerUnaryReactor* ListModels(
      grpc::CallbackServerContext* context,
      const llmbridge::v1::ListModelsRequest* request,
      llmbridge::v1::ListModelsResponse* response) override;

  // Graceful shutdown, any thread. StopAccepting: from now on calls are
  // refused (UNAVAILABLE, reason SHUTTING_DOWN). WaitIdle: returns once the
  // calls in flight have ended (true), or at `deadline` (false).
  // CancelAll: cancels every call in flight with `why` (queued ones, and
  // the sidecar's work of running ones); they end soon after.
  void StopAccepting();
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);
  void CancelAll(const absl::Status& why);

  // Each call's CallLifecycle reports its start and end (any thread).
  bool CallStarted(std::shared_ptr<CancelLatch> latch);  // false when draining
  void CallEnded(const std::shared_ptr<CancelLatch>& latch);
  bool draining();

 private:
  const ModelRouter* const router_;
  const ServiceOptions options_;
  std::mutex drain_mu_;
  std::condition_variable drain_cv_;
  // The calls in flight, by their cancel latches.
  std::set<std::shared_ptr<CancelLatch>> in_flight_ ABSL_GUARDED_BY(drain_mu_);
  bool draining_ ABSL_GUARDED_BY(drain_mu_) = false;
  BurstTrimPolicy trim_policy_ ABSL_GUARDED_BY(drain_mu_);
};

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_LOCAL_LLM_SERVICE_H_
