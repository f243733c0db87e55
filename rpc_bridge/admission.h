// Admission control for one pool: which call goes to which sidecar slot
// now, which waits, and which is refused. A pure unit: no threads, no locks,
// no clock of its own (every method that needs the time takes `now`), so it
// is tested with a fake clock and the pool calls it under its own lock.
//
// Two kinds of call:
//   * admitted calls (completions, embeddings) take one of a slot's
//     `capacity` places and queue, first come first served, up to
//     max_queue, for at most queue_timeout;
//   * control calls (tools, models, capabilities, token counts) only need
//     an open slot and take no place; they wait in their own, smaller queue
//     (max_control_queue, same timeout) and may pass admitted calls.
// A place stays taken until the owner calls Release for it, which the pool
// does when the sidecar confirmed the call's end (its reply, or its answer
// to the cancel), not when the caller gave up: the work a sidecar still
// does for an abandoned call is counted as load.
//
// Threading: none. The owner serialises every call.
#ifndef LLMBRIDGE_RPC_BRIDGE_ADMISSION_H_
#define LLMBRIDGE_RPC_BRIDGE_ADMISSION_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

namespace llmbridge::rpc {

class Admission {
 public:
  using Clock = std::chrono::steady_clock;
  using CallId = uint64_t;

  enum class Kind { kAdmitted, kControl };

  struct Limits {
    int slots = 1;
    // Admitted calls in flight per slot; 0: no limit. A slot may lower its
    // own (SlotOpened's capacity).
    int per_slot = 0;
    int max_queue = 512;
    int max_control_queue = 64;
    std::chrono::milliseconds queue_timeout{60000};
  };

  // Where a call goes.
  struct Assignment {
    CallId id;
    int slot;
  };
  enum class Verdict { kSend, kQueued, kQueueFull };
  struct Decision {
    Verdict verdict;
    int slot = -1;  // kSend
  };

  explicit Admission(Limits limits);

  const Limits& limits() const { return limits_; }

  // A new call. kSend: send it to `slot` now (its place is taken). kQueued:
  // it waits for SlotOpened/Release to hand it out, or Expire/Remove.
  // kQueueFull: refuse it (OVERLOADED).
  Decision Offer(CallId id, Kind kind, Clock::time_point now);

  // Slot `slot` serves now, with room for `capacity` admitted calls (0: the
  // limits' per_slot). Returns the queued calls to send to it.
  std::vector<Assignment> SlotOpened(int slot, int capacity = 0);
  // Slot `slot` takes no new calls (dying, unloading, replaced). Its places
  // stay taken until released.
  void SlotClosed(int slot);
  bool open(int slot) const;

  // The sidecar confirmed the end of an admitted call on `slot`: its place
  // is free. Returns the queued calls to send now (to any slot).
  std::vector<Assignment> Release(int slot);

  // Takes a queued call out (cancelled, or its deadline passed). False if
  // it was not queued.
  bool Remove(CallId id);
  // The queued calls that waited queue_timeout by `now`, oldest first,
  // taken out of the queue.
  std::vector<CallId> Expire(Clock::time_point now);
  // When the oldest queued call expires; nullopt with an empty queue.
  std::optional<Clock::time_point> NextExpiry() const;
  // Every queued call, oldest first (shutdown, or nothing can start).
  std::vector<CallId> TakeQueue();

  int in_flight(int slot) const;
  int in_flight() const;
  int queued(Kind kind) const;
  int queued() const;
  // When `id` joined the queue (for the queue-wait metric); nullopt if it
  // is not queued.
  std::optional<Clock::time_point> queued_at(CallId id) const;

 private:
  struct Waiting {
    CallId id;
    Kind kind;
    Clock::time_point since;
  };
  struct Slot {
    bool open = false;
    int capacity = 0;  // 0: no limit
    int in_flight = 0;
  };

  // The open slot for a call of `kind`: the least loaded with room.
  std::optional<int> Pick(Kind kind) const;
  // Hands queued calls to open slots, in queue order; an admitted call
  // that finds no room blocks the admitted calls behind it.
  std::vector<Assignment> Drain();

  const Limits limits_;
  std::vector<Slot> slots_;
  std::deque<Waiting> queue_;
  int queued_admitted_ = 0;
  int queued_control_ = 0;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_ADMISSION_H_
