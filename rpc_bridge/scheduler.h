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
  // Drops callbacks that have not run yet.
  ~Scheduler();

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Returns a token for Cancel (never 0).
  uint64_t Schedule(Clock::time_point at, std::function<void()> fn);
  // No-op for a token that ran, was cancelled, or is 0.
  void Cancel(uint64_t token);

 private:
  using Key = std::pair<Clock::time_point, uint64_t>;
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, std::function<void()>> timers_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Clock::time_point> due_ ABSL_GUARDED_BY(mu_);
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_SCHEDULER_H_
