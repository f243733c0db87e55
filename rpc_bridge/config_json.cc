#include "rpc_bridge/config_json.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace llmbridge::rpc {
namespace {

absl::Status Bad(const std::string& key, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(key, ": ", why));
}

}  // namespace

absl::Status ReadJsonString(const Json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return Bad(key, "must be a string");
  out = it->get<std::string>();
  return absl::OkStatus();
}

const std::set<std::string>& ConfigJsonKeys() {
  static const auto* keys = new std::set<std::string>{
      "backend",         "sidecar_path", "model",    "host",
      "python_path",     "startup_timeout", "request_timeout",
      "work_dir",        "env",          "mcp_servers"};
  return *keys;
}

absl::StatusOr<std::chrono::milliseconds> DurationFromJson(
    const Json& value, const std::string& key) {
  if (value.is_number_integer()) {
    // The seed's Go Config marshals time.Duration as nanoseconds.
    int64_t ns = value.get<int64_t>();
    if (ns <= 0) return Bad(key, "must be positive");
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::nanoseconds(ns));
  }
  if (value.is_string()) {
    absl::Duration d;
    if (!absl::ParseDuration(value.get<std::string>(), &d) ||
        d <= absl::ZeroDuration()) {
      return Bad(key, absl::StrCat("'", value.get<std::string>(),
                                   "' is not a positive duration such as "
                                   "\"30s\" or \"5m\""));
    }
    return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
  }
  return Bad(key, "must be a duration string (\"30s\") or nanoseconds");
}

std::string DurationToString(std::chrono::milliseconds d) {
  return absl::FormatDuration(absl::Milliseconds(d.count()));
}

absl::StatusOr<Config> ConfigFromJson(const Json& j) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError("config must be a JSON object");
  }
  Config c;
  for (auto [key, field] : {std::pair{"backend", &c.backend},
                            {"sidecar_path", &c.sidecar_path},
                            {"model", &c.model},
                            {"host", &c.host},
                            {"python_path", &c.python_path},
                            {"work_dir", &c.work_dir}}) {
    if (absl::Status s = ReadJsonString(j, key, *field); !s.ok()) return s;
  }
  for (auto [key, field] : {std::pair{"startup_timeout", &c.startup_timeout},
                            {"request_timeout", &c.request_timeout}}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    absl::StatusOr<std::chrono::milliseconds> d = DurationFromJson(*it, key);
    if (!d.ok()) return d.status();
    *field = *d;
  }
  if (auto it = j.find("env"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Bad("env", "must be an object of strings");
    for (const auto& [k, v] : it->items()) {
      if (!v.is_string()) {
        return Bad(absl::StrCat("env.", k), "must be a string");
      }
      c.env[k] = v.get<std::string>();
    }
  }
  if (auto it = j.find("mcp_servers"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Bad("mcp_servers", "must be an object");
    for (const auto& [name, server] : it->items()) {
      const std::string key = absl::StrCat("mcp_servers.", name);
      if (!server.is_object()) return Bad(key, "must be an object");
      try {
        c.mcp_servers[name] = server.get<MCPServerConfig>();
      } catch (const Json::exception& e) {
        return Bad(key, e.what());
      }
      const std::string& type = c.mcp_servers[name].type;
      if (type != "stdio" && type != "http" && type != "sse") {
        return Bad(key + ".type",
                   absl::StrCat("'", type, "' is not one of stdio, http, sse"));
      }
    }
  }
  return c;
}

Json ConfigToJson(const Config& c) {
  Json j{{"backend", c.backend},
         {"sidecar_path", c.sidecar_path},
         {"model", c.model},
         {"host", c.host},
         {"python_path", c.python_path},
         {"work_dir", c.work_dir},
         {"env", c.env},
         {"mcp_servers", c.mcp_servers}};
  if (c.startup_timeout.count() > 0) {
    j["startup_timeout"] = DurationToString(c.startup_timeout);
  }
  if (c.request_timeout.count() > 0) {
    j["request_timeout"] = DurationToString(c.request_timeout);
  }
  return j;
}

}  // namespace llmbridge::rpc
