#include "service/server_config.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>
#include <tuple>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "rpc_bridge/config_json.h"

namespace llmbridge::service {
namespace {

absl::Status Bad(const std::string& key, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(key, ": ", why));
}

absl::Status ReadPositive(const rpc::Json& j, const char* key, int64_t& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return Bad(key, "must be a positive integer");
  }
  out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadInt(const rpc::Json& j, const char* key, int64_t min,
                     int64_t max, int64_t& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer() ||
      (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(max)) ||
      it->get<int64_t>() < min || it->get<int64_t>() > max) {
    return Bad(key, absl::StrCat("must be an integer from ", min, " to ", max));
  }
  out = it->get<int64_t>();
  return absl::OkStatus();
}

bool Readable(const std::string& path) {
  return ::access(path.c_str(), R_OK) == 0;
}

absl::Status ReadBool(const rpc::Json& j, const char* key, bool& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return Bad(key, "must be true or false");
  out = it->get<bool>();
  return absl::OkStatus();
}

// Model names become metric labels and health service names: keep them
// to what both take without escaping.
bool ValidModelName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return absl::ascii_isalnum(static_cast<unsigned char>(ch)) || ch == '.' ||
           ch == '_' || ch == '-' || ch == ':' || ch == '/';
  });
}

absl::StatusOr<ModelEntry> ModelEntryFromJson(const std::string& name,
                                              const rpc::Json& j) {
  const std::string where = absl::StrCat("models.", name);
  if (!ValidModelName(name)) {
    return Bad(where, "a model name is 1-128 letters, digits and . _ - : /");
  }
  if (!j.is_object()) {
    return Bad(where, "must be an object such as {\"backend\": \"gguf\"}");
  }
  ModelEntry e;
  e.name = name;
  for (const auto& [key, value] : j.items()) {
    if (ModelEntryKeys().count(key) == 0) {
      return Bad(absl::StrCat(where, ".", key),
                 absl::StrCat("unknown key; known keys: ",
                              absl::StrJoin(ModelEntryKeys(), ", ")));
    }
    if (!value.is_null()) e.given.insert(key);
  }
  auto prefixed = [&](const absl::Status& s) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", s.message()));
  };
  absl::StatusOr<rpc::Config> client = rpc::ConfigFromJson(j);
  if (!client.ok()) return prefixed(client.status());
  e.client = *std::move(client);
  if (e.given.count("backend") == 0) {
    return Bad(absl::StrCat(where, ".backend"),
               "required: gguf, transformers, ollama, llama.cpp, vllm or echo");
  }
  if (auto it = j.find("options"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Bad(absl::StrCat(where, ".options"), "must be an object");
    e.options = *it;
  }
  int64_t sidecars = e.sidecars, max_concurrent = e.max_concurrent,
          max_queue = e.max_queue;
  for (auto [key, min, max, field] :
       {std::tuple{"sidecars", int64_t{1}, int64_t{kMaxSidecars}, &sidecars},
        {"max_concurrent", int64_t{0}, int64_t{100000}, &max_concurrent},
        {"max_queue", int64_t{0}, int64_t{1000000}, &max_queue}}) {
    if (auto s = ReadInt(j, key, min, max, *field); !s.ok()) return prefixed(s);
  }
  e.sidecars = static_cast<int>(sidecars);
  e.max_concurrent = static_cast<int>(max_concurrent);
  e.max_queue = static_cast<int>(max_queue);
  for (auto [key, field] : {std::pair{"pass_through", &e.pass_through},
                            {"preload", &e.preload}}) {
    if (auto s = ReadBool(j, key, *field); !s.ok()) return prefixed(s);
  }
  if (auto it = j.find("keep_alive"); it != j.end() && !it->is_null()) {
    // "0s" / 0: never unload.
    if ((it->is_number_integer() && it->get<int64_t>() == 0) ||
        (it->is_string() && (it->get<std::string>() == "0" ||
                             it->get<std::string>() == "0s"))) {
      e.keep_alive = std::chrono::milliseconds(0);
    } else {
      auto d = rpc::DurationFromJson(*it, "keep_alive");
      if (!d.ok()) return prefixed(d.status());
      e.keep_alive = *d;
    }
  }
  return e;
}

}  // namespace

