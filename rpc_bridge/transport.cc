#include "rpc_bridge/transport.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"

namespace llmbridge::rpc {
namespace {

class StdioTransport : public Transport {
 public:
  StdioTransport(int write_fd, int read_fd, MessageHandler* handler,
                 StdioTransportOptions options)
      : write_fd_(write_fd),
        read_fd_(read_fd),
        wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        handler_(handler),
        options_(std::move(options)) {
    // Non-blocking: Send writes what the pipe takes at once and leaves the
    // rest to the writer thread, so no caller ever waits on the sidecar.
    ::fcntl(write_fd_, F_SETFL, ::fcntl(write_fd_, F_GETFL) | O_NONBLOCK);
    // A sidecar that died makes write(2) raise SIGPIPE, which would kill the
    // whole server; EPIPE is handled instead.
    ::signal(SIGPIPE, SIG_IGN);
    reader_ = std::thread([this] { ReadLoop(); });
    writer_ = std::thread([this] { WriteLoop(); });
  }

  ~StdioTransport() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      CloseWriteFdLocked();
    }
    Wake();
    writer_.join();
    // The reader ends when the sidecar's stdout reaches EOF; the owner stops
    // the process before destroying the transport.
    if (reader_.joinable()) reader_.join();
    ::close(read_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  absl::Status Send(std::string_view line) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (write_fd_ < 0 || closing_) return closed_status_;
    if (pending_.size() - pending_begin_ + line.size() + 1 >
        options_.max_buffered_bytes) {
      return absl::UnavailableError(absl::StrCat(
          "the sidecar is not reading its input (",
          pending_.size() - pending_begin_, " bytes waiting)"));
    }
    const bool idle = pending_begin_ == pending_.size();
    if (idle) {
      pending_.clear();
      pending_begin_ = 0;
      // The stall clock starts when there is something to write, not when
      // the writer last looked: a line sent after a quiet minute has its
      // whole write_timeout to drain.
      last_progress_ = std::chrono::steady_clock::now();
    }
    pending_.append(line.data(), line.size());
    pending_.push_back('\n');
    if (idle) {
      // Nothing queued ahead of this line: write now, on this thread. A
      // non-blocking write returns at once; the writer thread takes the rest.
      if (!FlushLocked()) {
        Wake();  // the writer thread reports the failure
        return closed_status_;
      }
      if (pending_begin_ == pending_.size()) return absl::OkStatus();
      Wake();
    }
    return absl::OkStatus();
  }

  void CloseSend() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (write_fd_ < 0) return;
    if (pending_begin_ == pending_.size()) {
      CloseWriteFdLocked();
      return;
    }
    closing_ = true;  // the writer thread closes it once drained
    Wake();
  }

 private:
  void Wake() {
    uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
  }

