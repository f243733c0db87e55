// Log lines for stderr, written without ever blocking the caller.
//
// A log call on the request path must not wait for the log's reader: when
// stderr is a pipe that nobody drains (a stalled log shipper, a terminal
// on pause), a plain write(2) blocks once the pipe's 64 KiB are full, and
// with it the gRPC thread or the sidecar's stderr pump that logged. Here a
// bounded queue takes the line and one writer thread drains it. While the
// sink is stalled the queue fills; further lines are dropped and counted,
// and once the sink takes data again the writer reports how many were lost
// (event "log_lines_dropped").
//
// Threading: Write, Flush and the counters may be called from any thread.
#ifndef LLMBRIDGE_RPC_BRIDGE_ASYNC_STDERR_H_
#define LLMBRIDGE_RPC_BRIDGE_ASYNC_STDERR_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace llmbridge::rpc {

class AsyncLineWriter {
 public:
  struct Limits {
    // Queued and not yet written; past either bound lines are dropped.
    size_t max_queued_bytes = 4 * 1024 * 1024;
    size_t max_queued_lines = 16384;
    // Once a line arrives at an idle writer, it waits this long for more
    // before writing them in one write(2): a busy server logs two lines per
    // call, and waking the writer for each cost two thread hand-offs per
    // call. Flush, and a batch of batch_lines or 64 KiB, end the wait early.
    std::chrono::milliseconds linger{5};
    size_t batch_lines = 256;
  };

  // Writes to `fd` (not owned) from a thread of its own.
  explicit AsyncLineWriter(int fd, Limits limits);
  AsyncLineWriter(int fd) : AsyncLineWriter(fd, Limits()) {}
  // Writes what is queued for up to a second, then leaves the writer thread
  // to finish (or stay blocked on a stalled fd) on its own.
  ~AsyncLineWriter();

  AsyncLineWriter(const AsyncLineWriter&) = delete;
  AsyncLineWriter& operator=(const AsyncLineWriter&) = delete;

  // Queues `line` (a '\n' is added when missing). Never blocks; false when
  // the queue was full and the line was dropped.
  bool Write(std::string line);

  // Waits until everything queued so far was written, at most `timeout`.
  bool Flush(std::chrono::milliseconds timeout);

  uint64_t written_lines() const;
  uint64_t dropped_lines() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// The process's stderr writer (fd 2), created on first use and never
// destroyed, so that logging stays safe while the process exits.
AsyncLineWriter& StderrWriter();

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_ASYNC_STDERR_H_
