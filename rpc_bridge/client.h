// The C++ counterpart of the seed's local.Client: completions from a local
// model through a long-running Python sidecar.
//
// The sidecar starts lazily on the first request and is kept running; if it
// has exited, the next request starts a new one. Many calls may be in flight
// at once over the one sidecar.
//
// Threading: every method may be called from any thread. Stream handlers run
// on the sidecar's reader thread: they must be quick and must not block.
#ifndef LLMBRIDGE_RPC_BRIDGE_CLIENT_H_
#define LLMBRIDGE_RPC_BRIDGE_CLIENT_H_

#include <cstdint>
#include <functional>
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
};

// Identifies a running stream so that it can be cancelled.
class StreamHandle {
 public:
  StreamHandle() = default;
  // Asks the sidecar to stop the work and ends the stream at once with
  // `why` (on_done runs before Cancel returns, unless it already ran).
  void Cancel(const absl::Status& why) const;

 private:
  friend class Client;
  StreamHandle(std::weak_ptr<Sidecar> sidecar, int64_t id)
      : sidecar_(std::move(sidecar)), id_(id) {}
  std::weak_ptr<Sidecar> sidecar_;
  int64_t id_ = 0;
};

class Client {
 public:
  // `config` gets WithDefaults; nothing starts until the first request.
  explicit Client(Config config);
  ~Client();  // Close()

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const Config& config() const { return config_; }

  // Starts the sidecar now unless it is running. Requests call this.
  absl::Status EnsureStarted();

  // The whole answer; blocks up to the request timeout.
  absl::StatusOr<CompleteResult> Complete(CompleteParams params);

  // Starts a streamed completion. On error nothing was started and no
  // handler runs.
  absl::StatusOr<StreamHandle> Stream(CompleteParams params,
                                      StreamHandlers handlers);

  // The running sidecar's capabilities, else the seed's.
  Capabilities GetCapabilities() const;

  static std::string Provider() { return "local"; }

  // Stops the sidecar (shutdown, then signals). Later requests restart it.
  void Close();

 private:
  absl::StatusOr<std::shared_ptr<Sidecar>> Running();

  const Config config_;
  mutable std::mutex mu_;
  std::shared_ptr<Sidecar> sidecar_ ABSL_GUARDED_BY(mu_);
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_CLIENT_H_
