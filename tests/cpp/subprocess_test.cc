// Subprocess: each line the child writes to stderr reaches the caller's
// callback (the server logs it as JSON) and the tail is still kept for error
// messages; signals reach the child's whole process group; nothing waits on
// a stderr that a grandchild holds open; a failed Spawn leaks no fds.
#include "rpc_bridge/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cpp/fake_sidecar.h"

namespace llmbridge::rpc {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::CountEntries;

constexpr std::chrono::seconds kWait(20);  // only bounds a broken test
// Bounds a wait on what ends within milliseconds once the code works (a
// process killed, the stderr pump giving up): short enough that a test that
// fails all of them still fails before its timeout.
constexpr std::chrono::seconds kSoon(10);

TEST(SubprocessTest, StderrLinesGoToTheCallbackWhenOneIsSet) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> lines;
  SubprocessOptions options;
  options.argv = {"/bin/sh", "-c",
                  "printf 'first\\nsecond \"quoted\"\\n\\nlast\\n' >&2"};
  options.on_stderr_line = [&](std::string_view line) {
    std::lock_guard<std::mutex> lock(mu);
    lines.emplace_back(line);
    cv.notify_all();
  };
  auto child = Subprocess::Spawn(options);
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE((*child)->Wait(kWait).has_value());
  (*child)->WaitStderrDrained(kWait);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return lines.size() == 4; }));
    EXPECT_THAT(lines, ElementsAre("first", "second \"quoted\"", "", "last"));
  }
  EXPECT_EQ((*child)->StderrTail(), "first\nsecond \"quoted\"\n\nlast");
}

// A process the test did not start (a grandchild), watched through a pidfd:
// immune to pid reuse, and readable once the process exited even while
// nobody reaps it.
class Watched {
 public:
  explicit Watched(pid_t pid)
      : pidfd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {
    EXPECT_GE(pidfd_, 0) << "pidfd_open(" << pid << "): " << std::strerror(errno);
  }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;
  // Never leaves the process behind, even when the test failed.
  ~Watched() {
    if (pidfd_ < 0) return;
    Kill();
    ::close(pidfd_);
  }
  bool ExitsWithin(std::chrono::milliseconds timeout) const {
    pollfd p{pidfd_, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
  }
  void Kill() const { ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0); }

 private:
  int pidfd_;
};

// A child that starts a grandchild and prints its pid on stdout.
struct Family {
  std::unique_ptr<Subprocess> child;
  pid_t grandchild = -1;
};

Family SpawnFamily(const SubprocessOptions& options) {
  Family family;
  auto child = Subprocess::Spawn(options);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return family;
  family.child = *std::move(child);
  const int out = family.child->TakeStdoutFd();
  std::string text;
  char c;
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (text.empty() || text.back() != '\n') {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{out, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1 ||
        ::read(out, &c, 1) != 1) {
      break;
    }
    text += c;
  }
  ::close(out);
  if (!text.empty() && text.back() == '\n') family.grandchild = std::stoi(text);
  return family;
}

// Destroys `child` on another thread; true if that returned within kSoon.
// Otherwise `holder` (whatever keeps the destructor waiting) is killed so
// that the test ends instead of hanging.
bool DestroyedInTime(std::unique_ptr<Subprocess> child, const Watched& holder) {
  auto destroyed = std::async(std::launch::async, [&child] { child.reset(); });
  if (destroyed.wait_for(kSoon) == std::future_status::ready) return true;
  holder.Kill();
  destroyed.wait();
  return false;
}

// The child leads its own process group, and the group is what a signal
// reaches: a grandchild that holds the child's stderr (an MCP server the
// sidecar started) dies with it, and nothing waits on that stderr after.
TEST(SubprocessTest, ASignalReachesTheWholeProcessGroup) {
  SubprocessOptions options;
  options.argv = {"/bin/sh", "-c",
                  "sleep 300 </dev/null >/dev/null & echo $!; wait"};
  Family family = SpawnFamily(options);
  ASSERT_GT(family.grandchild, 0) << "the child never named its child";
  Watched watched(family.grandchild);
  Subprocess& child = *family.child;
  EXPECT_EQ(::getpgid(family.grandchild), child.pid());

  child.Signal(SIGKILL);
  std::optional<ExitInfo> exit = child.Wait(kWait);
  ASSERT_TRUE(exit.has_value());
  EXPECT_TRUE(exit->signaled);
  EXPECT_EQ(exit->signal, SIGKILL);
  EXPECT_TRUE(watched.ExitsWithin(kSoon)) << "the grandchild outlived the kill";
  EXPECT_TRUE(DestroyedInTime(std::move(family.child), watched));
}

// A grandchild that left the group (its own session) cannot be signalled
// with it and keeps the stderr pipe open: the pump still ends soon after the
// child exited, with the child's last lines in the tail.
TEST(SubprocessTest, StderrHeldByAnEscapedGrandchildIsDrainedWithABound) {
  SubprocessOptions options;
  options.argv = {
      "/usr/bin/python3", "-c",
      "import subprocess, sys\n"
      "p = subprocess.Popen(['sleep', '300'], start_new_session=True,\n"
      "                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n"
      "print(p.pid, flush=True)\n"
      "sys.stderr.write('last words\\n')\n"};
  options.on_stderr_line = [](std::string_view) {};
  Family family = SpawnFamily(options);
  ASSERT_GT(family.grandchild, 0) << "the child never named its child";
  Watched watched(family.grandchild);
  Subprocess& child = *family.child;

  std::optional<ExitInfo> exit = child.Wait(kWait);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->exit_code, 0);
  auto drained = std::async(std::launch::async, [&child] {
    child.WaitStderrDrained(std::chrono::hours(1));
  });
  const bool drained_in_time =
      drained.wait_for(kSoon) == std::future_status::ready;
  EXPECT_TRUE(drained_in_time) << "stderr is still awaited after the exit";
  if (!drained_in_time) watched.Kill();
  drained.wait();
  EXPECT_EQ(child.StderrTail(), "last words");
  EXPECT_FALSE(watched.ExitsWithin(std::chrono::milliseconds(0)))
      << "the escaped grandchild is not ours to kill";
  EXPECT_TRUE(DestroyedInTime(std::move(family.child), watched));
}

// Free fd numbers below `limit`.
int FreeFdsBelow(int limit) {
  int free_fds = 0;
  for (int fd = 0; fd < limit; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF) ++free_fds;
  }
  return free_fds;
}

// Spawn makes four pipes; when one after the first fails (the fd limit), the
// ones it already made are closed.
TEST(SubprocessTest, AFailedPipeLeaksNoFds) {
  rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  SubprocessOptions options;
  options.argv = {"/bin/true"};
  // Room for 1, 2 or 3 pipes and one fd more: the next pipe2 fails.
  for (int room : {3, 5, 7}) {
    const int before = CountEntries("/proc/self/fd");
    int limit = 0;
    while (FreeFdsBelow(limit) < room) ++limit;
    ASSERT_LE(static_cast<rlim_t>(limit), saved.rlim_cur);
    rlimit lowered = saved;
    lowered.rlim_cur = static_cast<rlim_t>(limit);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
    auto child = Subprocess::Spawn(options);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
    EXPECT_FALSE(child.ok()) << "room for " << room << " fds";
    EXPECT_THAT(std::string(child.status().message()),
                HasSubstr("Too many open files"));
    EXPECT_EQ(CountEntries("/proc/self/fd"), before) << "room for " << room << " fds";
  }
}

}  // namespace
}  // namespace llmbridge::rpc
