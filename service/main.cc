// llmbridge: serves local LLMs over gRPC (llmbridge.v1.LocalLLM).
//
// The server forwards each call to a long-running Python sidecar over
// JSON-RPC on stdio; see README.md.
#include <signal.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "rpc_bridge/client.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/error_reason.h"
#include "service/auth.h"
#include "service/health_reporter.h"
#include "service/help.h"
#include "service/model_router.h"
#include "service/local_llm_service.h"
#include "service/logging.h"
#include "service/metrics.h"
#include "service/pool_events.h"
#include "service/request_decoding.h"
#include "service/server_config.h"
#include "service/server_options.h"
#include "service/sidecar_locator.h"

ABSL_FLAG(std::string, config, "",
          "JSON config file: the seed's Config keys (backend, sidecar_path, "
          "model, host, python_path, startup_timeout, request_timeout, "
          "work_dir, env, mcp_servers) plus the server keys (listen, "
          "metrics_listen, shutdown_grace, health_interval, tls_cert, "
          "tls_key, tls_client_ca, max_message_bytes, max_request_bytes, "
          "log_prompts, mcp_strict, sidecars, max_concurrent, max_queue, "
          "queue_timeout, health_timeout, max_unsent_bytes, auth_token_file, "
          "auth_reflection). Flags given on the command line override it.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to serve gRPC on. Loopback by default; 0.0.0.0:50051 "
          "accepts remote clients (use TLS then).");
ABSL_FLAG(std::string, backend, "gguf",
          "Model backend: gguf (embedded llama.cpp, default), ollama, "
          "llama.cpp, vllm or transformers.");
ABSL_FLAG(std::string, model, "",
          "Default model, used when a request leaves 'model' empty. gguf: a "
          ".gguf file, empty for the bundled SmolLM2-135M-Instruct; ollama: "
          "a pulled model such as llama3.2:latest; llama.cpp/vllm: a served "
          "model name; transformers: a local model directory.");
ABSL_FLAG(std::string, host, "",
          "host:port of an HTTP backend. Empty: localhost:11434 for ollama, "
          "localhost:8000 for llama.cpp and vllm.");
ABSL_FLAG(std::string, python, "python3",
          "Python interpreter that runs the sidecar; it must have the "
          "sidecar's dependencies (scripts/run uses .venv/bin/python).");
ABSL_FLAG(std::string, sidecar, "",
          "Path of the sidecar entry script. Empty: the sidecar shipped with "
          "this binary (sidecar/sidecar.py in its runfiles).");
ABSL_FLAG(std::string, work_dir, "", "Working directory of the sidecar.");
ABSL_FLAG(absl::Duration, startup_timeout, absl::Seconds(30),
          "How long the sidecar may take to start and load the model.");
ABSL_FLAG(absl::Duration, request_timeout, absl::Minutes(5),
          "Time limit of a request without a gRPC deadline (a shorter "
          "client deadline wins).");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(30),
          "On SIGTERM/SIGINT: how long in-flight streams may run before they "
          "are cancelled. Match Kubernetes' terminationGracePeriodSeconds.");
ABSL_FLAG(absl::Duration, health_interval, absl::Seconds(5),
          "How often the sidecar and its backend are health-checked.");
ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics on this host:port at /metrics (e.g. "
          "0.0.0.0:9090). Empty: no metrics endpoint.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: serve TLS (with --tls_key).");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require and verify client certificates (mTLS).");
ABSL_FLAG(int, max_message_bytes, 8 * 1024 * 1024,
          "Largest gRPC message accepted or sent, in bytes.");
ABSL_FLAG(int64_t, max_request_bytes, 4 * 1024 * 1024,
          "Largest total text (messages + system_prompt) of a request; larger "
          "requests get INVALID_ARGUMENT.");
ABSL_FLAG(bool, mcp_strict, false,
          "Fail the sidecar's start when a configured MCP server cannot be "
          "reached (default: report it in ListTools and go on without it).");
