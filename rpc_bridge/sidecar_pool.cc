#include "rpc_bridge/sidecar_pool.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "rpc_bridge/admission.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/scheduler.h"
#include "rpc_bridge/sidecar.h"

namespace llmbridge::rpc {

using Clock = std::chrono::steady_clock;

namespace {

std::chrono::milliseconds Millis(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d);
}

}  // namespace

bool PoolStatus::AnyReady() const {
  return std::any_of(slots.begin(), slots.end(), [](const SlotStatus& s) {
    return s.state == SlotState::kReady;
  });
}

bool PoolStatus::Serving() const {
  return !shutting_down &&
         std::any_of(slots.begin(), slots.end(), [](const SlotStatus& s) {
           return s.state == SlotState::kReady && s.backend_ok;
         });
}

bool PoolStatus::Servable() const {
  if (Serving()) return true;
  if (shutting_down || demanded || waiting_for_load) return false;
  return std::all_of(slots.begin(), slots.end(), [](const SlotStatus& s) {
    return s.state == SlotState::kIdle;
  });
}

const char* PoolStatus::LoadState() const {
  if (AnyReady()) return "loaded";
  const bool failed = std::any_of(slots.begin(), slots.end(), [](const SlotStatus& s) {
    return s.state == SlotState::kFailed;
  });
  if (failed) return "failed";
  const bool starting = std::any_of(slots.begin(), slots.end(), [](const SlotStatus& s) {
    return s.state == SlotState::kStarting;
  });
  if (starting || waiting_for_load || demanded) return "loading";
  return "idle";
}

absl::Status PoolStatus::Problem() const {
  if (Serving()) return absl::OkStatus();
  for (const SlotStatus& s : slots) {
    if (s.state == SlotState::kFailed && !s.failure.ok()) return s.failure;
  }
  for (const SlotStatus& s : slots) {
    if (s.state == SlotState::kReady && !s.backend_ok) {
      return absl::UnavailableError(s.health_message);
    }
  }
  return absl::UnavailableError("the sidecar is starting");
}

// One call from Submit to its reply. Guarded by PoolCore::mu_, except the
// user's on_reply, which runs once, outside any lock.
class PoolCall {
 public:
  enum class Phase { kQueued, kSending, kSent, kDone };
  Phase phase = Phase::kQueued;
  PoolCallRequest request;
  Reply<Json> on_reply;  // moved out to run, once, outside mu_
  Admission::CallId admission_id = 0;  // unique in its pool
  int slot = -1;
  std::weak_ptr<Sidecar> sidecar;
  int64_t id = 0;
  std::optional<absl::Status> cancel_when_sent;
  uint64_t deadline_timer = 0;
  uint64_t queue_timer = 0;
  uint64_t settle_timer = 0;
  Clock::time_point queued_at;
  // Its place in admission was given back (the sidecar confirmed its end,
  // or never confirmed a cancel in time).
  bool released = false;
};

// The state behind a SidecarPool, shared with call handles and timers so
// that a late Cancel or timer after the pool is gone finds nothing to do.
class PoolCore : public std::enable_shared_from_this<PoolCore> {
 public:
  explicit PoolCore(PoolOptions options)
      : options_(std::move(options)),
        slots_(static_cast<size_t>(std::max(options_.sidecars, 1))),
        admission_(LimitsOf(options_, slots_.size())) {
    demand_ = options_.preload;
    last_activity_ = Clock::now();
  }

  void StartKeepers() {
    if (options_.load_gate != nullptr) {
      std::weak_ptr<PoolCore> weak = weak_from_this();
      gate_id_ = options_.load_gate->Join(
          {[weak] {
             auto core = weak.lock();
             return core != nullptr && core->UnloadIfIdle();
           },
           [weak] {
             if (auto core = weak.lock()) core->WakeForGate();
           }});
    }
    for (size_t i = 0; i < slots_.size(); ++i) {
      keepers_.emplace_back([this, i] { Keep(static_cast<int>(i)); });
    }
  }

  const PoolOptions& options() const { return options_; }

  PoolCallHandle Submit(PoolCallRequest request);
  void Cancel(const std::shared_ptr<PoolCall>& call, const absl::Status& why);
  PoolStatus Status() const;
  absl::Status WaitReady(std::chrono::milliseconds timeout);
  void Unload();
  void Shutdown();
  // LoadGate callbacks: never block.
  bool UnloadIfIdle();
  void WakeForGate();

 private:
  // What Status() publishes of a slot (state, pid, in_flight, failure,
  // backend_ok, health_message), and what only its keeper needs.
  struct Slot : SlotStatus {
    std::shared_ptr<Sidecar> sidecar;  // set while kReady
    int failures = 0;  // consecutive failed starts and quick deaths
    Clock::time_point ready_at;
    // A call ended well on this sidecar since it became ready: its death
    // is then not part of a crash loop, however soon it comes.
    bool served = false;
    // Events for the keeper, from the sidecar's threads.
    bool closed = false;
    bool stalled = false;
    absl::Status stall_why;
    uint64_t unload_seen = 0;  // the last Unload generation this slot honoured
  };

  using End = SidecarEnd;

  struct Dispatch {
    std::shared_ptr<PoolCall> call;
    std::shared_ptr<Sidecar> sidecar;
  };

  static Admission::Limits LimitsOf(const PoolOptions& options, size_t slots) {
    Admission::Limits limits;
    limits.slots = static_cast<int>(slots);
    limits.per_slot = options.max_concurrent;
    limits.max_queue = options.max_queue;
    limits.max_control_queue = options.max_control_queue;
    limits.queue_timeout = options.queue_timeout;
    return limits;
  }

