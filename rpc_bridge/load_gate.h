// Bounds how many sidecar pools (models) are loaded at once, evicting the
// least recently used idle one to make room (--max_loaded_models).
//
// A pool asks for a place before it starts its first sidecar (TryAcquire)
// and gives it back once every sidecar of it stopped (Release). When the
// gate is full, TryAcquire asks the least recently used loaded member that
// has nothing in flight or queued to unload; if every loaded member is
// busy, the asker waits: it is woken (Member::wake) when a place frees or a
// member goes idle, and asks again. A member is never asked to unload while
// it has calls: eviction happens between calls, never under one.
//
// Threading: every method may be called from any thread, and never blocks
// on a member: members' callbacks run outside the gate's lock, and must be
// quick and must not call back into the gate.
#ifndef LLMBRIDGE_RPC_BRIDGE_LOAD_GATE_H_
#define LLMBRIDGE_RPC_BRIDGE_LOAD_GATE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace llmbridge::rpc {

class LoadGate {
 public:
  struct Member {
    // Unload now if nothing is in flight or queued: true if it will (it
    // then Releases once its sidecars stopped). Must not block.
    std::function<bool()> unload_if_idle;
    // A place may be free now: TryAcquire again. Must not block.
    std::function<void()> wake;
  };

  // max_loaded <= 0: no bound (every TryAcquire succeeds).
  explicit LoadGate(int max_loaded) : max_loaded_(max_loaded) {}

  int Join(Member member);
  void Leave(int id);

  // Whether member `id` may load now; it then holds a place until Release.
  // Holding one already: true.
  bool TryAcquire(int id);
  void Release(int id);

  // Member `id` was used now (least recently used goes first).
  void Touch(int id);
  // Member `id` has nothing in flight or queued now: those waiting for a
  // place may evict it.
  void Idle(int id);

  int max_loaded() const { return max_loaded_; }
  int loaded() const;

 private:
  struct Entry {
    Member member;
    bool loaded = false;
    bool evicting = false;  // asked to unload, not released yet
    bool waiting = false;   // wants a place
    uint64_t last_used = 0;
  };

  void WakeWaiters(std::unique_lock<std::mutex>& lock)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_loaded_;
  mutable std::mutex mu_;
  std::map<int, Entry> members_ ABSL_GUARDED_BY(mu_);
  int next_id_ ABSL_GUARDED_BY(mu_) = 0;
  int loaded_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_LOAD_GATE_H_
