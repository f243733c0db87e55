#include "service/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"

namespace llmbridge::service {
namespace {

// Seconds; from a fast echo (ms) to a long generation on CPU (minutes).
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

std::string CodeName(absl::StatusCode code) {
  std::string name = absl::StatusCodeToString(code);  // "NOT_FOUND"
  return name.empty() ? absl::StrCat("CODE_", static_cast<int>(code)) : name;
}

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  requests_ = &prometheus::BuildCounter()
                   .Name("llmbridge_requests_total")
                   .Help("Finished RPCs by method and gRPC status code.")
                   .Register(*registry_);
  in_flight_ = &prometheus::BuildGauge()
                    .Name("llmbridge_requests_in_flight")
                    .Help("RPCs being served now, by method.")
                    .Register(*registry_);
  duration_ = &prometheus::BuildHistogram()
                   .Name("llmbridge_request_duration_seconds")
                   .Help("Time from receiving an RPC to its status.")
                   .Register(*registry_);
  first_chunk_ = &prometheus::BuildHistogram()
                      .Name("llmbridge_time_to_first_chunk_seconds")
                      .Help("Time from a Complete call to its first text.")
                      .Register(*registry_)
                      .Add({}, kLatencyBuckets);
  output_tokens_ = &prometheus::BuildCounter()
                        .Name("llmbridge_output_tokens_total")
                        .Help("Tokens generated, as the backends report them.")
                        .Register(*registry_)
                        .Add({});
  sidecar_starts_ = &prometheus::BuildCounter()
                         .Name("llmbridge_sidecar_starts_total")
                         .Help("Sidecar processes started; more than "
                               "--sidecars means restarts.")
                         .Register(*registry_);
  sidecars_ready_ = &prometheus::BuildGauge()
                         .Name("llmbridge_sidecars_ready")
                         .Help("Sidecar processes ready to serve.")
                         .Register(*registry_);
  admitted_in_flight_ = &prometheus::BuildGauge()
                             .Name("llmbridge_admitted_in_flight")
                             .Help("Completions running on sidecars.")
                             .Register(*registry_);
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("llmbridge_queue_depth")
                      .Help("Calls waiting for a sidecar (starting or busy).")
                      .Register(*registry_);
  queue_wait_ = &prometheus::BuildHistogram()
                     .Name("llmbridge_queue_wait_seconds")
                     .Help("Time completions waited in the queue before a "
                           "sidecar took them.")
                     .Register(*registry_);
  rejected_ = &prometheus::BuildCounter()
                   .Name("llmbridge_rejected_total")
                   .Help("Completions refused by admission control "
                         "(RESOURCE_EXHAUSTED, reason OVERLOADED).")
                   .Register(*registry_);
  protocol_errors_ = &prometheus::BuildCounter()
                          .Name("llmbridge_sidecar_protocol_errors_total")
                          .Help("Lines from sidecars that were not valid "
                                "protocol messages (dropped).")
                          .Register(*registry_);
}

Metrics::Pool Metrics::ForModel(const std::string& model) {
  const prometheus::Labels labels = {{"model", model}};
  return Pool{&sidecar_starts_->Add(labels),
              &sidecars_ready_->Add(labels),
              &admitted_in_flight_->Add(labels),
              &queue_depth_->Add(labels),
              &queue_wait_->Add(labels, kLatencyBuckets),
              &rejected_->Add(labels),
              &protocol_errors_->Add(labels)};
}

absl::StatusOr<int> Metrics::Serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_listen: cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

Metrics::Call::Call(Metrics* metrics, const std::string& method)
    : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {
  if (metrics_) metrics_->in_flight_->Add({{"method", method_}}).Increment();
}

Metrics::Call::~Call() { Finish(absl::StatusCode::kUnknown); }

void Metrics::Call::FirstChunk() {
  std::lock_guard<std::mutex> lock(mu_);
  if (metrics_ == nullptr || first_chunk_seen_) return;
  first_chunk_seen_ = true;
  metrics_->first_chunk_->Observe(SecondsSince(start_));
}

void Metrics::Call::OutputTokens(int tokens) {
  if (metrics_ != nullptr && tokens > 0) metrics_->output_tokens_->Increment(tokens);
}

void Metrics::Call::Finish(absl::StatusCode code) {
  std::lock_guard<std::mutex> lock(mu_);
  if (metrics_ == nullptr || finished_) return;
  finished_ = true;
  metrics_->in_flight_->Add({{"method", method_}}).Decrement();
  metrics_->requests_->Add({{"method", method_}, {"code", CodeName(code)}})
      .Increment();
  metrics_->duration_->Add({{"method", method_}}, kLatencyBuckets)
      .Observe(SecondsSince(start_));
}

}  // namespace llmbridge::service
