// Keeps grpc.health.v1 true to the facts:
//   ""                     liveness: this process and its supervisor run.
//                          SERVING from Start until Shutdown; it never follows
//                          a backend or a sidecar (re)start, so a kubelet does
//                          not restart the server for an outage that a restart
//                          cannot fix.
//   llmbridge.v1.LocalLLM  readiness: a request for the default model could
//                          be served now (a ready sidecar whose backend
//                          answered its last health probe), or the model is
//                          unloaded on purpose and loads on the next call.
//   llmbridge.v1.LocalLLM/<model>
//                          the same for each served model.
// The sidecar pools probe their sidecars; this class only publishes what
// they report. Probes never run here, so a health Check is always answered
// at once.
//
// Threading: every method may be called from any thread. Changes are made
// under one mutex, so they are applied in order, and once Shutdown began
// nothing reports SERVING again.
#ifndef LLMBRIDGE_SERVICE_HEALTH_REPORTER_H_
#define LLMBRIDGE_SERVICE_HEALTH_REPORTER_H_

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "grpcpp/health_check_service_interface.h"
#include "service/model_router.h"

namespace llmbridge::service {

inline constexpr char kServiceName[] = "llmbridge.v1.LocalLLM";

class HealthReporter {
 public:
  // Readiness follows the router's pools (not owned; must outlive
  // Shutdown).
  HealthReporter(grpc::HealthCheckServiceInterface* health,
                 const ModelRouter* router);

  // The health service name of one model.
  static std::string ServiceFor(const std::string& model);

  // Liveness SERVING; readiness as the pools say.
  void Start();
  // Reads the pool's state again and publishes changes (pools call this
  // through their observer whenever their state changes).
  void Refresh();
  // NOT_SERVING for every service, for good.
  void Shutdown();

 private:
  void SetLocked(const std::string& service, bool serving, const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  grpc::HealthCheckServiceInterface* const health_;
  const ModelRouter* const router_;
  std::mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, bool> published_ ABSL_GUARDED_BY(mu_);
};

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_HEALTH_REPORTER_H_
