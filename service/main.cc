// llmbridge: serves local LLMs over gRPC (llmbridge.v1.LocalLLM).
//
// The server forwards each call to a long-running Python sidecar over
// JSON-RPC on stdio; see README.md.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "rpc_bridge/client.h"
#include "rpc_bridge/config.h"
#include "service/local_llm_service.h"
#include "service/sidecar_locator.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to serve gRPC on. Loopback by default; use 0.0.0.0:50051 "
          "to accept remote clients (there is no authentication yet).");
ABSL_FLAG(std::string, backend, "gguf",
          "Model backend: gguf (embedded llama.cpp, default), ollama, "
          "llama.cpp, vllm or transformers.");
ABSL_FLAG(std::string, model, "",
          "Default model, used when a request leaves 'model' empty. gguf: a "
          ".gguf file path, empty for the bundled SmolLM2-135M-Instruct; "
          "ollama: a model name such as llama3.2:latest.");
ABSL_FLAG(std::string, host, "",
          "host:port of an HTTP backend. Empty: localhost:11434 for ollama, "
          "localhost:8000 for llama.cpp and vllm.");
ABSL_FLAG(std::string, python, "python3",
          "Python interpreter that runs the sidecar; it must have the "
          "sidecar's dependencies (scripts/run uses .venv/bin/python).");
ABSL_FLAG(std::string, sidecar, "",
          "Path of the sidecar entry script. Empty: the sidecar shipped with "
          "this binary (sidecar/sidecar.py).");
ABSL_FLAG(absl::Duration, startup_timeout, absl::Seconds(30),
          "How long the sidecar may take to start and load the model.");
ABSL_FLAG(absl::Duration, request_timeout, absl::Minutes(5),
          "Default time limit of a completion request.");

namespace {

constexpr char kServiceName[] = "llmbridge.v1.LocalLLM";

std::chrono::milliseconds ToMillis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

int Run() {
  llmbridge::rpc::Config config;
  config.backend = absl::GetFlag(FLAGS_backend);
  config.model = absl::GetFlag(FLAGS_model);
  config.host = absl::GetFlag(FLAGS_host);
  config.python_path = absl::GetFlag(FLAGS_python);
  config.sidecar_path = absl::GetFlag(FLAGS_sidecar);
  if (config.sidecar_path.empty()) {
    config.sidecar_path = llmbridge::service::ShippedSidecarPath();
  }
  config.startup_timeout = ToMillis(absl::GetFlag(FLAGS_startup_timeout));
  config.request_timeout = ToMillis(absl::GetFlag(FLAGS_request_timeout));
  config = llmbridge::rpc::WithDefaults(config);
  if (absl::Status valid = llmbridge::rpc::Validate(config); !valid.ok()) {
    std::fprintf(stderr, "llmbridge: bad configuration: %s\n",
                 std::string(valid.message()).c_str());
    return 2;
  }

  // SIGINT/SIGTERM are handled by one thread (sigwait), so every other
  // thread, gRPC's included, must block them: block before any starts.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  llmbridge::rpc::Client client(config);
  llmbridge::service::LocalLLMService service(&client);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr,
                 "llmbridge: cannot listen on %s (address in use or invalid; "
                 "choose another with --listen)\n",
                 listen.c_str());
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  server->GetHealthCheckService()->SetServingStatus("", true);
  std::fprintf(stderr,
               "llmbridge: serving %s on %s (port %d), backend %s, model "
               "'%s', sidecar %s\n",
               kServiceName, listen.c_str(), port, config.backend.c_str(),
               config.model.c_str(), config.sidecar_path.c_str());

  std::thread stopper([&] {
    int signo = 0;
    sigwait(&stop_signals, &signo);
    std::fprintf(stderr, "llmbridge: received signal %d, shutting down\n",
                 signo);
    server->GetHealthCheckService()->Shutdown();
    server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
  });
  server->Wait();
  stopper.join();
  client.Close();
  std::fprintf(stderr, "llmbridge: stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "llmbridge: serve a local LLM over gRPC (llmbridge.v1.LocalLLM).\n\n"
      "  llmbridge --backend=gguf                 # bundled SmolLM2 model\n"
      "  llmbridge --backend=ollama --model=llama3.2:latest\n\n"
      "Call it with: grpcurl -plaintext -d "
      "'{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}' "
      "127.0.0.1:50051 llmbridge.v1.LocalLLM/Complete");
  absl::ParseCommandLine(argc, argv);
  return Run();
}
