#include "rpc_bridge/scheduler.h"

namespace llmbridge::rpc {

Scheduler::Scheduler() : thread_([this] { Loop(); }) {}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

uint64_t Scheduler::Schedule(Clock::time_point at, std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t token = ++next_token_;
  const bool earliest = timers_.empty() || at < timers_.begin()->first.first;
  timers_.emplace(Key{at, token}, std::move(fn));
  due_.emplace(token, at);
  if (earliest) cv_.notify_all();
  return token;
}

void Scheduler::Cancel(uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = due_.find(token);
  if (it == due_.end()) return;
  timers_.erase(Key{it->second, token});
  due_.erase(it);
}

void Scheduler::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (timers_.empty()) {
      cv_.wait(lock);
      continue;
    }
    auto first = timers_.begin();
    // A copy: the node may be erased while we wait unlocked.
    const Clock::time_point due = first->first.first;
    if (Clock::now() < due) {
      cv_.wait_until(lock, due);
      continue;
    }
    std::function<void()> fn = std::move(first->second);
    due_.erase(first->first.second);
    timers_.erase(first);
    lock.unlock();
    fn();
    fn = nullptr;  // destroyed outside the lock too
    lock.lock();
  }
}

}  // namespace llmbridge::rpc
