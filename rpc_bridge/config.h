// Configuration of the local client, with the seed's fields and defaults.
#ifndef LLMBRIDGE_RPC_BRIDGE_CONFIG_H_
#define LLMBRIDGE_RPC_BRIDGE_CONFIG_H_

#include <chrono>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::rpc {

// Backend names as the sidecar knows them.
inline constexpr char kBackendOllama[] = "ollama";
inline constexpr char kBackendLlamaCpp[] = "llama.cpp";
inline constexpr char kBackendVllm[] = "vllm";
inline constexpr char kBackendTransformers[] = "transformers";
inline constexpr char kBackendGguf[] = "gguf";
// Debugging/benchmark backend: echoes instantly, runs no model. Not for
// production (bench/ uses it).
inline constexpr char kBackendEcho[] = "echo";

struct Config {
  // One of the kBackend* names.
  std::string backend;
  // Path of the sidecar's entry script (sidecar/sidecar.py).
  std::string sidecar_path;
  // Backend model name; for gguf a .gguf path, or empty for the default.
  std::string model;
  // host:port of HTTP backends; empty means the backend's default.
  std::string host;
  std::string python_path;
  std::chrono::milliseconds startup_timeout{0};
  std::chrono::milliseconds request_timeout{0};
  // Working directory of the sidecar; empty: the server's.
  std::string work_dir;
  // Extra environment variables of the sidecar.
  std::map<std::string, std::string> env;
  std::map<std::string, MCPServerConfig> mcp_servers;
  // Fail the sidecar's start when an MCP server cannot be reached (default:
  // report it in ListTools and go on without it).
  bool mcp_strict = false;
};

// The seed's defaults: python3, 30 s startup, 5 min requests.
inline constexpr std::chrono::seconds kDefaultStartupTimeout{30};
inline constexpr std::chrono::minutes kDefaultRequestTimeout{5};

// The default host of a backend ("" for in-process backends).
std::string DefaultHost(const std::string& backend);

// A config with every default applied and no backend chosen.
Config DefaultConfig();

// A copy of `config` with defaults filled in for unset fields.
Config WithDefaults(Config config);

// A clear InvalidArgument naming the first bad field, else OK.
absl::Status Validate(const Config& config);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_CONFIG_H_