  static RestartRecord Record(const Slot& slot) {
    return RestartRecord{slot.failures, slot.ready_at, slot.served};
  }

  void Keep(int index);
  std::shared_ptr<Sidecar> StartOne(int index, absl::Status& failure)
      ABSL_LOCKS_EXCLUDED(mu_);
  End Supervise(std::unique_lock<std::mutex>& lock, int index,
                const std::shared_ptr<Sidecar>& sidecar)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Interrupted(const Slot& slot) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Wanted() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IdleExpired() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  int Capacity(const Slot& slot) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Usable(const Slot& slot) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tells admission whether slot `index` takes calls now; returns the
  // queued calls to send to it when it opened.
  std::vector<Dispatch> UpdateOpen(int index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AnyOpen() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An unload began: no slot takes new calls.
  void CloseAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Hopeful() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status LatestFailure() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int InFlight() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Assign(const std::shared_ptr<PoolCall>& call, int slot,
              std::vector<Dispatch>& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The queued calls that admission handed out, made ready to send.
  std::vector<Dispatch> ToDispatches(const std::vector<Admission::Assignment>& sent)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives an admitted call's place back, once; returns what to send next.
  std::vector<Dispatch> Release(const std::shared_ptr<PoolCall>& call)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<PoolCall> Unqueue(Admission::CallId id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::shared_ptr<PoolCall>> TakeQueue()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReportLoad() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the pool must give its LoadGate place back now: it holds one
  // and no sidecar of it is running or starting.
  // The gate id to Release (outside the lock) when the pool holds a place
  // and no sidecar of it is running or starting any more.
  std::optional<int> ReleaseGateIfDone() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void Send(std::vector<Dispatch> dispatches) ABSL_LOCKS_EXCLUDED(mu_);
  void OnReplied(const std::shared_ptr<PoolCall>& call,
                 absl::StatusOr<Json> reply) ABSL_LOCKS_EXCLUDED(mu_);
  // The sidecar is done with the call (its reply, or its answer to our
  // cancel), or `forced`: it never confirmed a cancel in time.
  void OnSettled(const std::shared_ptr<PoolCall>& call, bool forced)
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnQueueTimeout();
  absl::Status QueueTimeoutStatus() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Finish(const std::shared_ptr<PoolCall>& call,
                     absl::StatusOr<Json> reply);
  static void FailAll(std::vector<std::shared_ptr<PoolCall>> calls,
                      const absl::Status& why);
  void StateChanged() ABSL_LOCKS_EXCLUDED(mu_);
  void Event(std::string_view event, Json fields) ABSL_LOCKS_EXCLUDED(mu_);

  const PoolOptions options_;
  Scheduler scheduler_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // keepers and WaitReady/Unload waiters
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  Admission admission_ ABSL_GUARDED_BY(mu_);
  // The calls admission holds in its queue, by admission id.
  std::unordered_map<Admission::CallId, std::shared_ptr<PoolCall>> queued_
      ABSL_GUARDED_BY(mu_);
  Admission::CallId next_admission_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool demand_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t unload_generation_ ABSL_GUARDED_BY(mu_) = 0;
  Clock::time_point last_activity_ ABSL_GUARDED_BY(mu_);
  int starts_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<InitResult> init_ ABSL_GUARDED_BY(mu_);
  int gate_id_ = -1;  // set before the keepers start
  bool gate_held_ ABSL_GUARDED_BY(mu_) = false;
  bool gate_wake_ ABSL_GUARDED_BY(mu_) = false;
  bool waiting_for_gate_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> keepers_;
};

// --- Admission and dispatch --------------------------------------------------

int PoolCore::Capacity(const Slot& slot) const {
  // A seed-style sidecar routes untagged stream notifications to its one
  // stream: never give it two.
  if (slot.sidecar != nullptr && !slot.sidecar->init_result().stream_request_id) {
    return 1;
  }
  if (options_.max_concurrent > 0) return options_.max_concurrent;
  // An engine that batches says how many sequences it decodes together;
  // more would only wait inside it, out of admission's sight.
  if (slot.sidecar != nullptr) {
    const Json& caps = slot.sidecar->init_result().capabilities;
    const Json reported = caps.is_object() ? caps.value("max_sequences", Json()) : Json();
    if (reported.is_number_integer() && reported.get<int64_t>() >= 1 &&
        reported.get<int64_t>() <= 4096) {
      return static_cast<int>(reported.get<int64_t>());
    }
  }
  return options_.unreported_concurrent > 0 ? options_.unreported_concurrent : INT_MAX;
}

bool PoolCore::Usable(const Slot& s) const {
  if (s.state != SlotState::kReady || s.sidecar == nullptr) return false;
  // A dying sidecar takes no new calls: they wait for its replacement.
  if (s.closed || s.stalled) return false;
  // Nor one being unloaded: a call must never start on it.
  return s.unload_seen == unload_generation_;
}

std::vector<PoolCore::Dispatch> PoolCore::UpdateOpen(int index) {
  const Slot& s = slots_[static_cast<size_t>(index)];
  const bool usable = Usable(s);
  if (usable == admission_.open(index)) return {};
  if (!usable) {
    admission_.SlotClosed(index);
    return {};
  }
  return ToDispatches(admission_.SlotOpened(index, Capacity(s)));
}

void PoolCore::CloseAll() {
  for (size_t i = 0; i < slots_.size(); ++i) UpdateOpen(static_cast<int>(i));
}

bool PoolCore::AnyOpen() const {
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (admission_.open(static_cast<int>(i))) return true;
  }
  return false;
}

bool PoolCore::Hopeful() const {
  for (const Slot& s : slots_) {
    if (s.state == SlotState::kReady || s.state == SlotState::kStarting) {
      return true;
    }
    if (s.state == SlotState::kIdle) return true;  // starts on this demand
  }
  return false;
}

absl::Status PoolCore::LatestFailure() const {
  for (const Slot& s : slots_) {
    if (!s.failure.ok()) return s.failure;
  }
  return WithReason(absl::UnavailableError("no sidecar is running"),
                    reason::kSidecarUnavailable);
}

int PoolCore::InFlight() const { return admission_.in_flight(); }

void PoolCore::ReportLoad() {
  if (options_.observer != nullptr) {
    options_.observer->OnLoad(InFlight(), admission_.queued());
  }
}

void PoolCore::Assign(const std::shared_ptr<PoolCall>& call, int index,
                      std::vector<Dispatch>& out) {
  Slot& slot = slots_[static_cast<size_t>(index)];
  call->phase = PoolCall::Phase::kSending;
  call->slot = index;
  call->sidecar = slot.sidecar;
  // The id is known before the request goes out, so a Cancel racing the
  // send still reaches the sidecar as $/cancelRequest.
  call->id = slot.sidecar->dispatcher().ReserveId();
  scheduler_.Cancel(std::exchange(call->queue_timer, 0));
  out.push_back({call, slot.sidecar});
}

std::vector<PoolCore::Dispatch> PoolCore::ToDispatches(
    const std::vector<Admission::Assignment>& sent) {
  std::vector<Dispatch> out;
  for (const Admission::Assignment& a : sent) {
    std::shared_ptr<PoolCall> call = Unqueue(a.id);
    if (call == nullptr) continue;
    if (call->request.admission && options_.observer != nullptr) {
      options_.observer->OnAdmitted(Clock::now() - call->queued_at);
    }
    Assign(call, a.slot, out);
  }
  if (!out.empty()) ReportLoad();
  return out;
}

std::shared_ptr<PoolCall> PoolCore::Unqueue(Admission::CallId id) {
  auto it = queued_.find(id);
  if (it == queued_.end()) return nullptr;
  std::shared_ptr<PoolCall> call = std::move(it->second);
  queued_.erase(it);
  return call;
}

std::vector<PoolCore::Dispatch> PoolCore::Release(const std::shared_ptr<PoolCall>& call) {
  if (call->released || !call->request.admission || call->slot < 0) return {};
  call->released = true;
  scheduler_.Cancel(std::exchange(call->settle_timer, 0));
  return ToDispatches(admission_.Release(call->slot));
}

std::vector<std::shared_ptr<PoolCall>> PoolCore::TakeQueue() {
  std::vector<std::shared_ptr<PoolCall>> calls;
  for (Admission::CallId id : admission_.TakeQueue()) {
    if (std::shared_ptr<PoolCall> call = Unqueue(id)) calls.push_back(std::move(call));
  }
  for (const auto& call : calls) {
    call->phase = PoolCall::Phase::kDone;
    scheduler_.Cancel(std::exchange(call->queue_timer, 0));
    scheduler_.Cancel(std::exchange(call->deadline_timer, 0));
  }
  ReportLoad();
  return calls;
}

void PoolCore::Finish(const std::shared_ptr<PoolCall>& call,
                      absl::StatusOr<Json> reply) {
  Reply<Json> on_reply = std::move(call->on_reply);
  std::move(on_reply).Finish(std::move(reply));
}

void PoolCore::FailAll(std::vector<std::shared_ptr<PoolCall>> calls,
                       const absl::Status& why) {
  for (const auto& call : calls) Finish(call, why);
}

PoolCallHandle PoolCore::Submit(PoolCallRequest request) {
  auto call = std::make_shared<PoolCall>();
  call->on_reply = std::move(request.handlers.on_reply);
  call->request = std::move(request);
  PoolCallHandle handle(weak_from_this(), call);
  std::vector<Dispatch> now;
  absl::Status refused;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool admission = call->request.admission;
    if (shutting_down_) {
      refused = WithReason(
          absl::UnavailableError(
              "the server is shutting down; retry on another instance"),
          reason::kShuttingDown);
    } else if (call->request.only_if_ready && !AnyOpen()) {
      refused = absl::FailedPreconditionError("no sidecar is ready");
    } else if (!AnyOpen() && !Hopeful()) {
      refused = LatestFailure();
    }
    if (refused.ok()) {
      if (!call->request.only_if_ready) {
        last_activity_ = Clock::now();
        if (!demand_) {
          demand_ = true;  // on-demand pools start now
          cv_.notify_all();
        }
      }
      call->admission_id = ++next_admission_id_;
      call->queued_at = Clock::now();
      const Admission::Decision decision = admission_.Offer(
          call->admission_id,
          admission ? Admission::Kind::kAdmitted : Admission::Kind::kControl,
          call->queued_at);
      switch (decision.verdict) {
        case Admission::Verdict::kSend:
          Assign(call, decision.slot, now);
          ReportLoad();
          break;
        case Admission::Verdict::kQueued: {
          queued_[call->admission_id] = call;
          std::weak_ptr<PoolCore> weak = weak_from_this();
          call->queue_timer = scheduler_.Schedule(
              call->queued_at + options_.queue_timeout, [weak] {
                if (auto core = weak.lock()) core->OnQueueTimeout();
              });
          ReportLoad();
          break;
        }
        case Admission::Verdict::kQueueFull:
          refused = WithReason(
              absl::ResourceExhaustedError(
                  admission
                      ? absl::StrCat("the server is at capacity for backend ",
                                     options_.sidecar.config.backend, ": ", InFlight(),
                                     " requests in flight and ",
                                     admission_.queued(Admission::Kind::kAdmitted),
                                     " queued; retry shortly")
                      : absl::StrCat("too many requests are waiting for backend ",
                                     options_.sidecar.config.backend,
                                     " to become ready (",
                                     admission_.queued(Admission::Kind::kControl),
                                     " queued); retry shortly")),
              reason::kOverloaded);
          if (admission) refused = WithLimits(refused, {limit::kMaxConcurrent, limit::kMaxQueue});
          if (options_.observer != nullptr) options_.observer->OnRejected();
          break;
      }
      if (refused.ok() && call->request.deadline.has_value()) {
        std::weak_ptr<PoolCore> weak = weak_from_this();
        std::weak_ptr<PoolCall> weak_call = call;
        call->deadline_timer = scheduler_.Schedule(
            *call->request.deadline, [weak, weak_call] {
              auto core = weak.lock();
              auto c = weak_call.lock();
              if (core == nullptr || c == nullptr) return;
              core->Cancel(
                  c, WithLimits(WithReason(absl::DeadlineExceededError(
                                               "the request's deadline passed before the "
                                               "model finished; raise the deadline or the "
                                               "request timeout, or lower max_tokens"),
                                           reason::kDeadlineExceeded),
                                {limit::kRequestTimeout}));
            });
      }
    }
    if (!refused.ok()) call->phase = PoolCall::Phase::kDone;
  }
  if (!refused.ok()) {
    Finish(call, refused);
    return handle;
  }
  if (options_.load_gate != nullptr && call->request.admission) {
    options_.load_gate->Touch(gate_id_);
  }
  Send(std::move(now));
  return handle;
}

void PoolCore::Send(std::vector<Dispatch> dispatches) {
  for (Dispatch& d : dispatches) {
    const std::shared_ptr<PoolCall>& call = d.call;
    CallHandlers handlers;
    handlers.on_chunk = std::move(call->request.handlers.on_chunk);
    handlers.on_notification = std::move(call->request.handlers.on_notification);
    std::weak_ptr<PoolCore> weak = weak_from_this();
    handlers.on_reply = [weak, call](absl::StatusOr<Json> reply) {
      if (auto core = weak.lock()) {
        core->OnReplied(call, std::move(reply));
      } else {
        Finish(call, std::move(reply));
      }
    };
    handlers.on_settled = [weak, call] {
      if (auto core = weak.lock()) core->OnSettled(call, /*forced=*/false);
    };
    Json params = std::move(call->request.params);
    if (call->request.send_timeout && call->request.deadline.has_value()) {
      auto left = std::max(Millis(*call->request.deadline - Clock::now()),
                           std::chrono::milliseconds(1));
      params["timeout_s"] = static_cast<double>(left.count()) / 1000.0;
    }
    Dispatcher& dispatcher = d.sidecar->dispatcher();
    dispatcher.CallWithId(call->id, call->request.method, std::move(params),
                          std::move(handlers));
    std::optional<absl::Status> cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (call->phase == PoolCall::Phase::kSending) {
        call->phase = PoolCall::Phase::kSent;
      }
      cancel = std::exchange(call->cancel_when_sent, std::nullopt);
    }
    // Cancelled while it was being sent: the dispatcher knows it now.
    if (cancel.has_value()) Cancel(call, *cancel);
  }
}

