// The C++ counterpart of the seed's local.Client: completions from a local
// model through long-running Python sidecars.
//
//   llmbridge::rpc::Client client({WithBackend("ollama"),
//                                  WithModel("llama3.2:latest"),
//                                  WithSidecarPath("sidecar/sidecar.py")});
//   absl::StatusOr<CompleteResult> r = client.Complete(params);
//
// Behind it is a SidecarPool (sidecar_pool.h): supervised sidecars that
// start on the first request (or at once, with ClientOptions::preload),
// are health-probed, and are replaced when they exit or get stuck. If one
// exits, its calls in flight fail at once with UNAVAILABLE (naming the exit
// code or signal). Many calls run at once; a sidecar written only to the
// seed's text (no request_id on stream notifications) gets its streams one
// at a time, queued, so they are never misrouted.
//
// Threading: every method may be called from any thread. Stream, CallAsync
// and StreamHandle::Cancel never block; Complete, Call and EnsureStarted
// do. Handlers run on the sidecar's reader thread (or on a thread calling
// Cancel, a timer thread or a pool thread): they must be quick, must not
// block, and must not call Cancel on their own stream.
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
#include "rpc_bridge/reply.h"
#include "rpc_bridge/sidecar_pool.h"

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
  // Each text delta, in order (the handler may move from it).
  std::function<void(std::string& delta)> on_chunk;
  // Exactly once, last: the final result (usage, finish_reason, model) or
  // the error that ended the stream.
  Reply<CompleteResult> on_done;
  // With use_tools: each tool call and each tool result, in stream order.
  // Optional.
  std::function<void(const ToolEvent& event)> on_tool_event;
  // Put the whole text into on_done's result.content (it costs a copy of
  // every delta; the deltas themselves are always delivered).
  bool collect_content = true;
};

struct CallOptions {
  // The call ends with DEADLINE_EXCEEDED at this time (and the sidecar is
  // told to stop). Unset: now + the config's request timeout.
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

// Identifies a stream so that it can be cancelled. Cheap to copy.
class StreamHandle {
 public:
  StreamHandle() = default;
  // Asks the sidecar to stop the work and ends the stream with `why`:
  // on_done runs once, now or very soon, unless it already ran.
  void Cancel(const absl::Status& why) const { call_.Cancel(why); }

 private:
  friend class Client;
  explicit StreamHandle(PoolCallHandle call) : call_(std::move(call)) {}
  PoolCallHandle call_;
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

struct ClientOptions {
  // Called after each sidecar start (e.g. to count restarts), with the
  // number of starts so far. Runs on a pool thread.
  std::function<void(int starts)> on_sidecar_start;
  // The pool and its sidecars (see PoolOptions); pool.sidecar.config is the
  // client's config. The seed starts its sidecar on the first request, so
  // preload is off here; the queue waits up to the startup time and more.
  PoolOptions pool = DefaultPoolOptions();

  static PoolOptions DefaultPoolOptions() {
    PoolOptions pool;
    pool.preload = false;
    pool.max_queue = 1024;
    pool.queue_timeout = std::chrono::milliseconds(0);  // startup_timeout + 30 s
    return pool;
  }
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

  // Starts the sidecar unless it runs, and waits until it is ready (or
  // failed to start). Blocks up to the startup timeout.
  absl::Status EnsureStarted();

  // The whole answer; blocks until the result, the deadline, or an error.
  absl::StatusOr<CompleteResult> Complete(CompleteParams params,
                                          CallOptions call = {});

  // Starts a streamed completion; never blocks. on_done runs exactly once
  // (possibly before Stream returns, e.g. when the call is refused).
  StreamHandle Stream(CompleteParams params, StreamHandlers handlers,
                      CallOptions call = {});

  // The capabilities of the sidecar that started last, else the seed's.
  Capabilities GetCapabilities() const;

  // Any other method of the sidecar (e.g. "tools", "models"), starting it
  // if needed; blocks up to `timeout`.
  absl::StatusOr<Json> Call(const std::string& method, Json params,
                            std::chrono::milliseconds timeout);

  // The same without blocking: `on_reply` runs once, on a bridge thread
  // (or before this returns when the call is refused). With only_if_ready,
  // an idle or starting pool is not started (or waited for): the call fails
  // at once with FAILED_PRECONDITION. The handle cancels it, queued or sent.
  StreamHandle CallAsync(const std::string& method, Json params,
                 std::chrono::milliseconds timeout,
                 Reply<Json> on_reply, bool only_if_ready = false);

  // A unary call that costs the backend real work ("embed"): admitted like
  // a completion (it counts towards max_concurrent and max_queue and may be
  // refused with OVERLOADED), sent with the time left as "timeout_s", and
  // ended at call.deadline (default: now + the request timeout). Never
  // blocks: `on_reply` runs exactly once, on a bridge thread, or before this
  // returns when the call is refused. The handle cancels it.
  StreamHandle CallAdmitted(const std::string& method, Json params,
                            Reply<Json> on_reply,
                            CallOptions call = {});

  // The pool's published state: sidecars, load, health.
  PoolStatus Status() const { return pool_->Status(); }

  static std::string Provider() { return "local"; }

  // True while a sidecar is ready.
  bool IsRunning() const;
  // The pid of a ready sidecar, or -1.
  pid_t SidecarPid() const;
  // How many sidecars were started so far.
  int StartCount() const;

  // Stops the running sidecars and waits for new ones.
  absl::Status Restart();

  // Stops the sidecars (shutdown, then signals). Later requests restart
  // them.
  void Close();

  // Refuses every later call and stops the sidecars for good.
  void Shutdown() { pool_->Shutdown(); }

 private:
  class StartCounter;
  // A call that goes through admission control, sent with the time left as
  // "timeout_s" and ended at call.deadline (default: the request timeout).
  PoolCallRequest AdmittedRequest(const std::string& method, Json params,
                                  const CallOptions& call) const;
  PoolCallRequest CompleteRequest(CompleteParams params, bool stream,
                                  const CallOptions& call) const;

  const Config config_;
  const absl::Status config_status_;
  const ClientOptions options_;
  std::unique_ptr<StartCounter> start_counter_;
  std::unique_ptr<SidecarPool> pool_;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_CLIENT_H_
