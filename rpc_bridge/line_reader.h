// Splits a byte stream from a file descriptor into '\n'-terminated lines.
//
// Defensive by design: the sidecar is another process and may send anything.
// A line longer than the cap is discarded (reported as ResourceExhausted) and
// reading resumes at the next line, so one huge message cannot exhaust memory
// or kill the reader. Not thread-safe: one reader thread owns it.
#ifndef LLMBRIDGE_RPC_BRIDGE_LINE_READER_H_
#define LLMBRIDGE_RPC_BRIDGE_LINE_READER_H_

#include <cstddef>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace llmbridge::rpc {

inline constexpr size_t kDefaultMaxLineBytes = 16 * 1024 * 1024;

class LineReader {
 public:
  // Runs before each read(2), which happens only when no whole line is
  // buffered. A non-OK status ends Next() with that status instead of
  // reading: with poll(2) and a deadline it makes a read that cannot block
  // forever on a pipe another process holds open.
  using BeforeRead = std::function<absl::Status()>;

  // Does not take ownership of `fd`. Without `before_read` a read blocks.
  explicit LineReader(int fd, size_t max_line_bytes = kDefaultMaxLineBytes,
                      BeforeRead before_read = nullptr);

  // Blocks until a whole line is read; returns it without the '\n' (and
  // without a trailing '\r'). Errors:
  //   OutOfRange         end of stream (a partial last line is dropped);
  //   ResourceExhausted  the line exceeded the cap and was skipped;
  //   Internal           read(2) failed;
  //   whatever before_read returned, when it was not OK.
  absl::StatusOr<std::string> Next();

  // After Next() returned ResourceExhausted: the first bytes of the skipped
  // line, enough to find which call it belonged to.
  const std::string& overlong_prefix() const { return overlong_prefix_; }

 private:
  bool FillBuffer(absl::Status& error);

  int fd_;
  size_t max_line_bytes_;
  BeforeRead before_read_;
  std::string buffer_;
  size_t begin_ = 0;  // where the unread part of buffer_ starts
  bool discarding_ = false;  // inside an over-long line, skipping to '\n'
  std::string overlong_prefix_;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_LINE_READER_H_