void PoolCore::OnReplied(const std::shared_ptr<PoolCall>& call,
                         absl::StatusOr<Json> reply) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    call->phase = PoolCall::Phase::kDone;
    call->cancel_when_sent.reset();
    scheduler_.Cancel(std::exchange(call->deadline_timer, 0));
    if (call->request.admission && call->slot >= 0) {
      Slot& slot = slots_[static_cast<size_t>(call->slot)];
      if (reply.ok() && slot.sidecar != nullptr &&
          slot.sidecar == call->sidecar.lock()) {
        slot.served = true;
      }
    }
    last_activity_ = Clock::now();
  }
  // The caller has its answer now; the call's place in admission is given
  // back when the sidecar confirms it is done (OnSettled), which for a
  // reply is right after this.
  Finish(call, std::move(reply));
}

void PoolCore::OnSettled(const std::shared_ptr<PoolCall>& call, bool forced) {
  std::vector<Dispatch> next;
  bool idle = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (call->released) return;
    if (forced) {
      Event("cancel_unconfirmed",
            {{"slot", call->slot},
             {"call_id", call->id},
             {"waited_ms", options_.health_timeout.count()}});
    }
    next = Release(call);
    ReportLoad();
    if (InFlight() == 0 && options_.keep_alive.count() > 0) cv_.notify_all();
    idle = InFlight() == 0 && admission_.queued() == 0;
  }
  if (idle && options_.load_gate != nullptr) options_.load_gate->Idle(gate_id_);
  Send(std::move(next));
}

