// Fuzzes the --config file parser: JSON text -> ServerConfigFromJson (which
// reads the seed's keys through rpc_bridge's ConfigFromJson), then the
// checks a start runs. A config file is operator input, not a remote
// client's, but a bad one must still end in a message naming the key, never
// a crash: the operator sees only that.
#include <cstdint>
#include <string_view>

#include "rpc_bridge/config_json.h"
#include "service/server_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using llmbridge::rpc::Json;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  absl::StatusOr<llmbridge::service::ServerConfig> config =
      llmbridge::service::ServerConfigFromJson(j);
  if (!config.ok()) {
    if (config.status().message().empty()) __builtin_trap();
    return 0;
  }
  (void)llmbridge::service::ValidateServerConfig(*config);
  // What was read can be written back and read again to the same config.
  Json written = llmbridge::rpc::ConfigToJson(config->client);
  absl::StatusOr<llmbridge::rpc::Config> again =
      llmbridge::rpc::ConfigFromJson(written);
  if (!again.ok()) __builtin_trap();
  if (again->backend != config->client.backend ||
      again->env != config->client.env ||
      again->mcp_servers.size() != config->client.mcp_servers.size()) {
    __builtin_trap();
  }
  return 0;
}
