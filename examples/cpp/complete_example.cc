// Using the rpc_bridge C++ library directly, without the gRPC server: start a
// sidecar, stream one completion, cancel nothing, print the usage.
//
//   bazel run //examples/cpp:complete_example -- \
//     --python=$PWD/.venv/bin/python --sidecar=$PWD/sidecar/sidecar.py \
//     --backend=ollama --model=llama3.2:latest "Why is the sky blue?"
//
// With --backend=gguf and no --model it runs the bundled SmolLM2 model.
#include <cstdio>
#include <future>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "rpc_bridge/client.h"

ABSL_FLAG(std::string, backend, "gguf", "gguf, ollama, llama.cpp, vllm, transformers");
ABSL_FLAG(std::string, model, "", "model for the backend (empty: its default)");
ABSL_FLAG(std::string, host, "", "host:port of an HTTP backend");
ABSL_FLAG(std::string, python, ".venv/bin/python", "Python with the sidecar's dependencies");
ABSL_FLAG(std::string, sidecar, "sidecar/sidecar.py", "the sidecar's entry script");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("complete_example [flags] PROMPT...");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  std::string prompt = args.size() > 1
                           ? absl::StrJoin(args.begin() + 1, args.end(), " ")
                           : "Name three colors.";

  using namespace llmbridge::rpc;
  // Options in the seed's style; nothing starts until the first request.
  Client client({WithBackend(absl::GetFlag(FLAGS_backend)),
                 WithModel(absl::GetFlag(FLAGS_model)),
                 WithHost(absl::GetFlag(FLAGS_host)),
                 WithPythonPath(absl::GetFlag(FLAGS_python)),
                 WithSidecarPath(absl::GetFlag(FLAGS_sidecar))});

  CompleteParams params;
  params.messages = {{"user", prompt, ""}};
  params.max_tokens = 64;

  // Handlers run on the bridge's reader thread: keep them short.
  std::promise<absl::StatusOr<CompleteResult>> finished;
  StreamHandlers handlers;
  handlers.on_chunk = [](const std::string& delta) {
    std::fwrite(delta.data(), 1, delta.size(), stdout);
    std::fflush(stdout);
  };
  handlers.on_done = [&finished](absl::StatusOr<CompleteResult> result) {
    finished.set_value(std::move(result));
  };
  // Never blocks: the sidecar starts (or the call is refused) in the
  // background, and on_done reports the outcome either way.
  StreamHandle stream = client.Stream(params, std::move(handlers));
  // stream.Cancel(absl::CancelledError("...")) would stop it early.
  absl::StatusOr<CompleteResult> result = finished.get_future().get();
  if (!result.ok()) {
    std::fprintf(stderr, "\nerror: %s\n", result.status().ToString().c_str());
    return 1;
  }
  std::printf("\n[%s] finish_reason=%s input_tokens=%d output_tokens=%d\n",
              result->model.c_str(), result->finish_reason.c_str(),
              result->usage.input_tokens, result->usage.output_tokens);
  client.Close();  // shutdown request to the sidecar, then it exits
  return 0;
}