void PoolCore::Cancel(const std::shared_ptr<PoolCall>& call,
                      const absl::Status& why) {
  std::shared_ptr<Sidecar> sidecar;
  int64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    switch (call->phase) {
      case PoolCall::Phase::kDone:
        return;
      case PoolCall::Phase::kSending:
        if (!call->cancel_when_sent.has_value()) call->cancel_when_sent = why;
        return;
      case PoolCall::Phase::kSent: {
        sidecar = call->sidecar.lock();
        id = call->id;
        // The sidecar answers a cancel when its work stopped; if it never
        // does, the call's place is given back after health_timeout.
        if (call->request.admission && call->settle_timer == 0) {
          std::weak_ptr<PoolCore> weak = weak_from_this();
          std::weak_ptr<PoolCall> weak_call = call;
          call->settle_timer = scheduler_.Schedule(
              Clock::now() + options_.health_timeout, [weak, weak_call] {
                auto core = weak.lock();
                auto c = weak_call.lock();
                if (core != nullptr && c != nullptr) core->OnSettled(c, /*forced=*/true);
              });
        }
        break;
      }
      case PoolCall::Phase::kQueued: {
        admission_.Remove(call->admission_id);
        queued_.erase(call->admission_id);
        call->phase = PoolCall::Phase::kDone;
        scheduler_.Cancel(std::exchange(call->queue_timer, 0));
        scheduler_.Cancel(std::exchange(call->deadline_timer, 0));
        ReportLoad();
        break;
      }
    }
  }
  if (sidecar == nullptr) {
    // Queued: it ends here. (Sent to a sidecar that is gone: that sidecar
    // failed and settled its calls before it went, so on_reply ran already.)
    if (id == 0) Finish(call, why);
    return;
  }
  // The dispatcher tells the sidecar and replies `why`, unless the reply
  // already came; it settles the call when the sidecar answers the cancel.
  sidecar->dispatcher().Cancel(id, why);
}

