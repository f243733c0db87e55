// One running sidecar process: the child, its stdio transport, the
// dispatcher of its messages, and the init handshake.
//
// A Sidecar is owned by whoever supervises it (SidecarPool's keeper
// threads, or a caller of the blocking Start): only the owner spawns, stops
// and destroys it. Requests use dispatcher(), which never blocks.
//
// Threading: every method may be called from any thread, except Stop and
// the destructor, which block (up to the stop sequence) and belong to the
// owner. The events run on the sidecar's reader or writer thread: they must
// be quick and must not destroy the Sidecar.
#ifndef LLMBRIDGE_RPC_BRIDGE_SIDECAR_H_
#define LLMBRIDGE_RPC_BRIDGE_SIDECAR_H_

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/dispatcher.h"
#include "rpc_bridge/protocol.h"
#include "rpc_bridge/subprocess.h"
#include "rpc_bridge/transport.h"

namespace llmbridge::rpc {

struct SidecarOptions {
  Config config;  // with defaults applied and validated
  size_t max_line_bytes = kDefaultMaxLineBytes;
  // A sidecar that takes none of its input this long while a message waits
  // is stuck (on_stalled runs).
  std::chrono::milliseconds write_timeout{10000};
  // How long Stop waits after the shutdown request and after each signal.
  std::chrono::milliseconds stop_grace{5000};
  // Quote the sidecar's last stderr lines in the status of calls that fail
  // because it exited. Handy for library users; a server keeps them in its
  // own log instead (remote clients must not see internals).
  bool stderr_in_errors = true;
  // Extra init options (merged over what the config implies).
  Json init_options = Json::object();
  // Each line the sidecar writes to stderr; default: copied to our stderr
  // with a "[sidecar] " prefix. Runs on the sidecar's stderr thread.
  std::function<void(std::string_view line)> on_stderr_line;
};

struct SidecarEvents {
  // The sidecar's stdout closed (it exited, or closed it); its pending calls
  // fail right after this returns. Reader thread, once.
  std::function<void()> on_closed;
  // Writing to it stalled past write_timeout or failed (its stdin is
  // closed now). Writer thread, once.
  std::function<void(const absl::Status&)> on_stalled;
  // A line it sent was not a usable message. Reader thread.
  std::function<void(const absl::Status&, std::string_view)> on_bad_line;
};

class Sidecar {
 public:
  // Starts `python sidecar_path` with its stdio transport. Fails with
  // UNAVAILABLE (reason SIDECAR_UNAVAILABLE) when the process cannot start.
  static absl::StatusOr<std::unique_ptr<Sidecar>> Spawn(SidecarOptions options,
                                                        SidecarEvents events = {});

  // Spawn, then the init handshake within the startup timeout: blocking.
  // Errors: the init error mapped to a status (e.g. NOT_FOUND for a missing
  // model), or UNAVAILABLE when the process fails to start, exits, or is not
  // ready in time.
  static absl::StatusOr<std::unique_ptr<Sidecar>> Start(SidecarOptions options);

  // Sends init. `done` runs once, on the reader thread (or before SendInit
  // returns if it cannot be sent), with the outcome of the handshake;
  // init_result() is valid after an OK outcome. `done` must not destroy
  // the Sidecar.
  void SendInit(std::function<void(absl::Status)> done);

  // Stops the process (Stop()) if still running.
  ~Sidecar();

  Sidecar(const Sidecar&) = delete;
  Sidecar& operator=(const Sidecar&) = delete;

  Dispatcher& dispatcher() { return dispatcher_; }
  // Valid once SendInit's `done` ran with OK (or Start returned).
  const InitResult& init_result() const { return init_result_; }

  // True until the sidecar's output closes.
  bool IsRunning() const { return !dispatcher_.closed(); }

  // How the process ended; nullopt while it runs.
  std::optional<ExitInfo> ExitError();

  // Blocks until the process exits or `timeout` passes (the seed's Done).
  std::optional<ExitInfo> WaitForExit(std::chrono::milliseconds timeout);

  pid_t pid() const { return process_->pid(); }

  // Its last stderr lines, oldest first.
  std::string StderrTail() const { return process_->StderrTail(); }

  // SIGKILL now: for a sidecar that is stuck. Its pending calls fail when
  // its stdout closes.
  void Kill();

  // Polite first: shutdown request, close stdin, wait; then SIGTERM, wait;
  // then SIGKILL. Idempotent. Returns how the process ended.
  ExitInfo Stop();

 private:
  Sidecar(SidecarOptions options, SidecarEvents events);
  absl::Status DescribeClose(const absl::Status& why);
  absl::Status AcceptInitReply(absl::StatusOr<Json> reply);

  SidecarOptions options_;
  SidecarEvents events_;
  Dispatcher dispatcher_;
  std::unique_ptr<Subprocess> process_;
  std::unique_ptr<Transport> transport_;
  InitResult init_result_;
  std::mutex stop_mu_;  // one Stop at a time
};

// Sends one request and blocks until its reply or `timeout`; on timeout the
// request is cancelled and DEADLINE_EXCEEDED returned. For owners and tests:
// the request path never blocks.
absl::StatusOr<Json> CallAndWait(Dispatcher& dispatcher,
                                 const std::string& method, Json params,
                                 std::chrono::milliseconds timeout);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_SIDECAR_H_
