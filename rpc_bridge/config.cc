#include "rpc_bridge/config.h"

#include "absl/strings/str_cat.h"

namespace llmbridge::rpc {

std::string DefaultHost(const std::string& backend) {
  if (backend == kBackendOllama) return "localhost:11434";
  if (backend == kBackendLlamaCpp || backend == kBackendVllm) {
    return "localhost:8000";
  }
  return "";
}

Config DefaultConfig() { return WithDefaults(Config{}); }

Config WithDefaults(Config config) {
  if (config.host.empty()) config.host = DefaultHost(config.backend);
  if (config.python_path.empty()) config.python_path = "python3";
  if (config.startup_timeout.count() <= 0) {
    config.startup_timeout = kDefaultStartupTimeout;
  }
  if (config.request_timeout.count() <= 0) {
    config.request_timeout = kDefaultRequestTimeout;
  }
  return config;
}

absl::Status Validate(const Config& config) {
  static const char* const kBackends[] = {kBackendOllama, kBackendLlamaCpp,
                                          kBackendVllm, kBackendTransformers,
                                          kBackendGguf, kBackendEcho};
  bool known = false;
  for (const char* b : kBackends) known = known || config.backend == b;
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "backend: unknown backend '", config.backend,
        "'; use one of: ollama, llama.cpp, vllm, transformers, gguf "
        "(or echo, a debugging/benchmark backend)"));
  }
  if (config.sidecar_path.empty()) {
    return absl::InvalidArgumentError(
        "sidecar_path: required (the path of sidecar/sidecar.py)");
  }
  if (config.python_path.empty()) {
    return absl::InvalidArgumentError(
        "python_path: required (e.g. python3 or .venv/bin/python)");
  }
  if (config.startup_timeout.count() <= 0) {
    return absl::InvalidArgumentError("startup_timeout: must be positive");
  }
  if (config.request_timeout.count() <= 0) {
    return absl::InvalidArgumentError("request_timeout: must be positive");
  }
  return absl::OkStatus();
}

}  // namespace llmbridge::rpc
