// A child process with pipes on stdin, stdout and stderr, started without a
// shell. The child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the server
// even when the server is killed outright.
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
#include <string_view>
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
  ~Subprocess();  // kills (SIGKILL) and reaps a child still running

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // Hand our ends of the child's stdin and stdout to the caller (the
  // transport), who closes them. Each returns -1 after the first call.
  int TakeStdinFd();
  int TakeStdoutFd();

  // Waits up to `timeout` for the child to exit; nullopt on timeout.
  // Safe to call repeatedly and concurrently; the child is reaped once.
  std::optional<ExitInfo> Wait(std::chrono::milliseconds timeout);

  void Signal(int signo);

  // The last lines the child wrote to stderr, oldest first.
  std::string StderrTail() const;

  // Waits up to `timeout` until the child's stderr reached EOF and every
  // line of it is in the tail (it can lag behind the exit).
  void WaitStderrDrained(std::chrono::milliseconds timeout) const;

 private:
  Subprocess() = default;
  void PumpStderr(int fd, std::string prefix,
                  std::function<void(std::string_view)> on_line);

  pid_t pid_ = -1;
  int pidfd_ = -1;  // for waiting with a timeout without polling
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
