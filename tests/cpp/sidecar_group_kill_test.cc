// A sidecar that started a child inheriting its stderr (as an MCP server
// does: the sidecar's stderr is its error log) and is then SIGKILLed is
// replaced, each time, and its child goes with it. The child keeps the
// stderr pipe open, so this only works if the sidecar is killed as a process
// group and nothing waits on that pipe without a bound.
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <map>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "rpc_bridge/client.h"
#include "rpc_bridge/sidecar_pool.h"
#include "tests/cpp/fake_sidecar.h"

namespace llmbridge::rpc {
namespace {

using testing::Ask;
using testing::FakeConfig;
using testing::kWait;

// What the test waits for, without sleeping: the pool's state changes, and
// the "stderr child <pid> of <sidecar pid>" lines of the fake.
class Watcher : public PoolObserver {
 public:
  void OnStateChanged() override { Changed([] {}); }
  void OnSidecarStderr(int, pid_t, std::string_view line) override {
    int child = 0, parent = 0;
    if (std::sscanf(std::string(line).c_str(), "stderr child %d of %d", &child,
                    &parent) == 2) {
      Changed([&] { children_[parent] = child; });
    }
  }

  // Waits until `ready(client.Status())` holds; false after kWait.
  bool WaitForState(Client& client,
                    const std::function<bool(const PoolStatus&)>& ready) {
    return WaitFor([&] { return ready(client.Status()); });
  }

  // The child the sidecar `pid` started; -1 if it did not say within kWait.
  pid_t ChildOf(pid_t pid) {
    pid_t child = -1;
    WaitFor([&] {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = children_.find(pid);
      if (it != children_.end()) child = it->second;
      return child > 0;
    });
    return child;
  }

 private:
  template <typename F>
  void Changed(F&& change) {
    std::lock_guard<std::mutex> lock(mu_);
    change();
    ++changes_;
    cv_.notify_all();
  }
  // `ready` runs without mu_ held (it may read the pool).
  bool WaitFor(const std::function<bool()>& ready) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      const int seen = changes_;
      lock.unlock();
      const bool done = ready();
      lock.lock();
      if (done) return true;
      if (!cv_.wait_until(lock, deadline, [&] { return changes_ != seen; })) {
        return false;
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int changes_ = 0;
  std::map<pid_t, pid_t> children_;
};

// The sidecars' children, through pidfds (immune to pid reuse). Whatever is
// left of them is killed first thing when the test ends, so that a failing
// test fails instead of waiting on their stderr.
class Children {
 public:
  ~Children() {
    for (int pidfd : pidfds_) {
      ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
      ::close(pidfd);
    }
  }
  // Index of the watched `pid`, or -1.
  int Watch(pid_t pid) {
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) return -1;
    pidfds_.push_back(pidfd);
    return static_cast<int>(pidfds_.size()) - 1;
  }
  bool ExitsWithin(int index, std::chrono::milliseconds timeout) const {
    pollfd p{pidfds_[static_cast<size_t>(index)], POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
  }

 private:
  std::vector<int> pidfds_;
};

TEST(SidecarGroupKillTest, ASidecarWhoseChildHoldsItsStderrIsReplacedAfterEachKill) {
  Watcher watcher;
  ClientOptions options;
  options.pool.preload = true;
  options.pool.observer = &watcher;
  Client client(FakeConfig("echo", {{"FAKE_SIDECAR_SPAWN_STDERR_CHILD", "1"}}),
                options);
  // Declared after the client, so destroyed before it.
  Children children;
  pid_t victim = -1;
  for (int kill = 1; kill <= 3; ++kill) {
    ASSERT_TRUE(watcher.WaitForState(client, [victim](const PoolStatus& s) {
      return s.slots[0].state == SlotState::kReady && s.slots[0].pid > 0 &&
             s.slots[0].pid != victim;
    })) << "no sidecar ready for kill " << kill;
    victim = client.Status().slots[0].pid;
    const pid_t child = watcher.ChildOf(victim);
    ASSERT_GT(child, 0) << "sidecar " << victim << " never named its child";
    const int watched = children.Watch(child);
    ASSERT_GE(watched, 0) << "child " << child << " is gone already";
    auto served = client.Complete(Ask("before the kill"));
    ASSERT_TRUE(served.ok()) << served.status();

    ASSERT_EQ(::kill(victim, SIGKILL), 0);
    ASSERT_TRUE(watcher.WaitForState(client, [victim](const PoolStatus& s) {
      return s.slots[0].state == SlotState::kReady && s.slots[0].pid > 0 &&
             s.slots[0].pid != victim;
    })) << "sidecar " << victim << " was not replaced after kill " << kill;
    EXPECT_TRUE(children.ExitsWithin(watched, kWait))
        << "the child of sidecar " << victim << " outlived it";
    auto after = client.Complete(Ask("after the kill"));
    EXPECT_TRUE(after.ok()) << after.status();
  }
  EXPECT_EQ(client.Status().starts, 4);
}

}  // namespace
}  // namespace llmbridge::rpc
