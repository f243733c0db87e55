#include "service/model_router.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "rpc_bridge/error_reason.h"

namespace llmbridge::service {
namespace {

rpc::PoolOptions PoolOptionsFor(const ModelEntry& e, const ServerConfig& config,
                                rpc::LoadGate* gate, rpc::PoolObserver* observer) {
  rpc::PoolOptions pool = rpc::ClientOptions::DefaultPoolOptions();
  pool.sidecars = e.sidecars;
  // 0: as many as the sidecar says it decodes together (gguf's
  // max_sequences), else the backend's default.
  pool.max_concurrent = e.max_concurrent;
  pool.unreported_concurrent = DefaultMaxConcurrent(e.client.backend);
  pool.max_queue = e.max_queue;
  pool.queue_timeout = config.queue_timeout;
  pool.health_interval = config.health_interval;
  pool.health_timeout = config.health_timeout;
  pool.preload = e.preload;
  pool.keep_alive = e.keep_alive;
  // Remote clients must not see the sidecar's stderr (paths, pids): it is
  // in the server's log, under the sidecar's pid.
  pool.sidecar.stderr_in_errors = false;
  pool.observer = observer;
  if (e.client.backend == rpc::kBackendGguf) {
    pool.sidecar.init_options["n_threads"] = GgufThreadsPerSidecar(e.sidecars);
  }
  for (const auto& [key, value] : e.options.items()) {
    pool.sidecar.init_options[key] = value;
  }
  if (InProcessBackend(e.client.backend)) pool.load_gate = gate;
  return pool;
}

}  // namespace

ModelRouter::ModelRouter(const ServerConfig& config, Metrics* metrics) {
  if (config.max_loaded_models > 0) {
    gate_ = std::make_unique<rpc::LoadGate>(config.max_loaded_models);
  }
  for (const ModelEntry& e : config.models) {
    auto model = std::make_unique<Model>();
    model->entry = e;
    model->events = std::make_unique<PoolEvents>(e.name, metrics);
    rpc::ClientOptions options;
    options.pool = PoolOptionsFor(e, config, gate_.get(), model->events.get());
    model->client = std::make_unique<rpc::Client>(e.client, std::move(options));
    if (e.name == config.default_model) default_ = model.get();
    models_.push_back(std::move(model));
  }
  if (default_ == nullptr && !models_.empty()) default_ = models_.front().get();
}

ModelRouter::~ModelRouter() { Shutdown(); }

absl::StatusOr<ModelRouter::Route> ModelRouter::Resolve(
    const std::string& requested) const {
  if (requested.empty()) return Route{default_, ""};
  for (const auto& m : models_) {
    if (m->entry.name == requested) return Route{m.get(), ""};
  }
  for (const auto& m : models_) {
    if (!m->entry.client.model.empty() && m->entry.client.model == requested) {
      return Route{m.get(), ""};
    }
  }
  if (default_->entry.pass_through) return Route{default_, requested};
  for (const auto& m : models_) {
    if (m->entry.pass_through) return Route{m.get(), requested};
  }
  std::vector<std::string> names;
  for (const auto& m : models_) names.push_back(m->entry.name);
  return rpc::WithReason(
      absl::NotFoundError(absl::StrCat(
          "model '", requested, "' is not served here; served models: ",
          absl::StrJoin(names, ", "), " (ListModels describes them)")),
      rpc::reason::kModelNotFound);
}

void ModelRouter::set_health(HealthReporter* health) {
  for (const auto& m : models_) m->events->set_health(health);
}

void ModelRouter::Shutdown() {
  std::vector<std::thread> stoppers;
  for (const auto& m : models_) {
    rpc::Client* client = m->client.get();
    stoppers.emplace_back([client] { client->Shutdown(); });
  }
  for (std::thread& t : stoppers) t.join();
}

}  // namespace llmbridge::service
