// The server's view of a sidecar pool: every pool event becomes a JSON log
// line and a metric, and state changes refresh health.
//
// Threading: called on pool threads (see rpc::PoolObserver); every method
// is quick and never calls back into the pool except through the health
// reporter's Refresh.
#ifndef LLMBRIDGE_SERVICE_POOL_EVENTS_H_
#define LLMBRIDGE_SERVICE_POOL_EVENTS_H_

#include <atomic>
#include <string>

#include "rpc_bridge/sidecar_pool.h"
#include "service/metrics.h"

namespace llmbridge::service {

class HealthReporter;

class PoolEvents : public rpc::PoolObserver {
 public:
  // `metrics` may be null; `health` is set later (it needs the server).
  PoolEvents(std::string model, Metrics* metrics);

  void set_health(HealthReporter* health) { health_.store(health); }

  void OnStateChanged() override;
  void OnSidecarEvent(std::string_view event, const rpc::Json& fields) override;
  void OnSidecarStderr(int slot, pid_t pid, std::string_view line) override;
  void OnProtocolError(int slot, const absl::Status& why,
                       std::string_view line_start) override;
  void OnLoad(int in_flight, int queued) override;
  void OnAdmitted(std::chrono::steady_clock::duration queue_wait) override;
  void OnRejected() override;

 private:
  const std::string model_;
  Metrics* const metrics_;
  std::optional<Metrics::Pool> pool_metrics_;
  std::atomic<HealthReporter*> health_{nullptr};
  std::atomic<int> ready_{0};
};

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_POOL_EVENTS_H_