absl::Status PoolCore::QueueTimeoutStatus() {
  const auto waited = Millis(options_.queue_timeout).count();
  const bool any_ready = std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) {
    return s.state == SlotState::kReady;
  });
  if (!any_ready && waiting_for_gate_) {
    if (options_.observer != nullptr) options_.observer->OnRejected();
    return WithLimits(
        WithReason(absl::ResourceExhaustedError(absl::StrCat(
                       "the model waited ", waited, " ms for a place to load: ",
                       options_.load_gate->max_loaded(),
                       " models are loaded, the most allowed, and all of them are "
                       "busy; retry later, or allow more loaded models")),
                   reason::kOverloaded),
        {limit::kQueueTimeout, limit::kMaxLoadedModels});
  }
  if (!any_ready) {
    return WithLimits(WithReason(absl::UnavailableError(absl::StrCat(
                                     "the sidecar was still starting (loading the model) "
                                     "after this request waited ",
                                     waited, " ms; retry shortly")),
                                 reason::kSidecarUnavailable),
                      {limit::kQueueTimeout});
  }
  if (options_.observer != nullptr) options_.observer->OnRejected();
  return WithLimits(WithReason(absl::ResourceExhaustedError(absl::StrCat(
                                   "the request waited ", waited,
                                   " ms in the queue without a free sidecar: the "
                                   "server is overloaded; retry later")),
                               reason::kOverloaded),
                    {limit::kQueueTimeout});
}

void PoolCore::OnQueueTimeout() {
  std::vector<std::pair<std::shared_ptr<PoolCall>, absl::Status>> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Admission::CallId id : admission_.Expire(Clock::now())) {
      std::shared_ptr<PoolCall> call = Unqueue(id);
      if (call == nullptr) continue;
      call->phase = PoolCall::Phase::kDone;
      call->queue_timer = 0;
      scheduler_.Cancel(std::exchange(call->deadline_timer, 0));
      expired.emplace_back(std::move(call), QueueTimeoutStatus());
    }
    if (!expired.empty()) ReportLoad();
  }
  for (auto& [call, why] : expired) Finish(call, why);
}

// --- Keepers -----------------------------------------------------------------

bool PoolCore::Wanted() const { return demand_ || admission_.queued() > 0; }

bool PoolCore::IdleExpired() const {
  return options_.keep_alive.count() > 0 && admission_.queued() == 0 && InFlight() == 0 &&
         Clock::now() - last_activity_ >= options_.keep_alive;
}

bool PoolCore::Interrupted(const Slot& slot) const {
  return shutting_down_ || slot.unload_seen != unload_generation_;
}

void PoolCore::StateChanged() {
  cv_.notify_all();
  if (options_.observer != nullptr) options_.observer->OnStateChanged();
}

void PoolCore::Event(std::string_view event, Json fields) {
  if (options_.observer != nullptr) options_.observer->OnSidecarEvent(event, fields);
}

