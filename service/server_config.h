// The server's configuration: the seed's client Config plus server keys,
// from flags and an optional --config JSON file (flags given on the command
// line override the file).
//
// File shape (every key optional):
//   { "backend": "ollama", "model": "llama3.2:latest", "host": "...",
//     "python_path": "...", "sidecar_path": "...", "work_dir": "...",
//     "startup_timeout": "30s", "request_timeout": "5m", "env": {...},
//     "mcp_servers": {...},
//     "listen": "127.0.0.1:50051", "metrics_listen": "0.0.0.0:9090",
//     "shutdown_grace": "30s", "health_interval": "5s",
//     "tls_cert": "...", "tls_key": "...", "tls_client_ca": "...",
//     "max_message_bytes": 8388608, "max_request_bytes": 4194304,
//     "log_prompts": false, "mcp_strict": false,
//     "sidecars": 1, "max_concurrent": 0, "max_queue": 512,
//     "queue_timeout": "60s", "health_timeout": "10s",
//     "max_unsent_bytes": 4194304,
//     "auth_token_file": "/etc/llmbridge/auth/tokens", "auth_reflection": true,
//     "models": {"smollm2": {"backend": "gguf"},
//                "llama3.2": {"backend": "ollama", "host": "ollama:11434",
//                             "model": "llama3.2:latest", "pass_through": true}},
//     "default_model": "smollm2", "max_loaded_models": 2, "keep_alive": "5m" }
#ifndef LLMBRIDGE_SERVICE_SERVER_CONFIG_H_
#define LLMBRIDGE_SERVICE_SERVER_CONFIG_H_

#include <chrono>
#include <cstddef>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::service {

inline constexpr int kMaxSidecars = 64;

// One model the server serves: a backend in the seed's Config shape plus
// its own serving limits (the "models" map of the config file).
struct ModelEntry {
  std::string name;  // what CompleteRequest.model says
  rpc::Config client;
  // The sidecar's init options (e.g. gguf's n_ctx), merged over the ones
  // the server sets.
  rpc::Json options = rpc::Json::object();
  int sidecars = 1;
  int max_concurrent = 0;  // 0: DefaultMaxConcurrent(backend)
  int max_queue = 512;
  // Requests for a model no entry is named after come here, with the name
  // unchanged (e.g. every model an Ollama host has pulled).
  bool pass_through = false;
  // Start (load) at boot, or on the first request.
  bool preload = true;
  // Unload after this long without requests; 0: never.
  std::chrono::milliseconds keep_alive{0};
  // The keys the config file gave this entry; the others are inherited from
  // the top level (ResolveModels).
  std::set<std::string> given;
};

struct ServerConfig {
  rpc::Config client;
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen;  // empty: no metrics endpoint
  std::chrono::milliseconds shutdown_grace{30000};
  std::chrono::milliseconds health_interval{5000};
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;  // set: clients must present a certificate
  int max_message_bytes = 8 * 1024 * 1024;
  size_t max_request_bytes = 4 * 1024 * 1024;
  bool log_prompts = false;
  // The serving core (rpc_bridge/sidecar_pool.h).
  int sidecars = 1;
  int max_concurrent = 0;  // 0: DefaultMaxConcurrent(backend)
  int max_queue = 512;
  std::chrono::milliseconds queue_timeout{60000};
  std::chrono::milliseconds health_timeout{10000};
  size_t max_unsent_bytes = 4 * 1024 * 1024;
  // Bearer tokens, one per line (service/auth.h); empty: no authentication.
  std::string auth_token_file;
  // With auth: whether reflection stays open to clients without a token.
  bool auth_reflection = true;
  // Served models. Without a "models" map, ResolveModels makes one entry
  // of the single-backend keys above.
  std::vector<ModelEntry> models;
  std::string default_model;  // a request without a model gets this one
  // In-process models (gguf, transformers) loaded at once; 0: no bound.
  int max_loaded_models = 0;
  // Idle time after which in-process models other than the default one
  // unload (an entry's keep_alive overrides it).
  std::chrono::milliseconds keep_alive{5 * 60 * 1000};
};

// The keys a "models" entry may hold.
const std::set<std::string>& ModelEntryKeys();

// Completes `models` once every flag is applied: one pass-through entry of
// the single-backend keys when the file had no "models" map; each entry
// inherits the top-level keys it did not set (sidecar_path, python_path,
// timeouts, work_dir, env, mcp_servers, sidecars, max_concurrent,
// max_queue); defaults applied; default_model chosen and checked; preload
// and keep_alive resolved (the default model and HTTP backends load at
// boot and stay; other in-process models load on demand and unload after
// keep_alive).
absl::Status ResolveModels(ServerConfig& config);

// Whether the backend runs the model inside the sidecar.
bool InProcessBackend(const std::string& backend);

// Streams in flight per sidecar when max_concurrent is 0 and the sidecar's
// init does not report how many sequences it decodes together
// (capabilities.max_sequences, which the batching gguf backend sends and
// which then wins): 1 for the in-process backends, which would otherwise
// queue inside the sidecar, out of sight of admission control, 128 for
// those that multiplex (TGI's default limit).
int DefaultMaxConcurrent(const std::string& backend);

// llama.cpp threads per gguf sidecar when the pool has `sidecars` of them:
// the machine's cores shared out, so the processes do not fight for them.
int GgufThreadsPerSidecar(int sidecars);

// The server keys a --config file may hold besides the seed's.
const std::set<std::string>& ServerConfigKeys();

// Reads a --config file. Unknown keys are errors (a typo must not be
// silently ignored); InvalidArgument names the key.
absl::StatusOr<ServerConfig> ServerConfigFromJson(const rpc::Json& j);
absl::StatusOr<ServerConfig> LoadServerConfigFile(const std::string& path);

// Checks everything a start needs; InvalidArgument names the setting.
absl::Status ValidateServerConfig(const ServerConfig& config);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_SERVER_CONFIG_H_
