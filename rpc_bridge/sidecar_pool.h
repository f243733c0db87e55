// A supervised pool of sidecar processes for one backend configuration, and
// the admission control in front of it.
//
// One owner per lifecycle: each slot of the pool has a keeper thread, and
// only keepers create, probe, replace and destroy sidecar processes. A
// keeper starts its sidecar (spawn + init, within the startup timeout),
// probes its health every health_interval, and replaces it when it exits,
// stops reading its input (a write stalled past write_timeout) or leaves a
// probe unanswered past health_timeout. Failed starts back off.
//
// Requests never block. Submit registers the call and returns at once;
// admission (admission.h, a pure unit the pool drives under its lock) sends
// it to the least-loaded ready sidecar that has room (max_concurrent per
// sidecar), or queues it (max_queue for admitted calls, max_control_queue
// for the others; queue_timeout) while sidecars start or are busy, or
// refuses it:
//   * RESOURCE_EXHAUSTED, reason OVERLOADED, when its queue is full;
//   * the remembered start failure (a missing model stays NOT_FOUND) when
//     every sidecar of the pool failed to start;
//   * UNAVAILABLE, reason SHUTTING_DOWN, once Shutdown began.
// A seed-style sidecar (no request_id on stream notifications) gets one
// admitted call at a time.
//
// An admitted call holds its place until the sidecar confirms its end: its
// reply, or its answer to the cancel ($/cancelRequest) that a caller's
// cancel or deadline sent. The caller gets its answer at once either way;
// the next queued call only starts once the abandoned work has stopped (or
// after health_timeout without the sidecar's word, logged as
// "cancel_unconfirmed").
//
// Threading: every public method may be called from any thread. Submit and
// PoolCallHandle::Cancel never block. WaitReady, Unload and Shutdown block
// (the owner's and tests' business, never a request's). Call handlers run
// on a sidecar's reader thread, the scheduler thread (deadlines, queue
// timeouts), a keeper thread, or the thread that submits or cancels: they
// must be quick and must not block.
#ifndef LLMBRIDGE_RPC_BRIDGE_SIDECAR_POOL_H_
#define LLMBRIDGE_RPC_BRIDGE_SIDECAR_POOL_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "rpc_bridge/config.h"
#include "rpc_bridge/dispatcher.h"
#include "rpc_bridge/load_gate.h"
#include "rpc_bridge/protocol.h"
#include "rpc_bridge/sidecar.h"
#include "rpc_bridge/supervision.h"