int DefaultMaxConcurrent(const std::string& backend) {
  if (backend == rpc::kBackendGguf || backend == rpc::kBackendTransformers) return 1;
  return 128;
}

int GgufThreadsPerSidecar(int sidecars) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, sidecars));
}

const std::set<std::string>& ServerConfigKeys() {
  static const auto* keys = new std::set<std::string>{
      "listen",        "metrics_listen",    "shutdown_grace",
      "health_interval", "tls_cert",        "tls_key",
      "tls_client_ca", "max_message_bytes", "max_request_bytes",
      "log_prompts",   "mcp_strict",        "sidecars",
      "max_concurrent", "max_queue",        "queue_timeout",
      "health_timeout", "max_unsent_bytes", "auth_token_file",
      "auth_reflection", "models", "default_model", "max_loaded_models",
      "keep_alive"};
  return *keys;
}

const std::set<std::string>& ModelEntryKeys() {
  static const auto* keys = [] {
    auto* k = new std::set<std::string>(rpc::ConfigJsonKeys());
    k->insert({"options", "sidecars", "max_concurrent", "max_queue",
               "pass_through", "preload", "keep_alive"});
    return k;
  }();
  return *keys;
}

bool InProcessBackend(const std::string& backend) {
  return backend == rpc::kBackendGguf || backend == rpc::kBackendTransformers;
}

absl::StatusOr<ServerConfig> ServerConfigFromJson(const rpc::Json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError("the config must be a JSON object");
  }
  for (const auto& [key, value] : j.items()) {
    if (rpc::ConfigJsonKeys().count(key) == 0 &&
        ServerConfigKeys().count(key) == 0) {
      std::set<std::string> all = rpc::ConfigJsonKeys();
      all.insert(ServerConfigKeys().begin(), ServerConfigKeys().end());
      return Bad(key, absl::StrCat("unknown key; known keys: ",
                                   absl::StrJoin(all, ", ")));
    }
  }
  absl::StatusOr<rpc::Config> client = rpc::ConfigFromJson(j);
  if (!client.ok()) return client.status();
  ServerConfig c;
  c.client = *std::move(client);
  for (auto [key, field] : {std::pair{"listen", &c.listen},
                            {"metrics_listen", &c.metrics_listen},
                            {"tls_cert", &c.tls_cert},
                            {"tls_key", &c.tls_key},
                            {"tls_client_ca", &c.tls_client_ca},
                            {"auth_token_file", &c.auth_token_file}}) {
    if (absl::Status s = rpc::ReadJsonString(j, key, *field); !s.ok()) {
      return s;
    }
  }
  for (auto [key, field] : {std::pair{"shutdown_grace", &c.shutdown_grace},
                            {"health_interval", &c.health_interval},
                            {"queue_timeout", &c.queue_timeout},
                            {"health_timeout", &c.health_timeout}}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    auto d = rpc::DurationFromJson(*it, key);
    if (!d.ok()) return d.status();
    *field = *d;
  }
  int64_t max_message = c.max_message_bytes;
  int64_t max_request = static_cast<int64_t>(c.max_request_bytes);
  if (auto s = ReadPositive(j, "max_message_bytes", max_message); !s.ok()) {
    return s;
  }
  if (auto s = ReadPositive(j, "max_request_bytes", max_request); !s.ok()) {
    return s;
  }
  int64_t sidecars = c.sidecars, max_concurrent = c.max_concurrent,
          max_queue = c.max_queue,
          max_unsent = static_cast<int64_t>(c.max_unsent_bytes);
  for (auto [key, min, max, field] :
       {std::tuple{"sidecars", int64_t{1}, int64_t{kMaxSidecars}, &sidecars},
        {"max_concurrent", int64_t{0}, int64_t{100000}, &max_concurrent},
        {"max_queue", int64_t{0}, int64_t{1000000}, &max_queue},
        {"max_unsent_bytes", int64_t{1024}, int64_t{INT32_MAX}, &max_unsent}}) {
    if (auto s = ReadInt(j, key, min, max, *field); !s.ok()) return s;
  }
  c.sidecars = static_cast<int>(sidecars);
  c.max_concurrent = static_cast<int>(max_concurrent);
  c.max_queue = static_cast<int>(max_queue);
  c.max_unsent_bytes = static_cast<size_t>(max_unsent);
  c.max_message_bytes = static_cast<int>(std::min<int64_t>(max_message, INT32_MAX));
  c.max_request_bytes = static_cast<size_t>(max_request);
  for (auto [key, field] : {std::pair{"log_prompts", &c.log_prompts},
                            {"mcp_strict", &c.client.mcp_strict},
                            {"auth_reflection", &c.auth_reflection}}) {
    if (auto s = ReadBool(j, key, *field); !s.ok()) return s;
  }
  if (auto it = j.find("models"); it != j.end() && !it->is_null()) {
    if (!it->is_object() || it->empty()) {
      return Bad("models", "must be an object of name -> {\"backend\": ...}");
    }
    for (const auto& [name, entry] : it->items()) {
      absl::StatusOr<ModelEntry> e = ModelEntryFromJson(name, entry);
      if (!e.ok()) return e.status();
      c.models.push_back(*std::move(e));
    }
  }
  if (auto s = rpc::ReadJsonString(j, "default_model", c.default_model); !s.ok()) {
    return s;
  }
  int64_t max_loaded = c.max_loaded_models;
  if (auto s = ReadInt(j, "max_loaded_models", 0, 1000, max_loaded); !s.ok()) return s;
  c.max_loaded_models = static_cast<int>(max_loaded);
  if (auto it = j.find("keep_alive"); it != j.end() && !it->is_null()) {
    auto d = rpc::DurationFromJson(*it, "keep_alive");
    if (!d.ok()) return d.status();
    c.keep_alive = *d;
  }
  return c;
}

