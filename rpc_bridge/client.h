// The C++ counterpart of the seed's local.Client: completions from a local
// model through a long-running Python sidecar.
//
//   llmbridge::rpc::Client client({WithBackend("ollama"),
//                                  WithModel("llama3.2:latest"),
//                                  WithSidecarPath("sidecar/sidecar.py")});
//   absl::StatusOr<CompleteResult> r = client.Complete(params);
//
// The sidecar starts lazily on the first request and is kept running. If it
// exits, calls in flight fail at once with UNAVAILABLE (naming the exit and
// quoting its stderr) and the next request starts a new one; repeated quick
// crashes back off. Many calls run at once over the one sidecar; a sidecar
// written only to the seed's text (no request_id on stream notifications)
// gets its streams one at a time, queued, so they are never misrouted.
//
// Threading: every method may be called from any thread. Stream handlers run
// on the sidecar's reader thread (or on a thread calling Cancel, or on the
// deadline thread): they must be quick, must not block, and must not call
// Cancel on their own stream.
#ifndef LLMBRIDGE_RPC_BRIDGE_CLIENT_H_
#define LLMBRIDGE_RPC_BRIDGE_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/protocol.h"
#include "rpc_bridge/sidecar.h"

namespace llmbridge::rpc {

// The seed's provider capabilities.
struct Capabilities {
  bool streaming = true;
  bool tools = false;
  bool mcp = true;
  bool sessions = false;
  bool images = false;
  std::vector<std::string> native_tools;
};

struct StreamHandlers {
  // Each text delta, in order.
  std::function<void(const std::string& delta)> on_chunk;
  // Exactly once, last: the final result (usage, finish_reason, model) or
  // the error that ended the stream.
  std::function<void(absl::StatusOr<CompleteResult>)> on_done;
  // With use_tools: each tool call and each tool result, in stream order.
  // Optional.
  std::function<void(const ToolEvent& event)> on_tool_event;
};

struct CallOptions {
  // The call ends with DEADLINE_EXCEEDED at this time (and the sidecar is
  // told to stop). Unset: now + the config's request timeout.
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

class StreamCall;  // internal state of one stream
class Scheduler;   // internal deadline timer

// Identifies a stream so that it can be cancelled. Cheap to copy.
class StreamHandle {
 public:
  StreamHandle() = default;
  // Asks the sidecar to stop the work and ends the stream at once with
  // `why`: on_done runs before Cancel returns, unless it already ran.
  void Cancel(const absl::Status& why) const;

 private:
  friend class Client;
  explicit StreamHandle(std::shared_ptr<StreamCall> call)
      : call_(std::move(call)) {}
  std::shared_ptr<StreamCall> call_;
};

// Functional options, as the seed's WithBackend, WithHost, ...
using Option = std::function<void(Config&)>;
Option WithBackend(std::string backend);
Option WithHost(std::string host);
Option WithModel(std::string model);
Option WithPythonPath(std::string path);
Option WithSidecarPath(std::string path);
Option WithStartupTimeout(std::chrono::milliseconds timeout);
Option WithRequestTimeout(std::chrono::milliseconds timeout);
Option WithWorkDir(std::string dir);
Option WithEnv(std::map<std::string, std::string> env);
Option WithMCPServers(std::map<std::string, MCPServerConfig> servers);

// Restart policy after the sidecar exits or fails to start.
struct RestartPolicy {
  // A sidecar that ends within this time of starting counts as a quick
  // failure; a longer run resets the count.
  std::chrono::milliseconds quick_failure{10000};
  // After each quick failure, the next start waits this long, doubling.
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  // This many quick failures in a row: requests fail at once with a clear
  // error until the cool-down passes.
  int max_quick_failures = 5;
  std::chrono::milliseconds cool_down{30000};
};

struct ClientOptions {
  // Called after each sidecar start (e.g. to count restarts), with the
  // number of starts so far. Runs on the requesting thread.
  std::function<void(int starts)> on_sidecar_start;
  size_t max_line_bytes = kDefaultMaxLineBytes;
  std::chrono::milliseconds write_timeout{10000};
  std::chrono::milliseconds stop_grace{5000};
  RestartPolicy restart;
};

class Client {
 public:
  // `config` gets WithDefaults; nothing starts until the first request.
  explicit Client(Config config, ClientOptions options = {});
  explicit Client(std::initializer_list<Option> options);
  ~Client();  // Close()

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const Config& config() const { return config_; }

  // Starts the sidecar now unless it is running. Requests call this.
  absl::Status EnsureStarted();

  // The whole answer; blocks until the result, the deadline, or an error.
  absl::StatusOr<CompleteResult> Complete(CompleteParams params,
                                          CallOptions call = {});

  // Starts a streamed completion. On error nothing was started and no
  // handler runs.
  absl::StatusOr<StreamHandle> Stream(CompleteParams params,
                                      StreamHandlers handlers,
                                      CallOptions call = {});

  // The running sidecar's capabilities, else the seed's.
  Capabilities GetCapabilities() const;

  // Any other method of the sidecar (e.g. "health", "models"), starting it
  // if needed; blocks up to `timeout`.
  absl::StatusOr<Json> Call(const std::string& method, Json params,
                            std::chrono::milliseconds timeout);

  static std::string Provider() { return "local"; }

  // True while a sidecar is running.
  bool IsRunning() const;
  // The running sidecar's pid, or -1.
  pid_t SidecarPid() const;
  // How many sidecars were started so far.
  int StartCount() const;

  // Stops the running sidecar and starts a new one.
  absl::Status Restart();

  // Stops the sidecar (shutdown, then signals). Later requests restart it.
  void Close();

 private:
  absl::StatusOr<std::shared_ptr<Sidecar>> Running();
  // Counts a failed start or an exit, and sets when the next start may run.
  void RecordFailureLocked(absl::Status why, bool quick)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartQueued(std::shared_ptr<StreamCall> call);
  void OnLegacyStreamDone();

  const Config config_;
  const ClientOptions options_;
  std::unique_ptr<Scheduler> scheduler_;

  mutable std::mutex mu_;
  std::shared_ptr<Sidecar> sidecar_ ABSL_GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point started_at_ ABSL_GUARDED_BY(mu_);
  int starts_ ABSL_GUARDED_BY(mu_) = 0;
  int quick_failures_ ABSL_GUARDED_BY(mu_) = 0;
  std::chrono::steady_clock::time_point next_start_ ABSL_GUARDED_BY(mu_);
  absl::Status last_failure_ ABSL_GUARDED_BY(mu_);
  // Seed-style sidecars: one stream at a time, the rest wait here.
  bool legacy_stream_active_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::shared_ptr<StreamCall>> legacy_queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_CLIENT_H_
