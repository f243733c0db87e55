// Config <-> JSON with the seed's keys: backend, sidecar_path, model, host,
// python_path, startup_timeout, request_timeout, work_dir, env, mcp_servers.
// This is also the shape of the server's --config file.
//
// Durations are read from a string ("30s", "5m", "1500ms") or, as the seed's
// Go encoding writes them, an integer number of nanoseconds; they are
// written as strings.
#ifndef LLMBRIDGE_RPC_BRIDGE_CONFIG_JSON_H_
#define LLMBRIDGE_RPC_BRIDGE_CONFIG_JSON_H_

#include <chrono>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::rpc {

// The seed's keys, for callers that accept more keys beside them.
const std::set<std::string>& ConfigJsonKeys();

// Reads the seed's keys of `j` (others are ignored; see ConfigJsonKeys).
// InvalidArgument names the key and what is wrong with it.
absl::StatusOr<Config> ConfigFromJson(const Json& j);

Json ConfigToJson(const Config& config);

// A duration from a JSON string or integer nanoseconds, as above.
absl::StatusOr<std::chrono::milliseconds> DurationFromJson(
    const Json& value, const std::string& key);
std::string DurationToString(std::chrono::milliseconds d);

// Reads j[key] into `out` when present and not null; InvalidArgument
// ("key: must be a string") otherwise. For config readers built on this one.
absl::Status ReadJsonString(const Json& j, const char* key, std::string& out);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_CONFIG_JSON_H_
