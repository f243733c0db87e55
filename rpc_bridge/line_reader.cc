#include "rpc_bridge/line_reader.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace llmbridge::rpc {

namespace {
constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kPrefixBytes = 512;
}

LineReader::LineReader(int fd, size_t max_line_bytes, BeforeRead before_read)
    : fd_(fd),
      max_line_bytes_(max_line_bytes),
      before_read_(std::move(before_read)) {}

bool LineReader::FillBuffer(absl::Status& error) {
  char chunk[kReadChunk];
  while (true) {
    if (before_read_) {
      absl::Status ready = before_read_();
      if (!ready.ok()) {
        error = std::move(ready);
        return false;
      }
    }
    ssize_t n = ::read(fd_, chunk, sizeof(chunk));
    if (n > 0) {
      buffer_.append(chunk, static_cast<size_t>(n));
      return true;
    }
    if (n == 0) {
      error = absl::OutOfRangeError("end of stream");
      return false;
    }
    if (errno == EINTR) continue;  // a signal is no reason to stop reading
    error = absl::InternalError(
        absl::StrCat("read from sidecar failed: ", std::strerror(errno)));
    return false;
  }
}

absl::StatusOr<std::string> LineReader::Next() {
  size_t scanned = begin_;
  while (true) {
    size_t newline = buffer_.find('\n', scanned);
    if (newline != std::string::npos) {
      const size_t start = begin_;
      const size_t length = newline - start;
      begin_ = newline + 1;
      if (discarding_) {
        // The tail of an over-long line: drop it and report once.
        discarding_ = false;
        return absl::ResourceExhaustedError(absl::StrCat(
            "sidecar sent a line longer than ", max_line_bytes_, " bytes"));
      }
      if (length > max_line_bytes_) {
        overlong_prefix_ = buffer_.substr(start, kPrefixBytes);
        return absl::ResourceExhaustedError(absl::StrCat(
            "sidecar sent a line longer than ", max_line_bytes_, " bytes"));
      }
      std::string line = buffer_.substr(start, length);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      return line;
    }
    // No whole line left: drop what was consumed, once per read (erasing
    // after every line would move the buffer once per line).
    buffer_.erase(0, begin_);
    begin_ = 0;
    if (buffer_.size() > max_line_bytes_) {
      // Keep memory bounded: forget what we have of this line.
      if (!discarding_) overlong_prefix_ = buffer_.substr(0, kPrefixBytes);
      buffer_.clear();
      discarding_ = true;
    }
    scanned = buffer_.size();
    absl::Status error;
    if (!FillBuffer(error)) return error;
  }
}

}  // namespace llmbridge::rpc
