#include "rpc_bridge/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rpc_bridge/async_stderr.h"
#include "rpc_bridge/line_reader.h"

extern char** environ;

namespace llmbridge::rpc {
namespace {

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Owns one fd until it is released: Spawn's early returns close what it
// opened so far.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      CloseFd(fd_);
      fd_ = other.release();
    }
    return *this;
  }
  ~UniqueFd() { CloseFd(fd_); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() { CloseFd(fd_); }

 private:
  int fd_ = -1;
};

struct Pipe {
  UniqueFd read, write;
};

absl::Status MakePipe(Pipe& pipe) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  pipe.read = UniqueFd(fds[0]);
  pipe.write = UniqueFd(fds[1]);
  return absl::OkStatus();
}

int PidfdOpen(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  return -1;
#endif
}

ExitInfo FromWaitStatus(int status) {
  ExitInfo info;
  if (WIFSIGNALED(status)) {
    info.signaled = true;
    info.signal = WTERMSIG(status);
  } else if (WIFEXITED(status)) {
    info.exit_code = WEXITSTATUS(status);
  }
  return info;
}

// Environment for the child: ours, with `extra` overriding.
std::vector<std::string> BuildEnv(
    const std::map<std::string, std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    std::string key = entry.substr(0, entry.find('='));
    if (extra.count(key) == 0) env.push_back(std::move(entry));
  }
  for (const auto& [k, v] : extra) env.push_back(k + "=" + v);
  return env;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}


// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
// the process. A sidecar started from a short-lived thread (a health probe,
// a gRPC worker) would be killed with it, so every fork happens on one
// thread that lives as long as the process.
pid_t RunOnSpawnerThread(const std::function<pid_t()>& fork_fn) {
  struct Spawner {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::packaged_task<pid_t()>> tasks;
  };
  // One spawner per process: a forked copy of this process (which has only
  // the forking thread) makes its own.
  static std::mutex init_mu;
  static Spawner* current = nullptr;
  static pid_t owner = 0;
  Spawner* spawner;
  {
    std::lock_guard<std::mutex> lock(init_mu);
    if (current == nullptr || owner != ::getpid()) {
      current = new Spawner();  // never destroyed: the thread outlives main
      owner = ::getpid();
      Spawner* s = current;
      std::thread([s] {
        while (true) {
          std::packaged_task<pid_t()> task;
          {
            std::unique_lock<std::mutex> lock(s->mu);
            s->cv.wait(lock, [s] { return !s->tasks.empty(); });
            task = std::move(s->tasks.front());
            s->tasks.pop_front();
          }
          task();
        }
      }).detach();
    }
    spawner = current;
  }
  std::packaged_task<pid_t()> task(fork_fn);
  std::future<pid_t> result = task.get_future();
  {
    std::lock_guard<std::mutex> lock(spawner->mu);
    spawner->tasks.push_back(std::move(task));
  }
  spawner->cv.notify_one();
  return result.get();
}

}  // namespace

