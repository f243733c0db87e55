#include "rpc_bridge/supervision.h"

#include <algorithm>
#include <cstdint>

namespace llmbridge::rpc {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kMinRetryDelay{1000};

std::chrono::milliseconds RetryDelayFor(Clock::duration wait) {
  return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(wait),
                  kMinRetryDelay);
}

}  // namespace

const char* SlotStateName(SlotState state) {
  switch (state) {
    case SlotState::kIdle:
      return "idle";
    case SlotState::kStarting:
      return "starting";
    case SlotState::kReady:
      return "ready";
    case SlotState::kFailed:
      return "failed";
  }
  return "unknown";
}

const char* SidecarEndName(SidecarEnd end) {
  switch (end) {
    case SidecarEnd::kShutdown:
      return "shutdown";
    case SidecarEnd::kUnload:
      return "unload";
    case SidecarEnd::kIdle:
      return "keep_alive";
    case SidecarEnd::kExited:
      return "exited";
    case SidecarEnd::kStalled:
      return "stalled";
    case SidecarEnd::kUnresponsive:
      return "health probe unanswered";
  }
  return "unknown";
}

bool IsCrash(SidecarEnd end) {
  return end == SidecarEnd::kExited || end == SidecarEnd::kStalled ||
         end == SidecarEnd::kUnresponsive;
}

Clock::duration RestartBackoff(const RestartPolicy& policy, int failures) {
  if (failures <= 1) return Clock::duration::zero();
  const int doublings = std::min(failures - 2, 20);
  return std::min<Clock::duration>(policy.initial_backoff * (int64_t{1} << doublings),
                                   policy.max_backoff);
}

RestartDecision AfterFailedStart(const RestartPolicy& policy, const RestartRecord& record) {
  RestartDecision d;
  d.failures = record.failures + 1;
  d.state = SlotState::kFailed;
  d.failed = true;
  d.wait = std::max<Clock::duration>(RestartBackoff(policy, d.failures),
                                     policy.initial_backoff);
  d.retry_delay = RetryDelayFor(d.wait);
  return d;
}

RestartDecision AfterEnd(const RestartPolicy& policy, const RestartRecord& record,
                         SidecarEnd end, Clock::time_point now) {
  RestartDecision d;
  if (!IsCrash(end)) {
    d.state = SlotState::kIdle;
    return d;
  }
  const bool quick = !record.served && now - record.ready_at < policy.quick_failure;
  d.failures = quick ? record.failures + 1 : 0;
  d.state = SlotState::kStarting;  // calls wait for the replacement
  d.wait = RestartBackoff(policy, d.failures);
  d.failed = d.failures >= policy.max_quick_failures;
  if (d.failed) d.state = SlotState::kFailed;
  d.retry_delay = RetryDelayFor(d.wait);
  return d;
}

}  // namespace llmbridge::rpc
