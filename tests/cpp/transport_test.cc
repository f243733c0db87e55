// The stdio transport over real pipes: the writer's stall clock. A sidecar
// that reads its input, however large a line is and however long the link
// was quiet before it, is never judged stuck; one that stops reading is.
#include "rpc_bridge/transport.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// Only bounds a broken test: nothing waits this long when the code works.
constexpr milliseconds kWait = std::chrono::seconds(30);

class NullHandler : public MessageHandler {
 public:
  void OnMessage(IncomingMessage) override {}
  void OnBadLine(const absl::Status&, std::optional<int64_t>,
                 std::string_view) override {}
  void OnClosed(const absl::Status&) override {}
};

// The sidecar's side of the two pipes, and the transport on ours.
class Link {
 public:
  explicit Link(milliseconds write_timeout) {
    int to_sidecar[2], from_sidecar[2];
    EXPECT_EQ(::pipe2(to_sidecar, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(from_sidecar, O_CLOEXEC), 0);
    sidecar_stdin_ = to_sidecar[0];
    sidecar_stdout_ = from_sidecar[1];
    StdioTransportOptions options;
    options.write_timeout = write_timeout;
    options.on_send_failed = [this](const absl::Status& why) {
      std::lock_guard<std::mutex> lock(mu_);
      failure_ = why;
      cv_.notify_all();
    };
    transport_ = MakeStdioTransport(to_sidecar[1], from_sidecar[0], &handler_,
                                    std::move(options));
  }
  ~Link() {
    ::close(sidecar_stdout_);  // the reader thread ends at EOF
    transport_.reset();
    ::close(sidecar_stdin_);
  }

  Transport& transport() { return *transport_; }

  // Reads `bytes` (or up to EOF) in reads of at most `step`, pausing `pause`
  // after each: a sidecar that is slow but keeps reading.
  std::string Read(size_t bytes, size_t step, milliseconds pause) {
    std::string got;
    std::string buf(step, '\0');
    while (got.size() < bytes) {
      ssize_t n = ::read(sidecar_stdin_, buf.data(), buf.size());
      if (n <= 0) break;
      got.append(buf.data(), static_cast<size_t>(n));
      if (pause.count() > 0) std::this_thread::sleep_for(pause);
    }
    return got;
  }

  std::optional<absl::Status> Failure() {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_;
  }
  bool WaitForFailure() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWait, [this] { return failure_.has_value(); });
  }

 private:
  NullHandler handler_;
  int sidecar_stdin_ = -1;
  int sidecar_stdout_ = -1;
  std::unique_ptr<Transport> transport_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<absl::Status> failure_;
};

TEST(TransportTest, ALargeLineAfterAQuietSpellIsNotJudgedStuck) {
  // The defect: the writer refreshed its clock only while idle, so the
  // first line after a quiet spell longer than write_timeout that did not
  // drain at once (anything over the pipe's 64 KiB) was judged stuck with
  // no time at all, and the healthy sidecar killed.
  constexpr milliseconds kWriteTimeout(300);
  Link link(kWriteTimeout);
  // The quiet spell is the condition under test: time has to pass.
  std::this_thread::sleep_for(kWriteTimeout + milliseconds(200));
  const std::string line(1 << 20, 'x');  // a 1 MiB prompt
  ASSERT_TRUE(link.transport().Send(line).ok());
  // The sidecar starts reading a moment later (well inside write_timeout),
  // as a busy one does.
  std::this_thread::sleep_for(milliseconds(50));
  std::string got = link.Read(line.size() + 1, 64 * 1024, milliseconds(0));
  EXPECT_EQ(got.size(), line.size() + 1) << "the transport gave up on the line";
  EXPECT_EQ(got.back(), '\n');
  EXPECT_EQ(link.Failure(), std::nullopt);
}

TEST(TransportTest, ASlowReaderThatKeepsReadingIsNotStuck) {
  // 2 MiB read 64 KiB at a time, 20 ms apart: about 640 ms in all, longer
  // than write_timeout, but never write_timeout without progress.
  constexpr milliseconds kWriteTimeout(300);
  Link link(kWriteTimeout);
  const std::string line(2 << 20, 'y');
  ASSERT_TRUE(link.transport().Send(line).ok());
  std::string got = link.Read(line.size() + 1, 64 * 1024, milliseconds(20));
  EXPECT_EQ(got.size(), line.size() + 1);
  EXPECT_EQ(link.Failure(), std::nullopt);
  EXPECT_TRUE(link.transport().Send("after").ok());
}

TEST(TransportTest, ASidecarThatStopsReadingIsStuckAfterWriteTimeout) {
  constexpr milliseconds kWriteTimeout(200);
  Link link(kWriteTimeout);
  const auto sent_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(link.transport().Send(std::string(1 << 20, 'z')).ok());
  ASSERT_TRUE(link.WaitForFailure());
  // Not before the sidecar had its write_timeout to read.
  EXPECT_GE(std::chrono::steady_clock::now() - sent_at, kWriteTimeout);
  EXPECT_THAT(std::string(link.Failure()->message()),
              HasSubstr("has not read its input for 200 ms"));
  EXPECT_TRUE(absl::IsUnavailable(link.transport().Send("more")));
}

}  // namespace
}  // namespace llmbridge::rpc
