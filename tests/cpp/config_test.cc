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


// The issue's example: three models, one default, entries inheriting the
// top-level keys they do not set.
TEST(ModelsConfigTest, AModelsMapWithADefaultAndInheritedKeys) {
  auto c = service::ServerConfigFromJson(Json::parse(R"({
    "python_path": "/opt/py", "startup_timeout": "90s", "sidecars": 2,
    "models": {
      "smollm2": {"backend": "gguf"},
      "llama3.2": {"backend": "ollama", "host": "ollama:11434",
                   "model": "llama3.2:latest", "pass_through": true},
      "qwen": {"backend": "vllm", "host": "vllm:8000",
               "model": "Qwen/Qwen2.5-7B-Instruct", "max_queue": 7,
               "options": {"max_connections": 64}},
      "small": {"backend": "gguf", "keep_alive": "1m", "sidecars": 1}
    },
    "default_model": "smollm2", "max_loaded_models": 2, "keep_alive": "2m"
  })"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(service::ResolveModels(*c).ok());
  ASSERT_EQ(c->models.size(), 4u);
  auto find = [&](const std::string& name) -> const service::ModelEntry& {
    for (const auto& e : c->models) {
      if (e.name == name) return e;
    }
    ADD_FAILURE() << name;
    return c->models.front();
  };
  const auto& smollm2 = find("smollm2");
  EXPECT_EQ(smollm2.client.python_path, "/opt/py");
  EXPECT_EQ(smollm2.client.startup_timeout, std::chrono::seconds(90));
  EXPECT_EQ(smollm2.sidecars, 2);
  // The default model loads at boot and stays.
  EXPECT_TRUE(smollm2.preload);
  EXPECT_EQ(smollm2.keep_alive.count(), 0);
  const auto& qwen = find("qwen");
  EXPECT_EQ(qwen.max_queue, 7);
  EXPECT_EQ(qwen.options["max_connections"], 64);
  // HTTP backends start their sidecar at boot and never unload it.
  EXPECT_TRUE(qwen.preload);
  EXPECT_EQ(qwen.keep_alive.count(), 0);
  EXPECT_TRUE(find("llama3.2").pass_through);
  // Other in-process models load on demand and unload when idle.
  const auto& small = find("small");
  EXPECT_FALSE(small.preload);
  EXPECT_EQ(small.keep_alive, std::chrono::minutes(1));
  EXPECT_EQ(small.sidecars, 1);
  EXPECT_EQ(c->max_loaded_models, 2);
}

TEST(ModelsConfigTest, WithoutAModelsMapTheSingleBackendIsOnePassThroughEntry) {
  auto c = service::ServerConfigFromJson(
      Json::parse(R"({"backend": "ollama", "model": "llama3.2:latest", "sidecars": 3})"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(service::ResolveModels(*c).ok());
  ASSERT_EQ(c->models.size(), 1u);
  EXPECT_EQ(c->models[0].name, "llama3.2:latest");
  EXPECT_EQ(c->default_model, "llama3.2:latest");
  EXPECT_TRUE(c->models[0].pass_through);
  EXPECT_TRUE(c->models[0].preload);
  EXPECT_EQ(c->models[0].sidecars, 3);
}

TEST(ModelsConfigTest, MistakesNameTheEntryAndTheKey) {
  auto no_backend = service::ServerConfigFromJson(
      Json::parse(R"({"models": {"a": {"model": "x"}}})"));
  ASSERT_FALSE(no_backend.ok());
  EXPECT_THAT(std::string(no_backend.status().message()), HasSubstr("models.a.backend"));

  auto typo = service::ServerConfigFromJson(
      Json::parse(R"({"models": {"a": {"backend": "gguf", "sidecar": 2}}})"));
  ASSERT_FALSE(typo.ok());
  EXPECT_THAT(std::string(typo.status().message()), HasSubstr("models.a.sidecar: unknown key"));

  auto bad_name = service::ServerConfigFromJson(
      Json::parse(R"({"models": {"a b": {"backend": "gguf"}}})"));
  ASSERT_FALSE(bad_name.ok());
  EXPECT_THAT(std::string(bad_name.status().message()), HasSubstr("model name"));

  auto two = service::ServerConfigFromJson(Json::parse(
      R"({"models": {"a": {"backend": "gguf"}, "b": {"backend": "echo"}}})"));
  ASSERT_TRUE(two.ok()) << two.status();
  absl::Status no_default = service::ResolveModels(*two);
  EXPECT_THAT(std::string(no_default.message()),
              HasSubstr("default_model: required with more than one model"));
  EXPECT_THAT(std::string(no_default.message()), HasSubstr("a, b"));

  two->default_model = "c";
  EXPECT_THAT(std::string(service::ResolveModels(*two).message()),
              HasSubstr("'c' is not in models; one of: a, b"));
}

}  // namespace
}  // namespace llmbridge