ABSL_FLAG(bool, log_prompts, false,
          "Include prompt text in the request logs (off: only sizes).");
ABSL_FLAG(int, sidecars, 1,
          "Sidecar processes for the backend, supervised and health-checked; "
          "each call goes to the least-loaded ready one. gguf batches up to "
          "n_seq_max (default 8) requests in one process over one copy of the "
          "model, so 1 is usually best; N processes split the cores "
          "(llama.cpp n_threads = cores / N) and copy the model. transformers "
          "generates one answer at a time per process, so N sidecars serve N "
          "requests in parallel. HTTP backends multiplex: 1 is enough.");
ABSL_FLAG(int, max_concurrent, 0,
          "Requests in flight per sidecar; more wait in the queue. 0: as many "
          "as the sidecar decodes together (gguf: its n_seq_max, default 8), "
          "1 for transformers (one generation at a time per process), 128 for "
          "the HTTP backends (TGI's default limit).");
ABSL_FLAG(int, max_queue, 512,
          "Requests waiting for a free sidecar (or for one to start); past it "
          "requests get RESOURCE_EXHAUSTED (reason OVERLOADED) at once. "
          "512 is Ollama's default queue.");
ABSL_FLAG(absl::Duration, queue_timeout, absl::Seconds(60),
          "Longest wait in the queue; then RESOURCE_EXHAUSTED (reason "
          "OVERLOADED), or UNAVAILABLE if the sidecar is still starting.");
ABSL_FLAG(absl::Duration, health_timeout, absl::Seconds(10),
          "A sidecar that leaves a health probe unanswered this long is "
          "considered stuck, killed and replaced.");
ABSL_FLAG(int64_t, max_unsent_bytes, 4 * 1024 * 1024,
          "Answer text waiting for a slow client beyond this ends the call "
          "with RESOURCE_EXHAUSTED (reason CLIENT_TOO_SLOW) and stops the "
          "generation.");
ABSL_FLAG(std::string, auth_token_file, "",
          "File of bearer tokens, one per line (blank lines and # comments "
          "ignored): clients must send 'authorization: Bearer <token>', else "
          "UNAUTHENTICATED. Re-read on SIGHUP and when the file changes. "
          "Health checks stay open. Empty: no authentication.");
ABSL_FLAG(bool, auth_reflection, true,
          "With --auth_token_file: serve reflection without a token (false: "
          "reflection needs one too).");
ABSL_FLAG(int, max_loaded_models, 0,
          "In-process models (gguf, transformers) loaded at once; loading one "
          "more unloads the least recently used idle one (never one with a "
          "request in flight), or waits (up to --queue_timeout) while all are "
          "busy. 0: no bound.");
ABSL_FLAG(absl::Duration, keep_alive, absl::Minutes(5),
          "In-process models other than the default one unload after this long "
          "without requests, and load again on the next (Ollama's default). "
          "A models entry's keep_alive overrides it.");
ABSL_FLAG(absl::Duration, max_connection_age, absl::ZeroDuration(),
          "Close each client connection (GOAWAY, +-10% jitter) once it is this "
          "old, so that long-lived clients resolve the name again and spread "
          "their calls over replicas added since. 0: never.");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::ZeroDuration(),
          "After --max_connection_age, how long calls in flight on the old "
          "connection may still run before it is closed. 0: no limit (each "
          "call is bounded by its deadline or --request_timeout).");

namespace {

namespace svc = llmbridge::service;

std::chrono::milliseconds ToMillis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

// Whether --name appeared on the command line (so it overrides --config),
// also as a boolean's --noname.
bool Given(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") break;
    for (const std::string& prefix :
         {"--" + name, "-" + name, "--no" + name, "-no" + name}) {
      if (arg == prefix || absl::StartsWith(arg, prefix + "=")) return true;
    }
  }
  return false;
}

