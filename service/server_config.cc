#include "service/server_config.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>
#include <tuple>
#include <sstream>

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
      "auth_reflection"};
  return *keys;
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
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_boolean()) return Bad(key, "must be true or false");
    *field = it->get<bool>();
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

absl::Status ValidateServerConfig(const ServerConfig& c) {
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
