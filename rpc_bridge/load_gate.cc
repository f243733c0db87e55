#include "rpc_bridge/load_gate.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace llmbridge::rpc {

int LoadGate::Join(Member member) {
  std::lock_guard<std::mutex> lock(mu_);
  const int id = next_id_++;
  members_[id].member = std::move(member);
  return id;
}

void LoadGate::Leave(int id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = members_.find(id);
  if (it == members_.end()) return;
  const bool freed = it->second.loaded;
  if (freed) --loaded_;
  members_.erase(it);
  if (freed) WakeWaiters(lock);
}

bool LoadGate::TryAcquire(int id) {
  std::vector<std::function<bool()>> candidates;
  std::vector<int> candidate_ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = members_.find(id);
    if (it == members_.end()) return true;  // not a member: not bounded
    Entry& self = it->second;
    self.last_used = ++clock_;
    if (self.loaded) return true;
    if (max_loaded_ <= 0 || loaded_ < max_loaded_) {
      self.loaded = true;
      self.waiting = false;
      ++loaded_;
      return true;
    }
    self.waiting = true;
    // A place is already being freed for someone: wait for it.
    for (const auto& [other_id, other] : members_) {
      if (other.evicting) return false;
    }
    std::vector<std::pair<uint64_t, int>> lru;
    for (const auto& [other_id, other] : members_) {
      if (other.loaded && other_id != id) lru.emplace_back(other.last_used, other_id);
    }
    std::sort(lru.begin(), lru.end());
    for (const auto& [used, other_id] : lru) {
      candidates.push_back(members_[other_id].member.unload_if_idle);
      candidate_ids.push_back(other_id);
    }
  }
  // Outside the lock: members take their own locks.
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (!candidates[i] || !candidates[i]()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = members_.find(candidate_ids[i]);
    if (it != members_.end() && it->second.loaded) it->second.evicting = true;
    break;
  }
  return false;
}

void LoadGate::Release(int id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = members_.find(id);
  if (it == members_.end() || !it->second.loaded) return;
  it->second.loaded = false;
  it->second.evicting = false;
  --loaded_;
  WakeWaiters(lock);
}

void LoadGate::Touch(int id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = members_.find(id);
  if (it != members_.end()) it->second.last_used = ++clock_;
}

void LoadGate::Idle(int id) {
  std::unique_lock<std::mutex> lock(mu_);
  if (max_loaded_ <= 0 || loaded_ < max_loaded_) return;
  WakeWaiters(lock);
}

int LoadGate::loaded() const {
  std::lock_guard<std::mutex> lock(mu_);
  return loaded_;
}

void LoadGate::WakeWaiters(std::unique_lock<std::mutex>& lock) {
  std::vector<std::function<void()>> wakes;
  for (auto& [id, entry] : members_) {
    if (entry.waiting && entry.member.wake) wakes.push_back(entry.member.wake);
  }
  lock.unlock();
  for (auto& wake : wakes) wake();
  lock.lock();
}

}  // namespace llmbridge::rpc
