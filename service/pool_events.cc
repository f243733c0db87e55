#include "service/pool_events.h"

#include "service/health_reporter.h"
#include "service/logging.h"

namespace llmbridge::service {

PoolEvents::PoolEvents(std::string model, Metrics* metrics)
    : model_(std::move(model)), metrics_(metrics) {
  if (metrics_ != nullptr) pool_metrics_ = metrics_->ForModel(model_);
}

void PoolEvents::OnStateChanged() {
  if (HealthReporter* health = health_.load()) health->Refresh();
}

void PoolEvents::OnSidecarEvent(std::string_view event, const rpc::Json& fields) {
  rpc::Json line = fields;
  line["model"] = model_;
  const bool bad = event == "sidecar_exited" || event == "sidecar_replaced" ||
                   event == "sidecar_start_failed" ||
                   (event == "backend_health" && fields.value("ok", true) == false);
  LogEvent(bad ? "warn" : "info", std::string(event), std::move(line));
  if (!pool_metrics_.has_value()) return;
  if (event == "sidecar_started") pool_metrics_->starts->Increment();
  if (event == "sidecar_ready") pool_metrics_->ready->Increment();
  if (event == "sidecar_exited" || event == "sidecar_replaced" ||
      event == "sidecar_unloaded") {
    pool_metrics_->ready->Decrement();
  }
}

void PoolEvents::OnSidecarStderr(int slot, pid_t pid, std::string_view line) {
  // The sidecar's own log lines, wrapped so that every line the server
  // writes is one JSON object.
  LogSidecarLine(pid, line, {{"model", model_}, {"slot", slot}});
}

void PoolEvents::OnProtocolError(int slot, const absl::Status& why,
                                 std::string_view line_start) {
  LogEvent("warn", "sidecar_protocol_error",
           {{"model", model_},
            {"slot", slot},
            {"error", std::string(why.message())},
            {"line_start", std::string(line_start.substr(0, 200))}});
  if (pool_metrics_.has_value()) pool_metrics_->protocol_errors->Increment();
}

void PoolEvents::OnLoad(int in_flight, int queued) {
  if (!pool_metrics_.has_value()) return;
  pool_metrics_->in_flight->Set(in_flight);
  pool_metrics_->queued->Set(queued);
}

void PoolEvents::OnAdmitted(std::chrono::steady_clock::duration queue_wait) {
  if (!pool_metrics_.has_value()) return;
  pool_metrics_->queue_wait->Observe(
      std::chrono::duration<double>(queue_wait).count());
}

void PoolEvents::OnRejected() {
  if (pool_metrics_.has_value()) pool_metrics_->rejected->Increment();
}

}  // namespace llmbridge::service
