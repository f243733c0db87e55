// A child process with pipes on stdin, stdout and stderr, started without a
// shell. The child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the server
// even when the server is killed outright.
//
// The child leads its own process group, and the group is what Signal
// reaches: processes the child started (an MCP server of the sidecar) inherit
// its fds and would outlive a kill of its pid alone. Once the child exited,
// whatever is left of its group is SIGKILLed before the child is reaped (while
// its pid, the group's id, cannot have been reused). A process that left the
// group can still hold the child's stderr open, so the stderr pump gives up a
// short while after the child was reaped: nothing waits on that pipe forever.
//
// Threading: Spawn/Wait/Signal may be called from any thread; the object
// itself must outlive every call on it. The stderr pump runs on its own
// thread and only touches the stderr tail, under its own mutex.
#ifndef LLMBRIDGE_RPC_BRIDGE_SUBPROCESS_H_
#define LLMBRIDGE_RPC_BRIDGE_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

namespace llmbridge::rpc {

struct SubprocessOptions {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH
  std::map<std::string, std::string> extra_env;  // added to our environment
  std::string work_dir;                          // empty: inherit
  // Each line the child writes to stderr is copied to our stderr with this
  // prefix (logs of the sidecar belong in the server's log)...
  std::string stderr_prefix = "[sidecar] ";
  // ...unless this is set: then each line (without its '\n') goes here
  // instead, e.g. to be logged as JSON. It runs on the stderr pump thread,
  // one line at a time, with no lock of ours held; the child blocks once its
  // stderr pipe is full, so it should not block for long.
  std::function<void(std::string_view line)> on_stderr_line;
  size_t stderr_tail_lines = 20;
};

// How a child ended.
struct ExitInfo {
  int exit_code = -1;  // valid when !signaled
  int signal = 0;      // valid when signaled
  bool signaled = false;
  std::string Describe() const;  // "exited with code 3", "killed by SIGKILL"
};

class Subprocess {
 public:
  static absl::StatusOr<std::unique_ptr<Subprocess>> Spawn(
      const SubprocessOptions& options);
  // Kills (SIGKILL, the group) and reaps a child still running, then waits
  // for the stderr pump, which ends within kStderrDrainAfterExit of that.
  ~Subprocess();

  // How long stderr is still read after the child was reaped, when some
  // other process (one that left the child's group) keeps the pipe open.
  static constexpr std::chrono::milliseconds kStderrDrainAfterExit{300};

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // Hand our ends of the child's stdin and stdout to the caller (the
  // transport), who closes them. Each returns -1 after the first call.
  int TakeStdinFd();
  int TakeStdoutFd();

  // Waits up to `timeout` for the child to exit; nullopt on timeout.
  // Safe to call repeatedly and concurrently; the child is reaped once, and
  // what is left of its process group is killed just before.
  std::optional<ExitInfo> Wait(std::chrono::milliseconds timeout);

  // Sends `signo` to the child's process group; nothing once the child was
  // reaped (the id may belong to another process or group by now).
  void Signal(int signo);

  // The last lines the child wrote to stderr, oldest first.
  std::string StderrTail() const;

  // Waits up to `timeout` until the child's stderr reached EOF (or the pump
  // gave up on it, kStderrDrainAfterExit after the reap) and every line of
  // it is in the tail (it can lag behind the exit).
  void WaitStderrDrained(std::chrono::milliseconds timeout) const;

 private:
  Subprocess() = default;
  // Reaps the child if it exited, killing what is left of its group first.
  void ReapIfExited() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PumpStderr(int fd, std::string prefix,
                  std::function<void(std::string_view)> on_line);

  pid_t pid_ = -1;  // also the id of its process group
  int pidfd_ = -1;  // for waiting with a timeout without polling
  int reaped_fd_ = -1;  // eventfd: tells the stderr pump the child was reaped
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  size_t tail_lines_ = 20;
  std::thread stderr_thread_;

  mutable std::mutex mu_;
  std::optional<ExitInfo> exit_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> stderr_tail_ ABSL_GUARDED_BY(mu_);
  bool stderr_closed_ ABSL_GUARDED_BY(mu_) = false;
  mutable std::condition_variable stderr_cv_;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_SUBPROCESS_H_
