// Runs callbacks at given times on one thread: the deadlines and queue
// timeouts of calls.
//
// Threading: Schedule and Cancel may be called from any thread, including
// from a callback, and never wait for a running callback. Callbacks run on
// the scheduler's thread, one at a time, without its lock held.
#ifndef LLMBRIDGE_RPC_BRIDGE_SCHEDULER_H_
#define LLMBRIDGE_RPC_BRIDGE_SCHEDULER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"

namespace llmbridge::rpc {

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;

  Scheduler();
  // Drops callbacks that have not run yet. May run on the scheduler's own
  // thread (a callback that held the last reference to the scheduler's
  // owner): the thread is then left to end by itself once that callback
  // returns, instead of joining itself.
  ~Scheduler();

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Returns a token for Cancel (never 0).
  uint64_t Schedule(Clock::time_point at, std::function<void()> fn);
  // No-op for a token that ran, was cancelled, or is 0.
  void Cancel(uint64_t token);

 private:
  using Key = std::pair<Clock::time_point, uint64_t>;
  // Shared with the thread, so that it can outlive the Scheduler when the
  // destructor runs on it.
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::map<Key, std::function<void()>> timers ABSL_GUARDED_BY(mu);
    std::unordered_map<uint64_t, Clock::time_point> due ABSL_GUARDED_BY(mu);
    uint64_t next_token ABSL_GUARDED_BY(mu) = 0;
    bool stopping ABSL_GUARDED_BY(mu) = false;
  };
  static void Loop(const std::shared_ptr<State>& state);

  std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_SCHEDULER_H_
