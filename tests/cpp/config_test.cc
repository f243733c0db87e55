// Config in the seed's JSON shape, and the server's config file on top.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/config_json.h"
#include "service/server_config.h"

namespace llmbridge {
namespace {

using rpc::Json;
using ::testing::HasSubstr;

TEST(ConfigTest, DefaultsFollowTheSeed) {
  rpc::Config c = rpc::DefaultConfig();
  EXPECT_EQ(c.python_path, "python3");
  EXPECT_EQ(c.startup_timeout, std::chrono::seconds(30));
  EXPECT_EQ(c.request_timeout, std::chrono::minutes(5));
  rpc::Config ollama;
  ollama.backend = rpc::kBackendOllama;
  EXPECT_EQ(rpc::WithDefaults(ollama).host, "localhost:11434");
  for (const char* b : {rpc::kBackendVllm, rpc::kBackendLlamaCpp}) {
    rpc::Config c2;
    c2.backend = b;
    EXPECT_EQ(rpc::WithDefaults(c2).host, "localhost:8000") << b;
  }
}

TEST(ConfigTest, ValidateNamesTheBadField) {
  rpc::Config c = rpc::DefaultConfig();
  c.backend = "gpt5";
  EXPECT_THAT(std::string(rpc::Validate(c).message()), HasSubstr("backend:"));
  c.backend = rpc::kBackendOllama;
  EXPECT_THAT(std::string(rpc::Validate(c).message()), HasSubstr("sidecar_path:"));
  c.sidecar_path = "sidecar.py";
  EXPECT_TRUE(rpc::Validate(c).ok());
}

TEST(ConfigJsonTest, ReadsTheSeedsKeysAndDurations) {
  Json j = Json::parse(R"({
    "backend": "ollama", "sidecar_path": "/s.py", "model": "m", "host": "h:1",
    "python_path": "/py", "startup_timeout": "45s",
    "request_timeout": 120000000000, "work_dir": "/w",
    "env": {"A": "1"},
    "mcp_servers": {"fs": {"type": "stdio", "command": "npx", "args": ["-y", "x"]}}
  })");
  auto c = rpc::ConfigFromJson(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->backend, "ollama");
  EXPECT_EQ(c->startup_timeout, std::chrono::seconds(45));
  EXPECT_EQ(c->request_timeout, std::chrono::minutes(2));  // Go nanoseconds
  EXPECT_EQ(c->env.at("A"), "1");
  EXPECT_EQ(c->mcp_servers.at("fs").args, (std::vector<std::string>{"-y", "x"}));
  // And back: a round trip keeps every field.
  auto again = rpc::ConfigFromJson(rpc::ConfigToJson(*c));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(rpc::ConfigToJson(*again), rpc::ConfigToJson(*c));
  EXPECT_EQ(rpc::ConfigToJson(*c)["startup_timeout"], "45s");
}

TEST(ConfigJsonTest, BadValuesNameTheKey) {
  for (auto [text, key] : std::vector<std::pair<const char*, const char*>>{
           {R"({"model": 7})", "model:"},
           {R"({"startup_timeout": "soon"})", "startup_timeout:"},
           {R"({"request_timeout": -5})", "request_timeout:"},
           {R"({"env": {"A": 1}})", "env.A:"},
           {R"({"mcp_servers": {"x": {"type": "ftp"}}})", "mcp_servers.x.type:"}}) {
    auto c = rpc::ConfigFromJson(Json::parse(text));
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(key)) << text;
  }
}

TEST(ServerConfigTest, ServerKeysBesideTheSeedsAndUnknownKeysRejected) {
  auto c = service::ServerConfigFromJson(Json::parse(R"({
    "backend": "vllm", "listen": "0.0.0.0:1", "metrics_listen": "0.0.0.0:9",
    "shutdown_grace": "10s", "max_message_bytes": 1000, "log_prompts": true
  })"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->client.backend, "vllm");
  EXPECT_EQ(c->listen, "0.0.0.0:1");
  EXPECT_EQ(c->shutdown_grace, std::chrono::seconds(10));
  EXPECT_EQ(c->max_message_bytes, 1000);
  EXPECT_TRUE(c->log_prompts);

  auto typo = service::ServerConfigFromJson(Json::parse(R"({"listne": "x"})"));
  ASSERT_FALSE(typo.ok());
  EXPECT_THAT(std::string(typo.status().message()), HasSubstr("listne: unknown key"));
}

TEST(ServerConfigTest, ValidateCatchesTlsHalves) {
  service::ServerConfig c;
  c.client = rpc::WithDefaults(c.client);
  c.client.backend = rpc::kBackendOllama;
  c.client.sidecar_path = "/proc/self/exe";  // any readable file
  EXPECT_TRUE(service::ValidateServerConfig(c).ok());
  c.tls_cert = "/proc/self/exe";
  EXPECT_THAT(std::string(service::ValidateServerConfig(c).message()),
              HasSubstr("tls_key go together"));
  c.tls_cert.clear();
  c.tls_client_ca = "/proc/self/exe";
  EXPECT_THAT(std::string(service::ValidateServerConfig(c).message()),
              HasSubstr("tls_client_ca"));
}

}  // namespace
}  // namespace llmbridge