std::shared_ptr<Sidecar> PoolCore::StartOne(int index, absl::Status& failure) {
  SidecarOptions sidecar_options = options_.sidecar;
  auto pid = std::make_shared<std::atomic<pid_t>>(-1);
  PoolObserver* observer = options_.observer;
  if (observer != nullptr) {
    sidecar_options.on_stderr_line = [observer, index, pid](std::string_view line) {
      observer->OnSidecarStderr(index, pid->load(), line);
    };
  }
  SidecarEvents events;
  events.on_closed = [this, index] {
    std::lock_guard<std::mutex> lock(mu_);
    slots_[static_cast<size_t>(index)].closed = true;
    UpdateOpen(index);  // closes it: it takes nothing new
    cv_.notify_all();
  };
  events.on_stalled = [this, index](const absl::Status& why) {
    std::lock_guard<std::mutex> lock(mu_);
    Slot& slot = slots_[static_cast<size_t>(index)];
    slot.stalled = true;
    slot.stall_why = why;
    UpdateOpen(index);  // closes it: it takes nothing new
    cv_.notify_all();
  };
  events.on_bad_line = [observer, index](const absl::Status& why,
                                         std::string_view line) {
    if (observer != nullptr) observer->OnProtocolError(index, why, line);
  };
  absl::StatusOr<std::unique_ptr<Sidecar>> spawned =
      Sidecar::Spawn(std::move(sidecar_options), std::move(events));
  if (!spawned.ok()) {
    failure = spawned.status();
    Event("sidecar_start_failed",
          {{"slot", index}, {"error", std::string(failure.message())}});
    return nullptr;
  }
  std::shared_ptr<Sidecar> sidecar(*std::move(spawned));
  pid->store(sidecar->pid());
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++starts_;
    slots_[static_cast<size_t>(index)].pid = sidecar->pid();
  }
  Event("sidecar_started", {{"slot", index}, {"pid", sidecar->pid()}});

  struct InitOutcome {
    std::optional<absl::Status> status;
  };
  auto outcome = std::make_shared<InitOutcome>();
  sidecar->SendInit([this, outcome](absl::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    outcome->status = std::move(status);
    cv_.notify_all();
  });
  const auto timeout = options_.sidecar.config.startup_timeout;
  const auto deadline = Clock::now() + timeout;
  bool interrupted = false;
  {
    std::unique_lock<std::mutex> lock(mu_);
    Slot& slot = slots_[static_cast<size_t>(index)];
    cv_.wait_until(lock, deadline, [&] {
      return outcome->status.has_value() || Interrupted(slot);
    });
    if (outcome->status.has_value()) {
      failure = *outcome->status;
    } else if (Interrupted(slot)) {
      interrupted = true;
      failure = WithReason(absl::UnavailableError("the sidecar start was interrupted"),
                           reason::kSidecarUnavailable);
    } else {
      failure = WithLimits(
          WithReason(absl::UnavailableError(absl::StrCat(
                         "the sidecar was not ready within ", timeout.count(),
                         " ms (allow a longer start if the model loads slowly)")),
                     reason::kSidecarUnavailable),
          {limit::kStartupTimeout});
    }
  }
  if (failure.ok()) return sidecar;
  // Not ready: a hung init is killed, an error reply stopped politely.
  if (!outcome->status.has_value() && !interrupted) sidecar->Kill();
  ExitInfo exit = sidecar->Stop();
  Event("sidecar_start_failed",
        {{"slot", index},
         {"pid", sidecar->pid()},
         {"error", std::string(failure.message())},
         {"exit", exit.Describe()},
         {"stderr_tail", sidecar->StderrTail()}});
  return nullptr;
}

PoolCore::End PoolCore::Supervise(std::unique_lock<std::mutex>& lock, int index,
                                  const std::shared_ptr<Sidecar>& sidecar) {
  Slot& slot = slots_[static_cast<size_t>(index)];
  auto next_probe = Clock::now() + options_.health_interval;
  while (true) {
    auto wake = next_probe;
    if (options_.keep_alive.count() > 0) {
      wake = std::min(wake, last_activity_ + options_.keep_alive);
    }
    cv_.wait_until(lock, wake, [&] {
      return Interrupted(slot) || slot.closed || slot.stalled || IdleExpired();
    });
    if (shutting_down_) return End::kShutdown;
    if (slot.unload_seen != unload_generation_) return End::kUnload;
    if (slot.closed) return End::kExited;
    if (slot.stalled) return End::kStalled;
    if (IdleExpired()) return End::kIdle;
    if (Clock::now() < next_probe) continue;

    // A health probe: the sidecar must answer it (or it is replaced); its
    // answer says whether the backend serves.
    auto probe = std::make_shared<std::optional<absl::StatusOr<Json>>>();
    lock.unlock();
    const int64_t probe_id = sidecar->dispatcher().Call(
        kMethodHealth, Json::object(),
        {nullptr, nullptr, [this, probe](absl::StatusOr<Json> reply) {
           std::lock_guard<std::mutex> l(mu_);
           *probe = std::move(reply);
           cv_.notify_all();
         }});
    lock.lock();
    const auto probe_deadline = Clock::now() + options_.health_timeout;
    cv_.wait_until(lock, probe_deadline, [&] {
      return probe->has_value() || Interrupted(slot) || slot.closed || slot.stalled;
    });
    if (!probe->has_value()) {
      lock.unlock();
      sidecar->dispatcher().Cancel(probe_id, absl::CancelledError("probe over"));
      lock.lock();
      if (Interrupted(slot) || slot.closed || slot.stalled) continue;
      return End::kUnresponsive;
    }
    bool ok = false;
    std::string message;
    const absl::StatusOr<Json>& reply = **probe;
    if (reply.ok()) {
      const Json& r = *reply;
      auto ok_it = r.is_object() ? r.find("ok") : r.end();
      ok = r.is_object() && ok_it != r.end() && ok_it->is_boolean() &&
           ok_it->get<bool>();
      auto msg = r.is_object() ? r.find("message") : r.end();
      message = r.is_object() && msg != r.end() && msg->is_string()
                    ? msg->get<std::string>()
                    : (ok ? "backend healthy" : "backend unhealthy");
    } else if (absl::IsUnimplemented(reply.status())) {
      // A seed-style sidecar has no health method: answering is all we know.
      ok = true;
      message = "sidecar running (it has no health method)";
    } else {
      message = std::string(reply.status().message());
    }
    next_probe = Clock::now() + options_.health_interval;
    if (ok != slot.backend_ok || message != slot.health_message) {
      const bool changed = ok != slot.backend_ok;
      slot.backend_ok = ok;
      slot.health_message = message;
      if (changed) {
        lock.unlock();
        StateChanged();
        Event("backend_health", {{"slot", index}, {"ok", ok}, {"message", message}});
        lock.lock();
      }
    }
  }
}

