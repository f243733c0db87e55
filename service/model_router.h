// The served models (ServerConfig::models), each behind its own supervised
// sidecar pool with its own admission limits and health, and the choice of
// one for each request.
//
// A request's model picks the entry: empty means the default model; an
// entry's name (or its backend model name) picks that entry; another name
// goes to a pass-through entry (the default one if it passes through, else
// the first that does, in name order) unchanged; otherwise NOT_FOUND lists
// the served names. In-process models share --max_loaded_models through a
// LoadGate (least recently used idle model unloaded first).
//
// Threading: Resolve and the accessors may be called from any thread; the
// set of models is fixed at construction. Shutdown blocks.
#ifndef LLMBRIDGE_SERVICE_MODEL_ROUTER_H_
#define LLMBRIDGE_SERVICE_MODEL_ROUTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rpc_bridge/client.h"
#include "rpc_bridge/load_gate.h"
#include "service/metrics.h"
#include "service/pool_events.h"
#include "service/server_config.h"

namespace llmbridge::service {

class HealthReporter;

class ModelRouter {
 public:
  struct Model {
    ModelEntry entry;
    std::unique_ptr<PoolEvents> events;
    std::unique_ptr<rpc::Client> client;
  };

  struct Route {
    const Model* model = nullptr;
    // What the sidecar is asked for (CompleteParams.model): empty for an
    // entry's own model, the requested name when passed through.
    std::string backend_model;
  };

  // `config` has its models resolved (ResolveModels). `metrics` may be null
  // and must outlive the router.
  ModelRouter(const ServerConfig& config, Metrics* metrics);
  ~ModelRouter();  // Shutdown()

  // NOT_FOUND (reason MODEL_NOT_FOUND) naming the served models when no
  // entry serves `requested`.
  absl::StatusOr<Route> Resolve(const std::string& requested) const;

  const Model& default_model() const { return *default_; }
  const std::vector<std::unique_ptr<Model>>& models() const { return models_; }
  const rpc::LoadGate* load_gate() const { return gate_.get(); }

  // Health follows every pool from now on (nullptr: no more).
  void set_health(HealthReporter* health);

  // Stops every model's sidecars, in parallel. Blocks; idempotent.
  void Shutdown();

 private:
  std::unique_ptr<rpc::LoadGate> gate_;  // before the clients that use it
  std::vector<std::unique_ptr<Model>> models_;
  const Model* default_ = nullptr;
};

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_MODEL_ROUTER_H_
