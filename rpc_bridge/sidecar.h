// One running sidecar process: the child, its stdio transport, the
// dispatcher of its messages, and the init handshake.
//
// Threading: every method may be called from any thread.
#ifndef LLMBRIDGE_RPC_BRIDGE_SIDECAR_H_
#define LLMBRIDGE_RPC_BRIDGE_SIDECAR_H_

#include <chrono>
#include <memory>
#include <optional>

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
  // A write to the sidecar that makes no progress this long fails.
  std::chrono::milliseconds write_timeout{10000};
  // How long Stop waits after the shutdown request and after each signal.
  std::chrono::milliseconds stop_grace{5000};
};

class Sidecar {
 public:
  // Spawns `python sidecar_path` and completes the init handshake within the
  // startup timeout. Errors: the init error mapped to a status (e.g.
  // NOT_FOUND for a missing model), or UNAVAILABLE when the process fails to
  // start, exits, or is not ready in time (the message quotes its stderr).
  static absl::StatusOr<std::unique_ptr<Sidecar>> Start(SidecarOptions options);

  // Stops the process (Stop()) if still running.
  ~Sidecar();

  Sidecar(const Sidecar&) = delete;
  Sidecar& operator=(const Sidecar&) = delete;

  Dispatcher& dispatcher() { return dispatcher_; }
  const InitResult& init_result() const { return init_result_; }

  // True until the sidecar's output closes.
  bool IsRunning() const { return !dispatcher_.closed(); }

  // How the process ended; nullopt while it runs.
  std::optional<ExitInfo> ExitError();

  // Blocks until the process exits or `timeout` passes (the seed's Done).
  std::optional<ExitInfo> WaitForExit(std::chrono::milliseconds timeout);

  pid_t pid() const { return process_->pid(); }

  // Polite first: shutdown request, close stdin, wait; then SIGTERM, wait;
  // then SIGKILL. Idempotent. Returns how the process ended.
  ExitInfo Stop();

 private:
  explicit Sidecar(SidecarOptions options);
  absl::Status DescribeClose(const absl::Status& why);
  absl::Status Handshake();

  SidecarOptions options_;
  Dispatcher dispatcher_;
  std::unique_ptr<Subprocess> process_;
  std::unique_ptr<Transport> transport_;
  InitResult init_result_;
};

// Sends one request and blocks until its reply or `timeout`; on timeout the
// request is cancelled and DEADLINE_EXCEEDED returned.
absl::StatusOr<Json> CallAndWait(Dispatcher& dispatcher,
                                 const std::string& method, Json params,
                                 std::chrono::milliseconds timeout);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_SIDECAR_H_
