// What every RPC that reaches a sidecar shares, whatever its method: the
// request id (echoed as initial metadata), the metrics observer, the
// service's drain accounting, the cancel latch between gRPC's OnCancel (or
// the server's shutdown) and the sidecar call's handle, the request_done
// log line, and the status conversion. CompleteReactor and
// SidecarCallReactor each own one, so no RPC can miss a piece: none that
// cannot be cancelled, none left out of the shutdown's count.
//
// Threading: Begin and SetHandle on the thread that made the reactor, once
// each; Cancel and OnGrpcCancel from any thread; LogDone from OnDone. The
// latch is shared with the service, which cancels every call in flight when
// the shutdown grace has passed (LocalLLMService::CancelAll).
#ifndef LLMBRIDGE_SERVICE_CALL_LIFECYCLE_H_
#define LLMBRIDGE_SERVICE_CALL_LIFECYCLE_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "rpc_bridge/client.h"
#include "service/grpc_status.h"
#include "service/metrics.h"

namespace llmbridge::service {

class LocalLLMService;

// Joins a cancel with the sidecar call it cancels, whichever comes first.
class CancelLatch {
 public:
  // The sidecar call is under way; a cancel that came first cancels it now.
  void Set(rpc::StreamHandle handle);
  // Cancels the call with `why` (now, or when Set comes). The first reason
  // is the call's; later cancels change nothing.
  void Cancel(const absl::Status& why);

 private:
  std::mutex mu_;
  std::optional<rpc::StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> why_ ABSL_GUARDED_BY(mu_);
};

class CallLifecycle {
 public:
  CallLifecycle(LocalLLMService* service, grpc::CallbackServerContext* context,
                Metrics* metrics, std::string method);
  ~CallLifecycle();  // the call leaves the service's count (if Begin counted it)
  CallLifecycle(const CallLifecycle&) = delete;
  CallLifecycle& operator=(const CallLifecycle&) = delete;

  const std::string& request_id() const { return request_id_; }
  Metrics::Call& observer() { return observer_; }

  // Counts the call in flight: OK, or the status to end it with at once
  // (UNAVAILABLE, SHUTTING_DOWN) when the server no longer takes calls.
  absl::Status Begin();

  // The sidecar call's handle (see CancelLatch::Set).
  void SetHandle(rpc::StreamHandle handle) { latch_->Set(std::move(handle)); }
  // Cancels the sidecar call with `why`.
  void Cancel(const absl::Status& why) { latch_->Cancel(why); }
  // gRPC's OnCancel: the client cancelled, its deadline passed, or the
  // server shuts down.
  void OnGrpcCancel();

  // The request_done log line: request id, method, code, cause, duration,
  // reason and error when failed, and `extra`'s fields.
  void LogDone(const absl::Status& status, nlohmann::json extra) const;

 private:
  LocalLLMService* const service_;
  grpc::CallbackServerContext* const context_;
  const std::string method_;
  Metrics::Call observer_;
  const std::string request_id_;
  const std::chrono::steady_clock::time_point start_;
  const std::shared_ptr<CancelLatch> latch_ = std::make_shared<CancelLatch>();
  bool counted_ = false;  // in the service's calls in flight
};

// Why a call ended, for the log: "completed", "overload",
// "client_too_slow", "shutdown", "deadline", "client" or "error".
std::string CauseOf(const absl::Status& status);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_CALL_LIFECYCLE_H_