void PoolCore::Keep(int index) {
  std::unique_lock<std::mutex> lock(mu_);
  Slot& slot = slots_[static_cast<size_t>(index)];
  const RestartPolicy& policy = options_.restart;
  while (!shutting_down_) {
    if (slot.unload_seen != unload_generation_) {
      slot.unload_seen = unload_generation_;
      cv_.notify_all();  // Unload waits for every keeper to come by here
    }
    if (!Wanted()) {
      waiting_for_gate_ = false;
      if (slot.state != SlotState::kIdle) {
        slot.state = SlotState::kIdle;
        slot.failure = absl::OkStatus();
        lock.unlock();
        StateChanged();
        lock.lock();
      }
      std::optional<int> release = ReleaseGateIfDone();
      if (release.has_value()) {
        lock.unlock();
        options_.load_gate->Release(*release);
        lock.lock();
      }
      cv_.wait(lock, [&] {
        return shutting_down_ || Wanted() || slot.unload_seen != unload_generation_;
      });
      continue;
    }

    // A place to load, when models share a bound (--max_loaded_models).
    if (options_.load_gate != nullptr && !gate_held_) {
      lock.unlock();
      const bool got = options_.load_gate->TryAcquire(gate_id_);
      lock.lock();
      if (!got) {
        if (!waiting_for_gate_) {
          waiting_for_gate_ = true;
          lock.unlock();
          StateChanged();
          lock.lock();
        }
        cv_.wait(lock, [&] { return gate_wake_ || Interrupted(slot) || !Wanted(); });
        gate_wake_ = false;
        continue;
      }
      gate_held_ = true;
      waiting_for_gate_ = false;
    }

    // Start.
    slot.state = SlotState::kStarting;
    slot.closed = false;
    slot.stalled = false;
    lock.unlock();
    StateChanged();
    absl::Status failure;
    std::shared_ptr<Sidecar> sidecar = StartOne(index, failure);
    lock.lock();
    if (sidecar == nullptr) {
      if (Interrupted(slot)) continue;
      const RestartDecision d = AfterFailedStart(policy, Record(slot));
      slot.failures = d.failures;
      // A client that retries sooner than the next start meets this again.
      failure = WithRetryDelay(std::move(failure), d.retry_delay);
      slot.state = d.state;
      slot.failure = failure;
      slot.pid = -1;
      std::vector<std::shared_ptr<PoolCall>> hopeless;
      if (!Hopeful()) hopeless = TakeQueue();
      const auto retry_at = Clock::now() + d.wait;
      std::optional<int> release = ReleaseGateIfDone();
      lock.unlock();
      if (release.has_value()) options_.load_gate->Release(*release);
      StateChanged();
      FailAll(std::move(hopeless), failure);
      lock.lock();
      cv_.wait_until(lock, retry_at, [&] { return Interrupted(slot); });
      continue;
    }
    slot.sidecar = sidecar;
    slot.pid = sidecar->pid();
    slot.state = SlotState::kReady;
    slot.failure = absl::OkStatus();
    // The init just checked the backend; probes keep it honest.
    slot.backend_ok = true;
    slot.health_message = "ready";
    slot.ready_at = Clock::now();
    slot.served = false;
    init_ = sidecar->init_result();
    std::vector<Dispatch> waiting = UpdateOpen(index);
    lock.unlock();
    StateChanged();
    Event("sidecar_ready", {{"slot", index},
                            {"pid", sidecar->pid()},
                            {"message", sidecar->init_result().message}});
    Send(std::move(waiting));
    lock.lock();

    // Supervise until it must go.
    const End end = Supervise(lock, index, sidecar);
    slot.sidecar = nullptr;
    UpdateOpen(index);  // closes it
    slot.backend_ok = false;
    const bool crashed = IsCrash(end);
    const RestartDecision decision = AfterEnd(policy, Record(slot), end, Clock::now());
    slot.failures = decision.failures;
    // While it stops: calls wait for the replacement of a crashed one.
    slot.state = crashed ? SlotState::kStarting : SlotState::kIdle;
    if (end == End::kIdle && admission_.queued() == 0) demand_ = false;
    const absl::Status stall_why = slot.stall_why;
    lock.unlock();
    StateChanged();
    if (end == End::kStalled || end == End::kUnresponsive) sidecar->Kill();
    const ExitInfo exit = sidecar->Stop();
    Json fields = {{"slot", index},
                   {"pid", sidecar->pid()},
                   {"why", SidecarEndName(end)},
                   {"exit", exit.Describe()}};
    if (crashed) fields["stderr_tail"] = sidecar->StderrTail();
    if (end == End::kStalled) fields["error"] = std::string(stall_why.message());
    Event(crashed ? (end == End::kExited ? "sidecar_exited" : "sidecar_replaced")
                  : "sidecar_unloaded",
          std::move(fields));
    sidecar.reset();
    lock.lock();
    slot.pid = -1;
    std::optional<int> release = ReleaseGateIfDone();
    lock.unlock();
    if (release.has_value()) options_.load_gate->Release(*release);
    StateChanged();
    lock.lock();
    if (decision.failed) {
      slot.state = decision.state;
      slot.failure = WithRetryDelay(
          WithReason(absl::UnavailableError(absl::StrCat(
                         "the sidecar keeps dying right after it starts (", slot.failures,
                         " times in a row, last: ", exit.Describe(),
                         "); see the server log. Retrying in ",
                         Millis(decision.wait).count(), " ms")),
                     reason::kSidecarUnavailable),
          decision.retry_delay);
      std::vector<std::shared_ptr<PoolCall>> hopeless;
      if (!Hopeful()) hopeless = TakeQueue();
      const absl::Status failure_now = slot.failure;
      lock.unlock();
      StateChanged();
      FailAll(std::move(hopeless), failure_now);
      lock.lock();
    }
    if (crashed) {
      const auto retry_at = Clock::now() + decision.wait;
      cv_.wait_until(lock, retry_at, [&] { return Interrupted(slot); });
    }
  }
  slot.state = SlotState::kIdle;
}