absl::StatusOr<ServerConfig> LoadServerConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: cannot read '", path, "'"));
  }
  std::stringstream text;
  text << in.rdbuf();
  rpc::Json j = rpc::Json::parse(text.str(), nullptr, false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: '", path, "' is not valid JSON"));
  }
  absl::StatusOr<ServerConfig> config = ServerConfigFromJson(j);
  if (!config.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config '", path, "': ", config.status().message()));
  }
  return config;
}

absl::Status ResolveModels(ServerConfig& c) {
  if (c.models.empty()) {
    // The single-backend flags and keys: one entry, which passes any model
    // name through to its sidecar, as a server of one backend always did.
    ModelEntry e;
    e.name = c.client.model.empty() ? c.client.backend : c.client.model;
    e.client = c.client;
    e.sidecars = c.sidecars;
    e.max_concurrent = c.max_concurrent;
    e.max_queue = c.max_queue;
    e.pass_through = true;
    e.preload = true;
    e.keep_alive = std::chrono::milliseconds(0);
    if (!c.default_model.empty() && c.default_model != e.name) {
      return Bad("default_model", absl::StrCat("'", c.default_model,
                                               "' is not served; without a models map "
                                               "the one model is '", e.name, "'"));
    }
    c.default_model = e.name;
    c.models.push_back(std::move(e));
    return absl::OkStatus();
  }
  std::vector<std::string> names;
  for (ModelEntry& e : c.models) {
    names.push_back(e.name);
    auto inherit = [&](const char* key, auto& field, const auto& top) {
      if (e.given.count(key) == 0) field = top;
    };
    inherit("sidecar_path", e.client.sidecar_path, c.client.sidecar_path);
    inherit("python_path", e.client.python_path, c.client.python_path);
    inherit("startup_timeout", e.client.startup_timeout, c.client.startup_timeout);
    inherit("request_timeout", e.client.request_timeout, c.client.request_timeout);
    inherit("work_dir", e.client.work_dir, c.client.work_dir);
    inherit("mcp_servers", e.client.mcp_servers, c.client.mcp_servers);
    inherit("sidecars", e.sidecars, c.sidecars);
    inherit("max_concurrent", e.max_concurrent, c.max_concurrent);
    inherit("max_queue", e.max_queue, c.max_queue);
    for (const auto& [k, v] : c.client.env) e.client.env.emplace(k, v);
    e.client.mcp_strict = c.client.mcp_strict;
    e.client = rpc::WithDefaults(e.client);
  }
  if (c.default_model.empty()) {
    if (c.models.size() > 1) {
      return Bad("default_model",
                 absl::StrCat("required with more than one model (for requests "
                              "that name none); one of: ",
                              absl::StrJoin(names, ", ")));
    }
    c.default_model = c.models.front().name;
  }
  if (std::find(names.begin(), names.end(), c.default_model) == names.end()) {
    return Bad("default_model", absl::StrCat("'", c.default_model,
                                             "' is not in models; one of: ",
                                             absl::StrJoin(names, ", ")));
  }
  for (ModelEntry& e : c.models) {
    const bool is_default = e.name == c.default_model;
    const bool in_process = InProcessBackend(e.client.backend);
    if (e.given.count("preload") == 0) e.preload = is_default || !in_process;
    if (e.given.count("keep_alive") == 0) {
      e.keep_alive = is_default || !in_process ? std::chrono::milliseconds(0)
                                               : c.keep_alive;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateServerConfig(const ServerConfig& c) {
  for (const ModelEntry& e : c.models) {
    if (absl::Status s = rpc::Validate(e.client); !s.ok()) {
      return c.models.size() > 1 || !e.given.empty()
                 ? absl::InvalidArgumentError(
                       absl::StrCat("models.", e.name, ".", s.message()))
                 : s;
    }
    if (e.max_concurrent < 0) {
      return Bad(absl::StrCat("models.", e.name, ".max_concurrent"), "must be >= 0");
    }
  }
  if (c.max_loaded_models < 0) return Bad("max_loaded_models", "must be >= 0 (0: no bound)");
  if (absl::Status s = rpc::Validate(c.client); !s.ok()) return s;
  if (!Readable(c.client.sidecar_path)) {
    return Bad("sidecar", absl::StrCat("cannot read '", c.client.sidecar_path,
                                       "'; pass the path of sidecar/sidecar.py"));
  }
  if (c.listen.empty()) return Bad("listen", "required, e.g. 127.0.0.1:50051");
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return Bad("tls_cert", "tls_cert and tls_key go together");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return Bad("tls_client_ca", "needs tls_cert and tls_key (mTLS is TLS)");
  }
  for (auto [key, path] : {std::pair{"tls_cert", &c.tls_cert},
                           {"tls_key", &c.tls_key},
                           {"tls_client_ca", &c.tls_client_ca},
                           {"auth_token_file", &c.auth_token_file}}) {
    if (!path->empty() && !Readable(*path)) {
      return Bad(key, absl::StrCat("cannot read '", *path, "'"));
    }
  }
  if (c.shutdown_grace.count() < 0) return Bad("shutdown_grace", "negative");
  if (c.health_interval.count() <= 0) {
    return Bad("health_interval", "must be positive");
  }
  if (c.max_message_bytes <= 0) return Bad("max_message_bytes", "must be positive");
  if (c.sidecars < 1 || c.sidecars > kMaxSidecars) {
    return Bad("sidecars", absl::StrCat("must be from 1 to ", kMaxSidecars));
  }
  if (c.max_concurrent < 0) return Bad("max_concurrent", "must be >= 0 (0: per backend)");
  if (c.max_queue < 0) return Bad("max_queue", "must be >= 0");
  if (c.queue_timeout.count() <= 0) return Bad("queue_timeout", "must be positive");
  if (c.health_timeout.count() <= 0) return Bad("health_timeout", "must be positive");
  if (c.max_unsent_bytes < 1024) return Bad("max_unsent_bytes", "must be at least 1024");
  if (c.max_request_bytes == 0) return Bad("max_request_bytes", "must be positive");
  return absl::OkStatus();
}

}  // namespace llmbridge::service
