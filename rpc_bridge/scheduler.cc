#include "rpc_bridge/scheduler.h"

namespace llmbridge::rpc {

Scheduler::Scheduler()
    : state_(std::make_shared<State>()),
      thread_([state = state_] { Loop(state); }) {}

Scheduler::~Scheduler() {
  std::map<Key, std::function<void()>> dropped;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stopping = true;
    dropped.swap(state_->timers);
    state_->due.clear();
  }
  state_->cv.notify_all();
  if (thread_.get_id() == std::this_thread::get_id()) {
    // Inside a callback: joining would wait for ourselves (std::terminate).
    // The loop sees `stopping` when the callback returns and ends; it holds
    // its own reference to the state.
    thread_.detach();
  } else {
    thread_.join();
  }
  // Destroyed here, without the lock: a callback's captures may cancel
  // other timers as they go.
  dropped.clear();
}

uint64_t Scheduler::Schedule(Clock::time_point at, std::function<void()> fn) {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  const uint64_t token = ++s.next_token;
  if (s.stopping) return token;  // never runs
  const bool earliest = s.timers.empty() || at < s.timers.begin()->first.first;
  s.timers.emplace(Key{at, token}, std::move(fn));
  s.due.emplace(token, at);
  if (earliest) s.cv.notify_all();
  return token;
}

void Scheduler::Cancel(uint64_t token) {
  State& s = *state_;
  std::function<void()> fn;  // destroyed after the lock is released
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.due.find(token);
  if (it == s.due.end()) return;
  auto timer = s.timers.find(Key{it->second, token});
  if (timer != s.timers.end()) {
    fn = std::move(timer->second);
    s.timers.erase(timer);
  }
  s.due.erase(it);
}

void Scheduler::Loop(const std::shared_ptr<State>& state) {
  State& s = *state;
  std::unique_lock<std::mutex> lock(s.mu);
  while (!s.stopping) {
    if (s.timers.empty()) {
      s.cv.wait(lock);
      continue;
    }
    auto first = s.timers.begin();
    // A copy: the node may be erased while we wait unlocked.
    const Clock::time_point due = first->first.first;
    if (Clock::now() < due) {
      s.cv.wait_until(lock, due);
      continue;
    }
    std::function<void()> fn = std::move(first->second);
    s.due.erase(first->first.second);
    s.timers.erase(first);
    lock.unlock();
    fn();
    fn = nullptr;  // destroyed outside the lock too (it may own the Scheduler)
    lock.lock();
  }
}

}  // namespace llmbridge::rpc