// --- Load gate ---------------------------------------------------------------

std::optional<int> PoolCore::ReleaseGateIfDone() {
  if (!gate_held_) return std::nullopt;
  for (const Slot& s : slots_) {
    if (s.state == SlotState::kReady || s.state == SlotState::kStarting ||
        s.pid > 0) {
      return std::nullopt;
    }
  }
  gate_held_ = false;
  return gate_id_;
}

bool PoolCore::UnloadIfIdle() {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_ || InFlight() > 0 || admission_.queued() > 0 || !gate_held_) {
    return false;
  }
  ++unload_generation_;
  CloseAll();
  demand_ = false;
  cv_.notify_all();
  return true;
}

void PoolCore::WakeForGate() {
  std::lock_guard<std::mutex> lock(mu_);
  gate_wake_ = true;
  cv_.notify_all();
}

// --- Status and control ------------------------------------------------------

PoolStatus PoolCore::Status() const {
  std::lock_guard<std::mutex> lock(mu_);
  PoolStatus status;
  for (size_t i = 0; i < slots_.size(); ++i) {
    status.slots.push_back(static_cast<const SlotStatus&>(slots_[i]));
    status.slots.back().in_flight = admission_.in_flight(static_cast<int>(i));
  }
  status.in_flight = InFlight();
  status.queued = admission_.queued();
  status.starts = starts_;
  status.shutting_down = shutting_down_;
  status.init = init_;
  status.waiting_for_load = waiting_for_gate_;
  status.demanded = Wanted();
  return status;
}

absl::Status PoolCore::WaitReady(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!demand_) {
    demand_ = true;
    cv_.notify_all();
  }
  absl::Status result;
  const bool settled = cv_.wait_for(lock, timeout, [&] {
    if (shutting_down_) {
      result = WithReason(absl::UnavailableError("the pool is shut down"),
                          reason::kShuttingDown);
      return true;
    }
    if (AnyOpen()) {
      result = absl::OkStatus();
      return true;
    }
    if (!Hopeful()) {
      result = LatestFailure();
      return true;
    }
    return false;
  });
  if (!settled) {
    return WithReason(absl::UnavailableError(absl::StrCat(
                          "no sidecar became ready within ", timeout.count(), " ms")),
                      reason::kSidecarUnavailable);
  }
  return result;
}

void PoolCore::Unload() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t generation = ++unload_generation_;
  CloseAll();
  if (admission_.queued() == 0) demand_ = false;
  cv_.notify_all();
  // Every keeper acknowledges by coming back to the top of its loop.
  cv_.wait(lock, [&] {
    return shutting_down_ ||
           std::all_of(slots_.begin(), slots_.end(), [&](const Slot& s) {
             return s.unload_seen >= generation;
           });
  });
}

void PoolCore::Shutdown() {
  std::vector<std::shared_ptr<PoolCall>> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutting_down_ && keepers_.empty()) return;
    shutting_down_ = true;
    queued = TakeQueue();
    cv_.notify_all();
  }
  FailAll(std::move(queued),
          WithReason(absl::UnavailableError(
                         "the server is shutting down; retry on another instance"),
                     reason::kShuttingDown));
  StateChanged();
  for (std::thread& keeper : keepers_) {
    if (keeper.joinable()) keeper.join();
  }
  keepers_.clear();
  if (options_.load_gate != nullptr && gate_id_ >= 0) {
    options_.load_gate->Leave(std::exchange(gate_id_, -1));
  }
}

// --- Public wrappers ---------------------------------------------------------

void PoolCallHandle::Cancel(const absl::Status& why) const {
  if (call_ == nullptr) return;
  if (std::shared_ptr<PoolCore> core = core_.lock()) core->Cancel(call_, why);
}

SidecarPool::SidecarPool(PoolOptions options)
    : core_(std::make_shared<PoolCore>(std::move(options))) {
  core_->StartKeepers();
}

SidecarPool::~SidecarPool() { core_->Shutdown(); }

const PoolOptions& SidecarPool::options() const { return core_->options(); }

PoolCallHandle SidecarPool::Submit(PoolCallRequest request) {
  return core_->Submit(std::move(request));
}

PoolStatus SidecarPool::Status() const { return core_->Status(); }

absl::Status SidecarPool::WaitReady(std::chrono::milliseconds timeout) {
  return core_->WaitReady(timeout);
}

void SidecarPool::Unload() { core_->Unload(); }

void SidecarPool::Shutdown() { core_->Shutdown(); }

}  // namespace llmbridge::rpc
