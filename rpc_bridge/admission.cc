#include "rpc_bridge/admission.h"

#include <algorithm>
#include <utility>

namespace llmbridge::rpc {

Admission::Admission(Limits limits)
    : limits_(limits), slots_(static_cast<size_t>(std::max(limits.slots, 1))) {}

std::optional<int> Admission::Pick(Kind kind) const {
  std::optional<int> best;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (!s.open) continue;
    if (kind == Kind::kAdmitted && s.capacity > 0 && s.in_flight >= s.capacity) {
      continue;
    }
    if (!best.has_value() || s.in_flight < slots_[static_cast<size_t>(*best)].in_flight) {
      best = static_cast<int>(i);
    }
  }
  return best;
}

Admission::Decision Admission::Offer(CallId id, Kind kind, Clock::time_point now) {
  // Admitted calls keep their order: a new one never passes a queued one.
  const bool wait_behind = kind == Kind::kAdmitted && queued_admitted_ > 0;
  if (!wait_behind) {
    if (std::optional<int> slot = Pick(kind)) {
      if (kind == Kind::kAdmitted) ++slots_[static_cast<size_t>(*slot)].in_flight;
      return {Verdict::kSend, *slot};
    }
  }
  int& queued = kind == Kind::kAdmitted ? queued_admitted_ : queued_control_;
  const int bound =
      kind == Kind::kAdmitted ? limits_.max_queue : limits_.max_control_queue;
  if (queued >= bound) return {Verdict::kQueueFull};
  ++queued;
  queue_.push_back({id, kind, now});
  return {Verdict::kQueued};
}

std::vector<Admission::Assignment> Admission::Drain() {
  std::vector<Assignment> out;
  bool admitted_blocked = false;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (it->kind == Kind::kAdmitted && admitted_blocked) {
      ++it;
      continue;
    }
    std::optional<int> slot = Pick(it->kind);
    if (!slot.has_value()) {
      if (it->kind == Kind::kAdmitted) {
        admitted_blocked = true;
      }
      ++it;
      continue;
    }
    if (it->kind == Kind::kAdmitted) {
      ++slots_[static_cast<size_t>(*slot)].in_flight;
      --queued_admitted_;
    } else {
      --queued_control_;
    }
    out.push_back({it->id, *slot});
    it = queue_.erase(it);
  }
  return out;
}

std::vector<Admission::Assignment> Admission::SlotOpened(int slot, int capacity) {
  Slot& s = slots_[static_cast<size_t>(slot)];
  s.open = true;
  s.capacity = capacity > 0 ? capacity : limits_.per_slot;
  return Drain();
}

void Admission::SlotClosed(int slot) { slots_[static_cast<size_t>(slot)].open = false; }

bool Admission::open(int slot) const { return slots_[static_cast<size_t>(slot)].open; }

std::vector<Admission::Assignment> Admission::Release(int slot) {
  Slot& s = slots_[static_cast<size_t>(slot)];
  if (s.in_flight > 0) --s.in_flight;
  return Drain();
}

bool Admission::Remove(CallId id) {
  auto it = std::find_if(queue_.begin(), queue_.end(),
                         [id](const Waiting& w) { return w.id == id; });
  if (it == queue_.end()) return false;
  (it->kind == Kind::kAdmitted ? queued_admitted_ : queued_control_) -= 1;
  queue_.erase(it);
  return true;
}

std::vector<Admission::CallId> Admission::Expire(Clock::time_point now) {
  std::vector<CallId> out;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (now - it->since < limits_.queue_timeout) {
      ++it;
      continue;
    }
    (it->kind == Kind::kAdmitted ? queued_admitted_ : queued_control_) -= 1;
    out.push_back(it->id);
    it = queue_.erase(it);
  }
  return out;
}

std::optional<Admission::Clock::time_point> Admission::NextExpiry() const {
  // Every call waits the same timeout, so the oldest expires first.
  if (queue_.empty()) return std::nullopt;
  return queue_.front().since + limits_.queue_timeout;
}

std::vector<Admission::CallId> Admission::TakeQueue() {
  std::vector<CallId> out;
  out.reserve(queue_.size());
  for (const Waiting& w : queue_) out.push_back(w.id);
  queue_.clear();
  queued_admitted_ = 0;
  queued_control_ = 0;
  return out;
}

int Admission::in_flight(int slot) const {
  return slots_[static_cast<size_t>(slot)].in_flight;
}

int Admission::in_flight() const {
  int n = 0;
  for (const Slot& s : slots_) n += s.in_flight;
  return n;
}

int Admission::queued(Kind kind) const {
  return kind == Kind::kAdmitted ? queued_admitted_ : queued_control_;
}

int Admission::queued() const { return queued_admitted_ + queued_control_; }

std::optional<Admission::Clock::time_point> Admission::queued_at(CallId id) const {
  for (const Waiting& w : queue_) {
    if (w.id == id) return w.since;
  }
  return std::nullopt;
}

}  // namespace llmbridge::rpc