std::string ExitInfo::Describe() const {
  if (signaled) {
    const char* name = sigabbrev_np(signal);
    return absl::StrCat("killed by signal ", signal,
                        name ? absl::StrCat(" (SIG", name, ")") : "");
  }
  return absl::StrCat("exited with code ", exit_code);
}

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Spawn(
    const SubprocessOptions& options) {
  if (options.argv.empty()) {
    return absl::InvalidArgumentError("no command to run");
  }
  // Everything the child needs is prepared before fork: after fork only
  // async-signal-safe calls are allowed (gRPC has threads running).
  std::vector<std::string> argv_storage = options.argv;
  std::vector<char*> argv = CStrings(argv_storage);
  std::vector<std::string> env_storage = BuildEnv(options.extra_env);
  std::vector<char*> envp = CStrings(env_storage);
  const char* work_dir =
      options.work_dir.empty() ? nullptr : options.work_dir.c_str();

  Pipe in, out, err, exec;
  for (Pipe* pipe : {&in, &out, &err, &exec}) {
    if (absl::Status made = MakePipe(*pipe); !made.ok()) return made;
  }
  UniqueFd reaped(::eventfd(0, EFD_CLOEXEC));
  if (reaped.get() < 0) {
    return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  // Plain fds for the child, which must not run destructors.
  const int child_stdin = in.read.get();
  const int child_stdout = out.write.get();
  const int child_stderr = err.write.get();
  const int exec_report = exec.write.get();
  const pid_t parent = ::getpid();
  pid_t pid = RunOnSpawnerThread([&]() -> pid_t {
    pid_t forked = ::fork();
    if (forked < 0) return -errno;  // errno is per thread: carry it back
    if (forked != 0) {
      // The child does this too: whichever runs first, the group exists
      // before Spawn returns, so a Signal right away reaches it. (EACCES
      // once the child exec'd: it had made its group by then.)
      ::setpgid(forked, forked);
      return forked;
    }
    // Child. Die with the parent, even if it is SIGKILLed.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(child_stdin, STDIN_FILENO);
    ::dup2(child_stdout, STDOUT_FILENO);
    ::dup2(child_stderr, STDERR_FILENO);
    // Own process group: a Ctrl-C at the server's terminal reaches the server,
    // which then stops the sidecar in order; and the group, the sidecar with
    // what it started, is what Signal reaches.
    ::setpgid(0, 0);
    // Default signal dispositions and mask for the new program.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (work_dir != nullptr && ::chdir(work_dir) != 0) {
      int e = errno;
      (void)!::write(exec_report, &e, sizeof(e));
      ::_exit(127);
    }
    ::execvpe(argv[0], argv.data(), envp.data());
    int e = errno;
    (void)!::write(exec_report, &e, sizeof(e));
    ::_exit(127);
  });
  if (pid < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("fork: ", std::strerror(-pid)));
  }
  in.read.reset();
  out.write.reset();
  err.write.reset();
  exec.write.reset();
  // exec_pipe is close-on-exec: EOF means exec succeeded, data is its errno.
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(exec.read.get(), &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot start '", options.argv[0], "'",
        work_dir ? absl::StrCat(" in '", work_dir, "'") : "", ": ",
        std::strerror(child_errno)));
  }

  std::unique_ptr<Subprocess> process(new Subprocess());
  process->pid_ = pid;
  process->pidfd_ = PidfdOpen(pid);
  process->reaped_fd_ = reaped.release();
  process->stdin_fd_ = in.write.release();
  process->stdout_fd_ = out.read.release();
  process->tail_lines_ = options.stderr_tail_lines;
  process->stderr_thread_ =
      std::thread(&Subprocess::PumpStderr, process.get(), err.read.release(),
                  options.stderr_prefix, options.on_stderr_line);
  return process;
}

Subprocess::~Subprocess() {
  if (!Wait(std::chrono::milliseconds(0)).has_value()) {
    Signal(SIGKILL);
    Wait(std::chrono::hours(1));
  }
  // Reaped now, so the pump ends within kStderrDrainAfterExit.
  if (stderr_thread_.joinable()) stderr_thread_.join();
  CloseFd(stdin_fd_);
  CloseFd(stdout_fd_);
  CloseFd(pidfd_);
  CloseFd(reaped_fd_);
}

int Subprocess::TakeStdinFd() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(stdin_fd_, -1);
}

int Subprocess::TakeStdoutFd() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(stdout_fd_, -1);
}

void Subprocess::Signal(int signo) {
  std::lock_guard<std::mutex> lock(mu_);
  // Never signal a reaped child's group: its id may belong to another
  // process, or group, by now. Unreaped, even as a zombie, the child holds
  // the id.
  if (exit_.has_value()) return;
  // Its pid alone if it has no group yet (setpgid failed: not expected).
  if (::kill(-pid_, signo) != 0 && errno == ESRCH) ::kill(pid_, signo);
}

