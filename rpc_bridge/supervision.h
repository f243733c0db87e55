// The restart decisions of a sidecar slot, as pure functions of the slot's
// record, the restart policy and the time: what to do when a start failed
// and when a ready sidecar's supervision ended (its state, the failure
// count, the wait before the next start, whether the slot is in a crash
// loop, and what delay to tell clients). No threads, no locks, no
// processes: the pool's keeper threads (sidecar_pool.cc) do the I/O and
// apply these decisions under the pool's lock; tests/cpp/supervision_test.cc
// drives them with made-up times.
#ifndef LLMBRIDGE_RPC_BRIDGE_SUPERVISION_H_
#define LLMBRIDGE_RPC_BRIDGE_SUPERVISION_H_

#include <chrono>

namespace llmbridge::rpc {

// When a sidecar is started again after it failed.
struct RestartPolicy {
  // A sidecar that dies within this time of becoming ready, before any
  // call ended well on it, counts as a quick failure; one that ran longer
  // or served a call restarts at once with a clean slate (a kill mid-stream
  // is not a crash loop).
  std::chrono::milliseconds quick_failure{10000};
  // Consecutive failures (failed starts, quick deaths) back off: the first
  // restart is immediate, then initial_backoff, doubling, up to max_backoff.
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{30000};
  // This many quick deaths in a row: the slot counts as failed (calls fail
  // at once, with the last exit) until its next start succeeds.
  int max_quick_failures = 5;
};

enum class SlotState {
  kIdle,      // no process: not started yet (on demand) or unloaded
  kStarting,  // spawning, in init, or waiting to restart after a crash
  kReady,     // serving
  kFailed,    // its last start failed (or it keeps crashing); retrying later
};
const char* SlotStateName(SlotState state);

// How the supervision of a ready sidecar ended.
enum class SidecarEnd {
  kShutdown,      // the pool shuts down
  kUnload,        // the model was unloaded (Unload, --max_loaded_models)
  kIdle,          // keep_alive passed without calls
  kExited,        // the process exited or closed its output
  kStalled,       // it stopped reading its input (a write stalled)
  kUnresponsive,  // it left a health probe unanswered
};
// For the log: "shutdown", "unload", "keep_alive", "exited", "stalled",
// "health probe unanswered".
const char* SidecarEndName(SidecarEnd end);
// The ends the pool did not ask for: the sidecar is replaced.
bool IsCrash(SidecarEnd end);

// What the restart decisions of one slot depend on.
struct RestartRecord {
  int failures = 0;  // consecutive failed starts and quick deaths
  std::chrono::steady_clock::time_point ready_at;  // of the sidecar that ended
  bool served = false;  // a call ended well on it
};

struct RestartDecision {
  SlotState state = SlotState::kIdle;  // the slot's state from now on
  int failures = 0;                    // the record's new count
  // How long to wait before the next start (zero: at once).
  std::chrono::steady_clock::duration wait{};
  // The slot counts as failed: calls that find no other sidecar fail at
  // once with its failure until a start succeeds.
  bool failed = false;
  // What a failed call tells its client to wait (google.rpc.RetryInfo):
  // the wait, but never under a second (a client must not hammer a
  // backend that is down every 100 ms).
  std::chrono::milliseconds retry_delay{0};
};

// The back-off before start number `failures` + 1: none after the first
// failure, then initial_backoff doubling, up to max_backoff.
std::chrono::steady_clock::duration RestartBackoff(const RestartPolicy& policy, int failures);

// A start (spawn, init) failed. The slot is failed until the next start,
// which waits at least initial_backoff.
RestartDecision AfterFailedStart(const RestartPolicy& policy, const RestartRecord& record);

// A ready sidecar's supervision ended at `now`. A crash is replaced (the
// slot is starting meanwhile), after a back-off if it came quickly after
// the start without serving a call; too many such in a row and the slot is
// failed. Any other end leaves the slot idle, with a clean record.
RestartDecision AfterEnd(const RestartPolicy& policy, const RestartRecord& record,
                         SidecarEnd end, std::chrono::steady_clock::time_point now);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_SUPERVISION_H_
