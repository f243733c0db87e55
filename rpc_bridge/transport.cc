#include "rpc_bridge/transport.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
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
        handler_(handler),
        write_timeout_(options.write_timeout) {
    // Non-blocking, so a sidecar that stops reading cannot hold a caller's
    // thread forever: Send waits with poll() up to the write timeout.
    ::fcntl(write_fd_, F_SETFL, ::fcntl(write_fd_, F_GETFL) | O_NONBLOCK);
    const size_t max_line_bytes = options.max_line_bytes;
    // A sidecar that died makes write(2) raise SIGPIPE, which would kill the
    // whole server; EPIPE is handled instead.
    ::signal(SIGPIPE, SIG_IGN);
    reader_ = std::thread([this, max_line_bytes] { ReadLoop(max_line_bytes); });
  }

  ~StdioTransport() override {
    CloseSend();
    // The reader ends when the sidecar's stdout reaches EOF; the owner stops
    // the process before destroying the transport.
    if (reader_.joinable()) reader_.join();
    ::close(read_fd_);
  }

  absl::Status Send(const std::string& line) override {
    std::string framed = line + "\n";
    std::lock_guard<std::mutex> lock(write_mu_);
    if (write_fd_ < 0) {
      return absl::UnavailableError("the sidecar's stdin is closed");
    }
    const char* p = framed.data();
    size_t left = framed.size();
    while (left > 0) {
      ssize_t n = ::write(write_fd_, p, left);
      if (n >= 0) {
        p += n;
        left -= static_cast<size_t>(n);
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        pollfd pfd{write_fd_, POLLOUT, 0};
        int ready = ::poll(&pfd, 1, static_cast<int>(write_timeout_.count()));
        if (ready > 0 || (ready < 0 && errno == EINTR)) continue;
        CloseSendLocked();
        return absl::UnavailableError(absl::StrCat(
            "the sidecar has not read its input for ",
            write_timeout_.count(), " ms; it is stuck and is being stopped"));
      }
      CloseSendLocked();
      return absl::UnavailableError(
          absl::StrCat("write to sidecar failed: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }

  void CloseSend() override {
    std::lock_guard<std::mutex> lock(write_mu_);
    CloseSendLocked();
  }

 private:
  void CloseSendLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_) {
    if (write_fd_ >= 0) ::close(write_fd_);
    write_fd_ = -1;
  }

  void ReadLoop(size_t max_line_bytes) {
    LineReader reader(read_fd_, max_line_bytes);
    while (true) {
      absl::StatusOr<std::string> line = reader.Next();
      if (absl::IsResourceExhausted(line.status())) {
        handler_->OnBadLine(line.status(), reader.overlong_prefix());
        continue;
      }
      if (!line.ok()) {
        handler_->OnClosed(line.status());
        return;
      }
      if (line->empty()) continue;
      absl::StatusOr<IncomingMessage> message = ParseIncoming(*line);
      if (!message.ok()) {
        handler_->OnBadLine(message.status(),
                            std::string_view(*line).substr(0, 200));
        continue;
      }
      handler_->OnMessage(*std::move(message));
    }
  }

  std::mutex write_mu_;
  int write_fd_ ABSL_GUARDED_BY(write_mu_);
  const int read_fd_;
  MessageHandler* const handler_;
  const std::chrono::milliseconds write_timeout_;
  std::thread reader_;
};

}  // namespace

std::unique_ptr<Transport> MakeStdioTransport(int write_fd, int read_fd,
                                              MessageHandler* handler,
                                              StdioTransportOptions options) {
  return std::make_unique<StdioTransport>(write_fd, read_fd, handler, options);
}

}  // namespace llmbridge::rpc