namespace llmbridge::rpc {

struct SlotStatus {
  SlotState state = SlotState::kIdle;
  pid_t pid = -1;
  int in_flight = 0;
  // kFailed: why. Calls that find every slot failed get this status.
  absl::Status failure;
  // kReady: the last health probe's answer about the backend.
  bool backend_ok = false;
  std::string health_message;
};

struct PoolStatus {
  std::vector<SlotStatus> slots;
  int in_flight = 0;
  int queued = 0;
  int starts = 0;  // sidecar processes started so far
  bool shutting_down = false;
  // Waiting for a place to load (PoolOptions::load_gate is full).
  bool waiting_for_load = false;
  // Sidecars are wanted (preload, or calls came): idle slots are about to
  // start, not unloaded.
  bool demanded = false;
  // The init result of a sidecar that became ready (the latest one).
  std::optional<InitResult> init;
  // Whether a call could be served now: a ready sidecar whose backend
  // answered its last probe.
  bool Serving() const;
  bool AnyReady() const;
  // Serving, or unloaded on purpose and able to load on the next call (no
  // failure, not shutting down): what readiness means for an on-demand model.
  bool Servable() const;
  // "loaded", "loading", "idle" or "failed".
  const char* LoadState() const;
  // The most relevant failure when nothing is ready, else OK.
  absl::Status Problem() const;
};

// What the pool tells its owner, for logs and metrics. Methods run on pool
// threads (keepers, readers, submitters); they must be quick and must not
// call into the pool, except OnStateChanged, which may call Status().
class PoolObserver {
 public:
  virtual ~PoolObserver() = default;
  // Published state changed (a slot became ready, failed, its backend's
  // health changed, ...). Never called with the pool's lock held.
  virtual void OnStateChanged() {}
  // A sidecar lifecycle event ("sidecar_started", "sidecar_ready",
  // "sidecar_start_failed", "sidecar_exited", "sidecar_replaced",
  // "sidecar_unloaded") with details for the log.
  virtual void OnSidecarEvent(std::string_view event, const Json& fields) {}
  // One line of a sidecar's stderr.
  virtual void OnSidecarStderr(int slot, pid_t pid, std::string_view line) {}
  // A line from a sidecar that was not a usable message.
  virtual void OnProtocolError(int slot, const absl::Status& why,
                               std::string_view line_start) {}
  // Load changed. Runs under the pool's lock: record numbers only.
  virtual void OnLoad(int in_flight, int queued) {}
  // An admitted call was sent after waiting this long in the queue.
  virtual void OnAdmitted(std::chrono::steady_clock::duration queue_wait) {}
  // A call refused by admission control (queue full or queue timeout).
  virtual void OnRejected() {}
};

struct PoolOptions {
  // Each sidecar process: its config (with defaults applied), line cap,
  // write timeout, stop grace, init options. The pool sets its callbacks.
  SidecarOptions sidecar;
  // Sidecar processes. Each generates independently: for in-process
  // backends (gguf, transformers) that is real parallelism.
  int sidecars = 1;
  // Admitted calls in flight per sidecar; 0: no limit.
  int max_concurrent = 0;
  // With max_concurrent 0: the calls a sidecar takes at once when its init
  // reply does not say (capabilities.max_sequences, as the batching gguf
  // backend does); 0: no bound.
  int unreported_concurrent = 0;
  // Admitted calls waiting for room; beyond it calls are refused.
  int max_queue = 512;
  // Control calls (tools, models, capabilities, token counts) waiting for a
  // ready sidecar; beyond it they are refused (OVERLOADED) too.
  int max_control_queue = 64;
  std::chrono::milliseconds queue_timeout{60000};
  std::chrono::milliseconds health_interval{5000};
  std::chrono::milliseconds health_timeout{10000};
  // Start the sidecars now; otherwise on the first call.
  bool preload = true;
  // Stop the sidecars after this long without calls (they start again on
  // the next one); 0: never.
  std::chrono::milliseconds keep_alive{0};
  RestartPolicy restart;
  PoolObserver* observer = nullptr;  // optional, must outlive the pool
  // Shared by pools that may not all be loaded at once: the pool holds a
  // place while any of its sidecars runs, and unloads when the gate asks
  // (only with nothing in flight or queued). Optional, must outlive it.
  LoadGate* load_gate = nullptr;
};

struct PoolCallRequest {
  std::string method;
  Json params;
  // Admitted calls (completions) count towards max_concurrent and
  // max_queue and may be refused. Others (tools, models) only wait for a
  // ready sidecar.
  bool admission = true;
  // Only if a sidecar is ready now: otherwise the call fails at once with
  // FAILED_PRECONDITION and an idle pool is not started (ListModels must
  // not load a model to describe it).
  bool only_if_ready = false;
  // The call ends with DEADLINE_EXCEEDED then (and the sidecar is told to
  // stop). Unset: no deadline.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Set params["timeout_s"] to the time left when the call is sent.
  bool send_timeout = false;
  // on_reply runs exactly once; the others only while the call is sent.
  CallHandlers handlers;
};

class PoolCall;
class PoolCore;

// Cancels one call. Cheap to copy; outlives the pool safely.
class PoolCallHandle {
 public:
  PoolCallHandle() = default;
  // Ends the call with `why` (tells the sidecar when it was sent): its
  // on_reply runs once, now or soon, unless it already ran.
  void Cancel(const absl::Status& why) const;

 private:
  friend class PoolCore;
  PoolCallHandle(std::weak_ptr<PoolCore> core, std::shared_ptr<PoolCall> call)
      : core_(std::move(core)), call_(std::move(call)) {}
  std::weak_ptr<PoolCore> core_;
  std::shared_ptr<PoolCall> call_;
};

class SidecarPool {
 public:
  explicit SidecarPool(PoolOptions options);
  ~SidecarPool();  // Shutdown()

  SidecarPool(const SidecarPool&) = delete;
  SidecarPool& operator=(const SidecarPool&) = delete;

  const PoolOptions& options() const;

  // Never blocks; on_reply may run before it returns.
  PoolCallHandle Submit(PoolCallRequest request);

  PoolStatus Status() const;

  // Blocks until a sidecar is ready (OK), every sidecar failed to start
  // (their failure), or `timeout` passes (UNAVAILABLE). Starts them if idle.
  absl::Status WaitReady(std::chrono::milliseconds timeout);

  // Stops every sidecar now (calls in flight on them fail); they start
  // again on the next call. Blocks until they stopped.
  void Unload();

  // Refuses new calls, fails queued ones, stops every sidecar (politely,
  // then signals). Blocks; idempotent.
  void Shutdown();

 private:
  std::shared_ptr<PoolCore> core_;
};

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_SIDECAR_POOL_H_
