// Keeps grpc.health.v1 true to the facts, for "" and llmbridge.v1.LocalLLM:
// SERVING only while the sidecar runs and its backend answers its health
// check; NOT_SERVING before that, when the backend is unreachable, and from
// the start of shutdown.
//
// Lazy start and probes: the library starts its sidecar on the first
// request, but the server's first probe is that request. So the sidecar
// starts (and loads its model) at boot, and a Kubernetes startupProbe sees
// SERVING exactly when requests can be answered.
//
// Threading: Start/Stop from one thread (main); the probe loop runs on its
// own thread.
#ifndef LLMBRIDGE_SERVICE_HEALTH_MONITOR_H_
#define LLMBRIDGE_SERVICE_HEALTH_MONITOR_H_

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "grpcpp/health_check_service_interface.h"
#include "rpc_bridge/client.h"

namespace llmbridge::service {

inline constexpr char kServiceName[] = "llmbridge.v1.LocalLLM";

class HealthMonitor {
 public:
  HealthMonitor(rpc::Client* client, grpc::HealthCheckServiceInterface* health,
                std::chrono::milliseconds interval);
  ~HealthMonitor();  // Stop()

  void Start();
  // Sets NOT_SERVING for good and stops probing.
  void Stop();

 private:
  void Loop();
  void Probe();
  void Set(bool serving, const std::string& why);

  rpc::Client* const client_;
  grpc::HealthCheckServiceInterface* const health_;
  const std::chrono::milliseconds interval_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int serving_ ABSL_GUARDED_BY(mu_) = -1;  // -1 unknown, else 0/1
};

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_HEALTH_MONITOR_H_
