#include "service/health_reporter.h"

#include "service/logging.h"

namespace llmbridge::service {

HealthReporter::HealthReporter(grpc::HealthCheckServiceInterface* health,
                               const ModelRouter* router)
    : health_(health), router_(router) {
  // Nothing is served before Start.
  std::lock_guard<std::mutex> lock(mu_);
  health_->SetServingStatus("", false);  // liveness
  health_->SetServingStatus(kServiceName, false);
  published_[""] = false;
  published_[kServiceName] = false;
  for (const auto& m : router_->models()) {
    const std::string service = ServiceFor(m->entry.name);
    health_->SetServingStatus(service, false);
    published_[service] = false;
  }
}

std::string HealthReporter::ServiceFor(const std::string& model) {
  return std::string(kServiceName) + "/" + model;
}

void HealthReporter::Start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    started_ = true;
    SetLocked("", true, "server running");
  }
  Refresh();
}

void HealthReporter::Refresh() {
  // Read outside our lock (the pool has its own); publish under it. Each
  // Refresh reads the state after the change that triggered it, so the
  // last one to publish is never older than the last change.
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_ || shut_down_) return;
  for (const auto& m : router_->models()) {
    rpc::PoolStatus status = m->client->Status();
    const bool serving = status.Servable();
    const std::string why =
        serving ? (status.AnyReady() ? "ready" : "unloaded; loads on the next request")
                : std::string(status.Problem().message());
    SetLocked(ServiceFor(m->entry.name), serving, why);
    if (m.get() == &router_->default_model()) SetLocked(kServiceName, serving, why);
  }
}

void HealthReporter::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shut_down_ = true;
  // Readiness first, so that probes and load balancers stop sending calls.
  SetLocked(kServiceName, false, "shutting down");
  for (const auto& m : router_->models()) {
    SetLocked(ServiceFor(m->entry.name), false, "shutting down");
  }
  SetLocked("", false, "shutting down");
}

void HealthReporter::SetLocked(const std::string& service, bool serving,
                               const std::string& why) {
  auto it = published_.find(service);
  if (it != published_.end() && it->second == serving) return;
  published_[service] = serving;
  health_->SetServingStatus(service, serving);
  LogEvent(serving ? "info" : "warn", "health",
           {{"service", service},
            {"status", serving ? "SERVING" : "NOT_SERVING"},
            {"why", why}});
}

}  // namespace llmbridge::service
