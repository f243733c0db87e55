// The byte-level link to the sidecar, split by direction:
//   * Transport sends one encoded message per line (any thread);
//   * MessageHandler receives decoded messages (the reader thread).
// The stdio implementation lives behind MakeStdioTransport; tests can drive a
// MessageHandler directly without any process.
#ifndef LLMBRIDGE_RPC_BRIDGE_TRANSPORT_H_
#define LLMBRIDGE_RPC_BRIDGE_TRANSPORT_H_

#include <chrono>
#include <cstddef>
#include <string_view>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "rpc_bridge/line_reader.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::rpc {

// Receives what the sidecar sends. All calls come from one reader thread, in
// the order the sidecar wrote them. OnClosed is called exactly once, last.
class MessageHandler {
 public:
  virtual ~MessageHandler() = default;
  virtual void OnMessage(IncomingMessage message) = 0;
  // A line that could not be used (bad JSON, over the size cap), with its
  // first bytes. The reader keeps going: one bad line must not take every
  // call down.
  virtual void OnBadLine(const absl::Status& why,
                         std::string_view line_start) = 0;
  // The sidecar's stdout ended (it exited or closed it) or reading failed.
  virtual void OnClosed(const absl::Status& why) = 0;
};

// Sends to the sidecar. May be called from any thread: writes are serialised,
// so lines from concurrent callers never interleave.
class Transport {
 public:
  virtual ~Transport() = default;
  // Writes `line` plus '\n'. Fails with Unavailable once the pipe is broken,
  // or when the sidecar has not read its input for the write timeout: the
  // pipe is then closed, since a half-written line cannot be taken back.
  virtual absl::Status Send(const std::string& line) = 0;
  // Closes the sending side (the sidecar sees EOF on stdin). Idempotent.
  virtual void CloseSend() = 0;
};

// Takes ownership of both fds. Starts a reader thread that feeds `handler`
// until end of stream; the destructor closes the fds and joins it, so the
// handler must outlive the transport.
struct StdioTransportOptions {
  size_t max_line_bytes = kDefaultMaxLineBytes;
  // A write that makes no progress for this long fails (see Send).
  std::chrono::milliseconds write_timeout{10000};
};

std::unique_ptr<Transport> MakeStdioTransport(
    int write_fd, int read_fd, MessageHandler* handler,
    StdioTransportOptions options = {});

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_TRANSPORT_H_
