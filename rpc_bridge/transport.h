// The byte-level link to the sidecar, split by direction:
//   * Transport sends one encoded message per line (any thread);
//   * MessageHandler receives decoded messages (the reader thread).
// The stdio implementation lives behind MakeStdioTransport; tests can drive a
// MessageHandler directly without any process.
#ifndef LLMBRIDGE_RPC_BRIDGE_TRANSPORT_H_
#define LLMBRIDGE_RPC_BRIDGE_TRANSPORT_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "rpc_bridge/line_reader.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::rpc {

// Receives what the sidecar sends. All calls come from one reader thread, in
// the order the sidecar wrote them. OnClosed is called exactly once, last.
// The reader catches anything a handler throws (and logs it): one bad
// message costs that message, never the process.
class MessageHandler {
 public:
  virtual ~MessageHandler() = default;
  virtual void OnMessage(IncomingMessage message) = 0;
  // A line that could not be used: not a valid message (Internal, with what
  // was wrong), or over the size cap (ResourceExhausted). `call_id` is the
  // call the line names, when that can still be read from it; `line_start`
  // its first bytes. The reader keeps going.
  virtual void OnBadLine(const absl::Status& why,
                         std::optional<int64_t> call_id,
                         std::string_view line_start) = 0;
  // The sidecar's stdout ended (it exited or closed it) or reading failed.
  virtual void OnClosed(const absl::Status& why) = 0;
};

// Sends to the sidecar. May be called from any thread and never blocks:
// what the pipe cannot take at once is buffered and written by the
// transport's writer thread, in order, so lines never interleave.
class Transport {
 public:
  virtual ~Transport() = default;
  // Queues `line` plus '\n'. Fails with Unavailable once the pipe is closed
  // or broken (including after a stall, see StdioTransportOptions).
  virtual absl::Status Send(std::string_view line) = 0;
  // Closes the sending side once what is buffered has been written (the
  // sidecar then sees EOF on stdin). Idempotent.
  virtual void CloseSend() = 0;
};

// Takes ownership of both fds. Starts a reader thread that feeds `handler`
// until end of stream, and a writer thread for what Send could not write at
// once; the destructor closes the fds and joins both, so the handler must
// outlive the transport.
struct StdioTransportOptions {
  size_t max_line_bytes = kDefaultMaxLineBytes;
  // A sidecar that takes no bytes of its input for this long while we have
  // some to write is stuck: its stdin is closed and on_send_stalled runs.
  std::chrono::milliseconds write_timeout{10000};
  // Runs once on the writer thread when a write stalled or failed (EPIPE).
  // Optional.
  std::function<void(const absl::Status&)> on_send_failed;
  // Buffered bytes beyond this make Send fail (a sidecar that reads nothing
  // must not grow our memory until the stall is noticed).
  size_t max_buffered_bytes = 64 * 1024 * 1024;
};

std::unique_ptr<Transport> MakeStdioTransport(
    int write_fd, int read_fd, MessageHandler* handler,
    StdioTransportOptions options = {});

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_TRANSPORT_H_
