// Prometheus metrics of the server, and the per-call observer that feeds
// them, so no handler repeats timing or counting code.
//
//   llmbridge_requests_total{method,code}          counter
//   llmbridge_requests_in_flight{method}           gauge
//   llmbridge_request_duration_seconds{method}     histogram
//   llmbridge_time_to_first_chunk_seconds          histogram (Complete)
//   llmbridge_output_tokens_total                  counter
//   llmbridge_sidecar_starts_total{model}          counter (restarts = starts - 1)
//   llmbridge_sidecars_ready{model}                gauge
//   llmbridge_admitted_in_flight{model}            gauge (completions on sidecars)
//   llmbridge_queue_depth{model}                   gauge (waiting for a sidecar)
//   llmbridge_queue_wait_seconds{model}            histogram
//   llmbridge_rejected_total{model}                counter (admission control)
//   llmbridge_sidecar_protocol_errors_total{model} counter (malformed lines)
//
// Threading: every method may be called from any thread (prometheus-cpp
// metrics are atomic).
#ifndef LLMBRIDGE_SERVICE_METRICS_H_
#define LLMBRIDGE_SERVICE_METRICS_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace llmbridge::service {

class Metrics {
 public:
  Metrics();

  // Serves /metrics on `address` (host:port, port 0 for any) until
  // destroyed; returns the port.
  absl::StatusOr<int> Serve(const std::string& address);

  // The serving metrics of one model's sidecar pool. Pointers into the
  // registry: valid as long as the Metrics.
  struct Pool {
    prometheus::Counter* starts;
    prometheus::Gauge* ready;
    prometheus::Gauge* in_flight;
    prometheus::Gauge* queued;
    prometheus::Histogram* queue_wait;
    prometheus::Counter* rejected;
    prometheus::Counter* protocol_errors;
  };
  // The metrics labelled with `model` (created on first use).
  Pool ForModel(const std::string& model);

  // Observes one call from construction to Finish (or destruction).
  class Call {
   public:
    Call(Metrics* metrics, const std::string& method);
    ~Call();
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

    // The first streamed chunk; later calls are ignored.
    void FirstChunk();
    void OutputTokens(int tokens);
    // Records the outcome; later calls are ignored.
    void Finish(absl::StatusCode code);

   private:
    Metrics* const metrics_;
    const std::string method_;
    const std::chrono::steady_clock::time_point start_;
    std::mutex mu_;
    bool first_chunk_seen_ = false;
    bool finished_ = false;
  };

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Gauge>* in_flight_;
  prometheus::Family<prometheus::Histogram>* duration_;
  prometheus::Histogram* first_chunk_;
  prometheus::Counter* output_tokens_;
  prometheus::Family<prometheus::Counter>* sidecar_starts_;
  prometheus::Family<prometheus::Gauge>* sidecars_ready_;
  prometheus::Family<prometheus::Gauge>* admitted_in_flight_;
  prometheus::Family<prometheus::Gauge>* queue_depth_;
  prometheus::Family<prometheus::Histogram>* queue_wait_;
  prometheus::Family<prometheus::Counter>* rejected_;
  prometheus::Family<prometheus::Counter>* protocol_errors_;
};

// The canonical gRPC name of a status code ("NOT_FOUND").
std::string CodeName(absl::StatusCode code);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_METRICS_H_