  void CloseWriteFdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (write_fd_ >= 0) ::close(write_fd_);
    write_fd_ = -1;
    pending_.clear();
    pending_begin_ = 0;
  }

  // Writes as much of the buffer as the pipe takes now. False when the
  // pipe is broken (it is closed then, and closed_status_ says why).
  bool FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (pending_begin_ < pending_.size()) {
      ssize_t n = ::write(write_fd_, pending_.data() + pending_begin_,
                          pending_.size() - pending_begin_);
      if (n > 0) {
        pending_begin_ += static_cast<size_t>(n);
        last_progress_ = std::chrono::steady_clock::now();
        continue;
      }
      if (n == 0) continue;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      FailLocked(absl::UnavailableError(
          absl::StrCat("write to the sidecar failed: ", std::strerror(errno))));
      return false;
    }
    return true;
  }

  void FailLocked(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    closed_status_ = why;
    CloseWriteFdLocked();
    if (!failure_reported_) {
      failure_reported_ = true;
      failure_to_report_ = std::move(why);
    }
  }

  void WriteLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      const bool has_data =
          write_fd_ >= 0 && pending_begin_ < pending_.size();
      if (write_fd_ >= 0 && closing_ && !has_data) CloseWriteFdLocked();
      ReportFailure(lock);
      pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {-1, POLLOUT, 0}};
      int timeout_ms = -1;
      if (has_data) {
        fds[1].fd = write_fd_;
        auto left = options_.write_timeout -
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - last_progress_);
        timeout_ms = static_cast<int>(std::max<int64_t>(left.count(), 0));
      }
      lock.unlock();
      int ready = ::poll(fds, 2, timeout_ms);
      if (fds[0].revents & POLLIN) {
        uint64_t drained;
        (void)!::read(wake_fd_, &drained, sizeof(drained));
      }
      lock.lock();
      if (stopping_ || write_fd_ < 0) continue;
      if (pending_begin_ == pending_.size()) continue;
      if (ready == 0 && fds[1].fd >= 0) {
        FailLocked(absl::UnavailableError(absl::StrCat(
            "the sidecar has not read its input for ",
            options_.write_timeout.count(), " ms; it is stuck")));
        continue;
      }
      if (!FlushLocked()) continue;
      if (pending_begin_ == pending_.size()) {
        pending_.clear();
        pending_begin_ = 0;
      }
    }
  }

  // Runs on_send_failed outside the lock, once.
  void ReportFailure(std::unique_lock<std::mutex>& lock)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (failure_to_report_.ok()) return;
    absl::Status why = std::exchange(failure_to_report_, absl::OkStatus());
    if (!options_.on_send_failed) return;
    lock.unlock();
    options_.on_send_failed(why);
    lock.lock();
  }

  void ReadLoop() {
    LineReader reader(read_fd_, options_.max_line_bytes);
    while (true) {
      absl::StatusOr<std::string> line = reader.Next();
      if (absl::IsResourceExhausted(line.status())) {
        const std::string& prefix = reader.overlong_prefix();
        std::optional<int64_t> id = ScanIntegerField(prefix, "\"request_id\"");
        if (!id.has_value()) id = ScanIntegerField(prefix, "\"id\"");
        Guard("an over-long line", [&] {
          handler_->OnBadLine(line.status(), id, prefix);
        });
        continue;
      }
      if (!line.ok()) {
        Guard("the end of the stream",
              [&] { handler_->OnClosed(line.status()); });
        return;
      }
      if (line->empty()) continue;
      ParsedLine parsed = ParseLine(*line);
      if (!parsed.message.has_value()) {
        Guard("a malformed line", [&] {
          handler_->OnBadLine(absl::InternalError(parsed.problem),
                              parsed.call_id,
                              std::string_view(*line).substr(0, 200));
        });
        continue;
      }
      Guard("a message",
            [&] { handler_->OnMessage(*std::move(parsed.message)); });
    }
  }

  // The last line of defence: nothing a handler throws may escape the
  // reader thread (std::terminate would take every call with it).
  template <typename Fn>
  static void Guard(const char* what, Fn fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr,
                   "{\"level\":\"error\",\"event\":\"reader_exception\","
                   "\"while\":\"%s\",\"what\":\"%.200s\"}\n",
                   what, e.what());
    } catch (...) {
      std::fprintf(stderr,
                   "{\"level\":\"error\",\"event\":\"reader_exception\","
                   "\"while\":\"%s\"}\n",
                   what);
    }
  }

  std::mutex mu_;
  int write_fd_ ABSL_GUARDED_BY(mu_);
  std::string pending_ ABSL_GUARDED_BY(mu_);
  size_t pending_begin_ ABSL_GUARDED_BY(mu_) = 0;
  // When the sidecar last took bytes, or when bytes began to wait (the
  // buffer went from empty to not empty): a write is stuck once this is
  // write_timeout old with bytes still waiting.
  std::chrono::steady_clock::time_point last_progress_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool failure_reported_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_to_report_ ABSL_GUARDED_BY(mu_);
  absl::Status closed_status_ ABSL_GUARDED_BY(mu_) =
      absl::UnavailableError("the sidecar's stdin is closed");
  const int read_fd_;
  const int wake_fd_;
  MessageHandler* const handler_;
  const StdioTransportOptions options_;
  std::thread reader_;
  std::thread writer_;
};

}  // namespace

std::unique_ptr<Transport> MakeStdioTransport(int write_fd, int read_fd,
                                              MessageHandler* handler,
                                              StdioTransportOptions options) {
  return std::make_unique<StdioTransport>(write_fd, read_fd, handler,
                                          std::move(options));
}

}  // namespace llmbridge::rpc