absl::StatusOr<svc::ServerConfig> BuildConfig(int argc, char** argv) {
  svc::ServerConfig c;
  const std::string file = absl::GetFlag(FLAGS_config);
  if (!file.empty()) {
    absl::StatusOr<svc::ServerConfig> loaded = svc::LoadServerConfigFile(file);
    if (!loaded.ok()) return loaded.status();
    c = *std::move(loaded);
  }
  // Without a file every flag applies (defaults included); with one, only
  // the flags given explicitly.
  auto use = [&](const char* name) { return file.empty() || Given(argc, argv, name); };
  if (use("backend") || c.client.backend.empty()) {
    c.client.backend = absl::GetFlag(FLAGS_backend);
  }
  if (use("model")) c.client.model = absl::GetFlag(FLAGS_model);
  if (use("host")) c.client.host = absl::GetFlag(FLAGS_host);
  if (use("python")) c.client.python_path = absl::GetFlag(FLAGS_python);
  if (use("sidecar")) c.client.sidecar_path = absl::GetFlag(FLAGS_sidecar);
  if (use("work_dir")) c.client.work_dir = absl::GetFlag(FLAGS_work_dir);
  if (use("startup_timeout") || c.client.startup_timeout.count() == 0) {
    c.client.startup_timeout = ToMillis(absl::GetFlag(FLAGS_startup_timeout));
  }
  if (use("request_timeout") || c.client.request_timeout.count() == 0) {
    c.client.request_timeout = ToMillis(absl::GetFlag(FLAGS_request_timeout));
  }
  if (use("listen")) c.listen = absl::GetFlag(FLAGS_listen);
  if (use("metrics_listen")) c.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (use("shutdown_grace")) c.shutdown_grace = ToMillis(absl::GetFlag(FLAGS_shutdown_grace));
  if (use("health_interval")) c.health_interval = ToMillis(absl::GetFlag(FLAGS_health_interval));
  if (use("tls_cert")) c.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  if (use("tls_key")) c.tls_key = absl::GetFlag(FLAGS_tls_key);
  if (use("tls_client_ca")) c.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (use("max_message_bytes")) c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  if (use("max_request_bytes")) {
    int64_t v = absl::GetFlag(FLAGS_max_request_bytes);
    c.max_request_bytes = v > 0 ? static_cast<size_t>(v) : 0;
  }
  if (use("log_prompts")) c.log_prompts = absl::GetFlag(FLAGS_log_prompts);
  if (use("mcp_strict")) c.client.mcp_strict = absl::GetFlag(FLAGS_mcp_strict);
  if (use("sidecars")) c.sidecars = absl::GetFlag(FLAGS_sidecars);
  if (use("max_concurrent")) c.max_concurrent = absl::GetFlag(FLAGS_max_concurrent);
  if (use("max_queue")) c.max_queue = absl::GetFlag(FLAGS_max_queue);
  if (use("queue_timeout")) c.queue_timeout = ToMillis(absl::GetFlag(FLAGS_queue_timeout));
  if (use("health_timeout")) c.health_timeout = ToMillis(absl::GetFlag(FLAGS_health_timeout));
  if (use("max_unsent_bytes")) {
    int64_t v = absl::GetFlag(FLAGS_max_unsent_bytes);
    c.max_unsent_bytes = v > 0 ? static_cast<size_t>(v) : 0;
  }
  if (use("auth_token_file")) c.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  if (use("auth_reflection")) c.auth_reflection = absl::GetFlag(FLAGS_auth_reflection);
  if (use("max_loaded_models")) c.max_loaded_models = absl::GetFlag(FLAGS_max_loaded_models);
  if (use("keep_alive")) c.keep_alive = ToMillis(absl::GetFlag(FLAGS_keep_alive));
  if (c.client.sidecar_path.empty()) c.client.sidecar_path = svc::ShippedSidecarPath();
  c.client = llmbridge::rpc::WithDefaults(c.client);
  if (absl::Status resolved = svc::ResolveModels(c); !resolved.ok()) return resolved;
  if (absl::Status valid = svc::ValidateServerConfig(c); !valid.ok()) return valid;
  return c;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::shared_ptr<grpc::ServerCredentials> Credentials(const svc::ServerConfig& c) {
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      c.tls_client_ca.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_key_cert_pairs.push_back({ReadFile(c.tls_key), ReadFile(c.tls_cert)});
  if (!c.tls_client_ca.empty()) options.pem_root_certs = ReadFile(c.tls_client_ca);
  return grpc::SslServerCredentials(options);
}

int Run(int argc, char** argv) {
#ifdef NDEBUG
  // Debian builds Abseil without NDEBUG, so every absl::Mutex (gRPC's
  // locks included) keeps a lock-order graph for deadlock detection: about
  // 2 % of the server's CPU per request in perf. Optimised builds skip it;
  // the tests' builds keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  svc::RouteLibraryLogs();
  absl::StatusOr<svc::ServerConfig> configured = BuildConfig(argc, argv);
  // --- ops: read from flags until they are config file keys ---
  const svc::ConnectionAge connection_age{
      ToMillis(absl::GetFlag(FLAGS_max_connection_age)),
      ToMillis(absl::GetFlag(FLAGS_max_connection_age_grace))};
  absl::Status valid = configured.ok()
                           ? svc::ValidateConnectionAge(connection_age)
                           : configured.status();
  if (!valid.ok()) {
    svc::LogEvent("error", "bad_configuration",
                  {{"message", std::string(valid.message())},
                   {"help", "llmbridge --help lists every flag"}});
    return 2;
  }
  const svc::ServerConfig& config = *configured;

  // SIGINT/SIGTERM are handled by one thread (sigwait), so every other
  // thread, gRPC's included, must block them: block before any starts.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto auth = svc::StartBearerAuth(config.auth_token_file, config.auth_reflection);
  if (!auth.ok()) {
    svc::LogEvent("error", "bad_configuration",
                  {{"message", std::string(auth.status().message())}});
    return 2;
  }

  svc::Metrics metrics;
  int metrics_port = 0;
  if (!config.metrics_listen.empty()) {
    absl::StatusOr<int> served = metrics.Serve(config.metrics_listen);
    if (!served.ok()) {
      svc::LogEvent("error", "bad_configuration",
                    {{"message", std::string(served.status().message())}});
      return 2;
    }
    metrics_port = *served;
  }
  // Each served model: its own supervised sidecars, admission and health.
  svc::ModelRouter router(config, &metrics);
  svc::ServiceOptions service_options;
  service_options.max_request_bytes = config.max_request_bytes;
  service_options.log_prompts = config.log_prompts;
  service_options.max_unsent_bytes = config.max_unsent_bytes;
  service_options.metrics = &metrics;
  svc::LocalLLMService service(&router, service_options);
  svc::AnswerUndecodableRequests(&service);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(
      config.listen,
      svc::WithBearerAuth(Credentials(config), !config.tls_cert.empty(), auth->get()),
      &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(config.max_message_bytes);
  builder.SetMaxSendMessageSize(config.max_message_bytes);
  svc::ApplyConnectionAge(connection_age, &builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    svc::LogEvent("error", "listen_failed",
                  {{"listen", config.listen},
                   {"message", "cannot listen on " + config.listen +
                                   " (address in use or invalid, or bad TLS "
                                   "files; choose another with --listen)"}});
    return 1;
  }
  svc::HealthReporter health(server->GetHealthCheckService(), &router);
  router.set_health(&health);
  health.Start();
  nlohmann::json models_started = nlohmann::json::array();
  for (const auto& m : router.models()) {
    const svc::ModelEntry& e = m->entry;
    models_started.push_back({{"name", e.name},
                              {"backend", e.client.backend},
                              {"model", e.client.model},
                              {"sidecars", e.sidecars},
                              {"max_concurrent",
                               e.max_concurrent > 0
                                   ? llmbridge::rpc::Json(e.max_concurrent)
                                   : llmbridge::rpc::Json(absl::StrCat(
                                         "sidecar's max_sequences, else ",
                                         svc::DefaultMaxConcurrent(e.client.backend)))},
                              {"max_queue", e.max_queue},
                              {"preload", e.preload},
                              {"keep_alive_ms", e.keep_alive.count()},
                              {"pass_through", e.pass_through}});
  }
  svc::LogEvent("info", "started",
                {{"service", svc::kServiceName},
                 {"listen", config.listen},
                 {"port", port},
                 {"backend", router.default_model().entry.client.backend},
                 {"model", router.default_model().entry.client.model},
                 {"default_model", config.default_model},
                 {"models", models_started},
                 {"max_loaded_models", config.max_loaded_models},
                 {"tls", !config.tls_cert.empty()},
                 {"metrics_listen", config.metrics_listen},
                 {"metrics_port", metrics_port},
                 {"sidecar", config.client.sidecar_path},
                 {"max_connection_age_ms", connection_age.max_age.count()}});

  std::thread stopper([&] {
    int signo = 0;
    sigwait(&stop_signals, &signo);
    // 1. New Complete calls are refused, and health says NOT_SERVING.
    service.StopAccepting();
    health.Shutdown();
    svc::LogEvent("info", "shutdown",
                  {{"signal", signo},
                   {"grace_ms", config.shutdown_grace.count()}});
    // 2. In-flight streams get the grace period to finish...
    bool drained = service.WaitIdle(std::chrono::steady_clock::now() +
                                    config.shutdown_grace);
    svc::LogEvent("info", "drained", {{"all_finished", drained}});
    if (!drained) {
      // 3. ...then every call still running or queued (any method) is
      // failed with SHUTTING_DOWN, which cancels the sidecar's work; the
      // pool answers a cancel at once, so they end within moments.
      service.CancelAll(llmbridge::rpc::WithReason(
          absl::UnavailableError("the server shut down before the call finished "
                                 "(--shutdown_grace passed); retry on another instance"),
          llmbridge::rpc::reason::kShuttingDown));
      service.WaitIdle(std::chrono::steady_clock::now() + std::chrono::seconds(5));
    }
    // 4. Whatever gRPC still holds (health watches) ends with the server.
    server->Shutdown(std::chrono::system_clock::now());
  });
  server->Wait();
  stopper.join();
  // 5. The sidecars: shutdown request, then signals if they do not exit.
  router.set_health(nullptr);
  router.Shutdown();
  svc::LogEvent("info", "stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "serve a local LLM over gRPC (llmbridge.v1.LocalLLM).\n\n"
      "  llmbridge --backend=gguf                 # bundled SmolLM2 model\n"
      "  llmbridge --backend=ollama --model=llama3.2:latest\n"
      "  llmbridge --config=/etc/llmbridge/config.json --listen=0.0.0.0:50051\n\n"
      "Call it with: grpcurl -plaintext -d "
      "'{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}' "
      "127.0.0.1:50051 llmbridge.v1.LocalLLM/Complete\n"
      "Health: grpc.health.v1 for \"\" (liveness), llmbridge.v1.LocalLLM "
      "(readiness of the default model) and llmbridge.v1.LocalLLM/<model> "
      "for each served model. Exit codes: 0 after a clean shutdown, "
      "1 if the address cannot be served, 2 for a bad configuration.");
  svc::ConfigureFlagHelp();
  absl::ParseCommandLine(argc, argv);
  const int code = Run(argc, argv);
  // Log lines are written by a thread: let them out before exiting (an
  // early exit's bad_configuration line is the one that matters most).
  svc::FlushLogs();
  return code;
}
