#include "rpc_bridge/async_stderr.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace llmbridge::rpc {

struct AsyncLineWriter::State {
  State(int fd, Limits limits) : fd(fd), limits(limits) {}

  const int fd;
  const Limits limits;

  std::mutex mu;
  std::condition_variable wake;     // lines queued, or stop
  std::condition_variable drained;  // a batch was written
  std::deque<std::string> queue ABSL_GUARDED_BY(mu);
  size_t queued_bytes ABSL_GUARDED_BY(mu) = 0;
  bool writing ABSL_GUARDED_BY(mu) = false;  // a batch is in write(2)
  // The writer waits for a first line (Write must wake it), not lingering.
  bool idle ABSL_GUARDED_BY(mu) = false;
  bool flush_wanted ABSL_GUARDED_BY(mu) = false;
  bool stop ABSL_GUARDED_BY(mu) = false;
  bool exited ABSL_GUARDED_BY(mu) = false;
  uint64_t written ABSL_GUARDED_BY(mu) = 0;
  uint64_t dropped ABSL_GUARDED_BY(mu) = 0;
  uint64_t dropped_unreported ABSL_GUARDED_BY(mu) = 0;

  // Writes all of `text`, waiting as long as the fd needs: this thread
  // exists so that nobody else waits. Gives up only on a real error.
  void WriteAll(const std::string& text) const {
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::write(fd, text.data() + done, text.size() - done);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, 1000);  // someone made the fd non-blocking
        continue;
      }
      return;  // closed or broken: nothing more can be written there
    }
  }

  bool BatchFull() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return queue.size() >= limits.batch_lines || queued_bytes >= 64 * 1024;
  }

  void Run() {
    while (true) {
      std::deque<std::string> batch;
      uint64_t lost = 0;
      {
        std::unique_lock<std::mutex> lock(mu);
        idle = true;
        wake.wait(lock, [this] { return stop || !queue.empty(); });
        idle = false;
        if (limits.linger.count() > 0) {
          wake.wait_for(lock, limits.linger, [this] {
            return stop || flush_wanted || BatchFull();
          });
        }
        flush_wanted = false;
        if (queue.empty()) {  // stop, and nothing left
          exited = true;
          drained.notify_all();
          return;
        }
        batch.swap(queue);
        queued_bytes = 0;
        lost = dropped_unreported;
        dropped_unreported = 0;
        writing = true;
      }
      std::string text;
      for (const std::string& line : batch) text += line;
      if (lost > 0) {
        // The sink took data again: say what it missed.
        text += absl::StrFormat(
            "{\"ts\":\"%s\",\"level\":\"warn\",\"event\":\"log_lines_dropped\","
            "\"count\":%d,\"why\":\"stderr was not read fast enough\"}\n",
            absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                             absl::UTCTimeZone()),
            lost);
      }
      WriteAll(text);
      std::lock_guard<std::mutex> lock(mu);
      written += batch.size();
      writing = false;
      drained.notify_all();
    }
  }
};

AsyncLineWriter::AsyncLineWriter(int fd, Limits limits)
    : state_(std::make_shared<State>(fd, limits)) {
  // The thread owns a reference: it may outlive this object (see the
  // destructor) without touching freed memory.
  std::thread([state = state_] {
    // Whoever logs first creates this thread, possibly before the process
    // has set up its signal handling: it must never be the thread a
    // process-directed signal (SIGTERM, SIGHUP) is delivered to.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    state->Run();
  }).detach();
}

AsyncLineWriter::~AsyncLineWriter() {
  Flush(std::chrono::seconds(1));
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->stop = true;
  state_->wake.notify_all();
}

bool AsyncLineWriter::Write(std::string line) {
  if (line.empty() || line.back() != '\n') line.push_back('\n');
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->stop ||
      state_->queue.size() >= state_->limits.max_queued_lines ||
      state_->queued_bytes + line.size() > state_->limits.max_queued_bytes) {
    ++state_->dropped;
    ++state_->dropped_unreported;
    return false;
  }
  state_->queued_bytes += line.size();
  state_->queue.push_back(std::move(line));
  // A lingering writer is woken only by a full batch (or its timeout).
  if (state_->idle || state_->BatchFull()) state_->wake.notify_one();
  return true;
}

bool AsyncLineWriter::Flush(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->flush_wanted = true;
  state_->wake.notify_one();
  return state_->drained.wait_for(lock, timeout, [this] {
    return state_->exited || (state_->queue.empty() && !state_->writing);
  });
}

uint64_t AsyncLineWriter::written_lines() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->written;
}

uint64_t AsyncLineWriter::dropped_lines() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->dropped;
}

AsyncLineWriter& StderrWriter() {
  static AsyncLineWriter* writer = new AsyncLineWriter(STDERR_FILENO);
  return *writer;
}

}  // namespace llmbridge::rpc
