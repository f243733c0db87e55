#include "service/health_monitor.h"

#include <algorithm>

#include "service/logging.h"

namespace llmbridge::service {

HealthMonitor::HealthMonitor(rpc::Client* client,
                             grpc::HealthCheckServiceInterface* health,
                             std::chrono::milliseconds interval)
    : client_(client), health_(health), interval_(interval) {
  // Not serving until the first probe passes.
  health_->SetServingStatus("", false);
  health_->SetServingStatus(kServiceName, false);
}

HealthMonitor::~HealthMonitor() { Stop(); }

void HealthMonitor::Start() { thread_ = std::thread([this] { Loop(); }); }

void HealthMonitor::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  // First, so that probes and load balancers stop sending new calls.
  Set(false, "shutting down");
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HealthMonitor::Loop() {
  while (true) {
    Probe();
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, interval_, [this] { return stopping_; })) {
      return;
    }
  }
}

void HealthMonitor::Probe() {
  // Starts the sidecar if it is not running (at boot, or after a crash).
  const auto timeout = std::max(interval_, client_->config().startup_timeout);
  absl::StatusOr<rpc::Json> reply =
      client_->Call("health", rpc::Json::object(), timeout);
  if (reply.ok()) {
    bool ok = reply->is_object() && reply->value("ok", false);
    Set(ok, ok ? "backend healthy"
               : reply->is_object() ? reply->value("message", "backend unhealthy")
                                    : "backend unhealthy");
    return;
  }
  if (absl::IsUnimplemented(reply.status()) && client_->IsRunning()) {
    // A seed-style sidecar has no health method: running is all we know.
    Set(true, "sidecar running (it has no health method)");
    return;
  }
  Set(false, std::string(reply.status().message()));
}

void HealthMonitor::Set(bool serving, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && serving) return;
    if (serving_ == static_cast<int>(serving)) return;
    serving_ = static_cast<int>(serving);
  }
  health_->SetServingStatus("", serving);
  health_->SetServingStatus(kServiceName, serving);
  LogEvent(serving ? "info" : "warn", "health",
           {{"status", serving ? "SERVING" : "NOT_SERVING"}, {"why", why}});
}

}  // namespace llmbridge::service