void Subprocess::ReapIfExited() {
  if (exit_.has_value()) return;
  siginfo_t info;
  info.si_pid = 0;
  // WNOWAIT: the child stays a zombie, so its pid, the group's id, cannot be
  // reused while what is left of the group is killed: processes it started
  // that would outlive it, holding its stderr open.
  if (::waitid(P_PID, static_cast<id_t>(pid_), &info,
               WEXITED | WNOHANG | WNOWAIT) != 0 ||
      info.si_pid != pid_) {
    return;
  }
  ::kill(-pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_ = FromWaitStatus(status);
  const uint64_t one = 1;
  (void)!::write(reaped_fd_, &one, sizeof(one));
}

std::optional<ExitInfo> Subprocess::Wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ReapIfExited();
      if (exit_.has_value()) return exit_;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    if (pidfd_ >= 0) {
      // Readable when the child exits: no polling interval.
      pollfd p{pidfd_, POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    } else {
      ::usleep(static_cast<useconds_t>(
          std::min<int64_t>(left.count(), 10) * 1000));
    }
  }
}

void Subprocess::PumpStderr(int fd, std::string prefix,
                            std::function<void(std::string_view)> on_line) {
  // Until the child is reaped, a read may wait as long as the child lives.
  // After that the pipe is read for kStderrDrainAfterExit at most: whatever
  // of its group still held it was killed at the reap, and a process that
  // left the group may hold it for ever.
  std::optional<std::chrono::steady_clock::time_point> give_up_at;
  auto wait_readable = [&]() -> absl::Status {
    while (true) {
      int timeout_ms = -1;
      if (give_up_at.has_value()) {
        const auto left = *give_up_at - std::chrono::steady_clock::now();
        if (left <= std::chrono::steady_clock::duration::zero()) {
          return absl::DeadlineExceededError("stderr still open after the exit");
        }
        timeout_ms = static_cast<int>(
            std::chrono::ceil<std::chrono::milliseconds>(left).count());
      }
      pollfd fds[2] = {{fd, POLLIN, 0},
                       {give_up_at.has_value() ? -1 : reaped_fd_, POLLIN, 0}};
      if (::poll(fds, 2, timeout_ms) < 0) {
        if (errno == EINTR) continue;
        return absl::InternalError(
            absl::StrCat("poll on stderr failed: ", std::strerror(errno)));
      }
      // Data, EOF or an error: read(2) tells which.
      if (fds[0].revents != 0) return absl::OkStatus();
      if (fds[1].revents != 0) {
        give_up_at = std::chrono::steady_clock::now() + kStderrDrainAfterExit;
      }
    }
  };
  LineReader reader(fd, 64 * 1024, wait_readable);
  while (true) {
    absl::StatusOr<std::string> line = reader.Next();
    if (absl::IsResourceExhausted(line.status())) continue;
    if (!line.ok()) break;
    if (on_line) {
      on_line(*line);
    } else {
      // Queued, never written here: a stalled server stderr must not stall
      // this pump, or the sidecar would block on its own full stderr pipe.
      StderrWriter().Write(prefix + *line);
    }
    std::lock_guard<std::mutex> lock(mu_);
    stderr_tail_.push_back(std::move(*line));
    while (stderr_tail_.size() > tail_lines_) stderr_tail_.pop_front();
  }
  // A process still holding the pipe gets EPIPE from now on, rather than
  // blocking once it is full.
  ::close(fd);
  std::lock_guard<std::mutex> lock(mu_);
  stderr_closed_ = true;
  stderr_cv_.notify_all();
}

void Subprocess::WaitStderrDrained(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  stderr_cv_.wait_for(lock, timeout, [this] {
    return stderr_closed_;
  });
}

std::string Subprocess::StderrTail() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const std::string& line : stderr_tail_) {
    if (!out.empty()) out += "\n";
    out += line;
  }
  return out;
}

}  // namespace llmbridge::rpc
