// LocalLLMService::ListModels: every served model, its state from its pool,
// and, for loaded ones, what the sidecar's `models` method reports. Never
// loads a model: idle pools are described from the configuration only.
#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "google/protobuf/util/json_util.h"
#include "service/grpc_status.h"
#include "service/local_llm_service.h"
#include "service/logging.h"

namespace llmbridge::service {
namespace {

using llmbridge::v1::ModelDetails;

// How long a loaded model's sidecar gets to describe it.
constexpr std::chrono::milliseconds kDetailsTimeout{5000};

int64_t IntField(const rpc::Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  const double d = it->get<double>();
  return d >= 0 && d < 9.0e18 ? static_cast<int64_t>(d) : 0;
}

std::string StringField(const rpc::Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// The sidecar's normalised details (its bytes are untrusted: anything of
// the wrong type is left out).
ModelDetails ToModelDetails(const rpc::Json& entry) {
  ModelDetails d;
  auto it = entry.find("details");
  const rpc::Json& details = it != entry.end() && it->is_object() ? *it : entry;
  d.set_context_length(IntField(details, "context_length"));
  d.set_context_length_source(StringField(details, "context_length_source"));
  d.set_size_bytes(IntField(details, "size_bytes"));
  d.set_quantization(StringField(details, "quantization"));
  d.set_family(StringField(details, "family"));
  d.set_parameter_size(StringField(details, "parameter_size"));
  d.set_format(StringField(details, "format"));
  std::string text = entry.dump(-1, ' ', false, rpc::Json::error_handler_t::replace);
  if (!google::protobuf::util::JsonStringToMessage(text, d.mutable_raw()).ok()) {
    d.clear_raw();
  }
  return d;
}

void AddSidecarReport(const rpc::Json& reply, llmbridge::v1::ModelInfo& info) {
  if (!reply.is_object()) return;
  if (auto it = reply.find("model"); it != reply.end() && it->is_object()) {
    *info.mutable_details() = ToModelDetails(*it);
  }
  auto models = reply.find("models");
  if (models == reply.end() || !models->is_array()) return;
  for (const rpc::Json& entry : *models) {
    if (!entry.is_object()) continue;
    const std::string name = StringField(entry, "name");
    if (name.empty()) continue;
    if (info.pass_through()) {
      llmbridge::v1::HostModel* host = info.add_host_models();
      host->set_name(name);
      *host->mutable_details() = ToModelDetails(entry);
    }
    // An older sidecar without "model": its own entry is in the list.
    if (!info.has_details() && models->size() == 1) {
      *info.mutable_details() = ToModelDetails(entry);
    }
  }
}

void FillFromPool(const ModelRouter::Model& m, bool is_default,
                  llmbridge::v1::ModelInfo& info) {
  const ModelEntry& e = m.entry;
  info.set_name(e.name);
  info.set_backend(e.client.backend);
  info.set_model(e.client.model);
  info.set_host(e.client.host);
  info.set_sidecars(e.sidecars);
  info.set_is_default(is_default);
  info.set_pass_through(e.pass_through);
  info.set_keep_alive_ms(e.keep_alive.count());
  const rpc::PoolStatus status = m.client->Status();
  info.set_state(status.LoadState());
  if (info.state() == "failed") {
    info.set_error(std::string(status.Problem().message()));
  } else if (status.waiting_for_load) {
    info.set_error("waiting for a place to load (--max_loaded_models)");
  }
  int running = 0;
  for (const rpc::SlotStatus& slot : status.slots) running += slot.pid > 0 ? 1 : 0;
  info.set_sidecars_running(running);
  info.set_in_flight(status.in_flight);
  info.set_queued(status.queued);
}

// Collects the sidecars' answers; the last one to arrive finishes the call.
struct Gathering {
  grpc::ServerUnaryReactor* reactor;
  std::shared_ptr<Metrics::Call> observer;
  std::mutex mu;
  std::atomic<int> waiting{0};

  void Done() {
    if (waiting.fetch_sub(1) != 1) return;
    observer->Finish(absl::StatusCode::kOk);
    reactor->Finish(grpc::Status::OK);
  }
};

}  // namespace

grpc::ServerUnaryReactor* LocalLLMService::ListModels(
    grpc::CallbackServerContext* context,
    const llmbridge::v1::ListModelsRequest* /*request*/,
    llmbridge::v1::ListModelsResponse* response) {
  auto gathering = std::make_shared<Gathering>();
  gathering->reactor = context->DefaultReactor();
  gathering->observer = std::make_shared<Metrics::Call>(options_.metrics, "ListModels");
  response->set_default_model(router_->default_model().entry.name);
  // One for this thread, so that no reply finishes the call before every
  // model is listed.
  gathering->waiting = 1;
  for (const auto& m : router_->models()) {
    llmbridge::v1::ModelInfo* info = response->add_models();
    FillFromPool(*m, m.get() == &router_->default_model(), *info);
    if (info->state() != "loaded") continue;
    gathering->waiting.fetch_add(1);
    // Only from a ready sidecar: describing a model must not load it.
    m->client->CallAsync(
        rpc::kMethodModels, rpc::Json::object(), kDetailsTimeout,
        [gathering, info, name = m->entry.name](absl::StatusOr<rpc::Json> reply) {
          if (reply.ok()) {
            std::lock_guard<std::mutex> lock(gathering->mu);
            AddSidecarReport(*reply, *info);
          } else if (!absl::IsFailedPrecondition(reply.status())) {
            LogEvent("warn", "model_details_failed",
                     {{"model", name}, {"error", std::string(reply.status().message())}});
          }
          gathering->Done();
        },
        /*only_if_ready=*/true);
  }
  gathering->Done();
  return gathering->reactor;
}

}  // namespace llmbridge::service
