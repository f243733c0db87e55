// A slot's restart decisions, without processes or clocks: a made-up time
// and record in, the decision out.
#include "rpc_bridge/supervision.h"

#include <chrono>

#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

RestartPolicy Policy() {
  RestartPolicy policy;
  policy.quick_failure = seconds(10);
  policy.initial_backoff = milliseconds(100);
  policy.max_backoff = seconds(30);
  policy.max_quick_failures = 3;
  return policy;
}

const Clock::time_point kReadyAt = Clock::time_point() + seconds(1000);

TEST(SupervisionTest, FailedStartsBackOffDoublingUpToTheMaximum) {
  const RestartPolicy policy = Policy();
  RestartRecord record;
  const milliseconds want[] = {milliseconds(100), milliseconds(100),  milliseconds(200),
                               milliseconds(400), milliseconds(800),  milliseconds(1600)};
  for (milliseconds expected : want) {
    RestartDecision d = AfterFailedStart(policy, record);
    EXPECT_EQ(d.failures, record.failures + 1);
    EXPECT_EQ(d.state, SlotState::kFailed);
    EXPECT_TRUE(d.failed);
    EXPECT_EQ(d.wait, expected) << "after " << d.failures << " failures";
    record.failures = d.failures;
  }
  record.failures = 40;  // far past the cap (and past 2^20 doublings)
  EXPECT_EQ(AfterFailedStart(policy, record).wait, seconds(30));
}

TEST(SupervisionTest, ClientsAreToldTheWaitButNeverLessThanASecond) {
  const RestartPolicy policy = Policy();
  EXPECT_EQ(AfterFailedStart(policy, RestartRecord{0}).retry_delay, seconds(1));
  RestartRecord many{8};
  RestartDecision d = AfterFailedStart(policy, many);
  EXPECT_EQ(d.wait, milliseconds(100 << 7));
  EXPECT_EQ(d.retry_delay, milliseconds(100 << 7));
}

TEST(SupervisionTest, AQuickDeathCountsAndTooManyInARowAreACrashLoop) {
  const RestartPolicy policy = Policy();
  RestartRecord record{0, kReadyAt, false};
  // Dead 2 s after becoming ready, without serving a call, three times.
  RestartDecision first = AfterEnd(policy, record, SidecarEnd::kExited, kReadyAt + seconds(2));
  EXPECT_EQ(first.failures, 1);
  EXPECT_EQ(first.state, SlotState::kStarting);
  EXPECT_FALSE(first.failed);
  EXPECT_EQ(first.wait, Clock::duration::zero());  // the first restart is immediate
  record.failures = first.failures;
  RestartDecision second =
      AfterEnd(policy, record, SidecarEnd::kUnresponsive, kReadyAt + seconds(2));
  EXPECT_EQ(second.failures, 2);
  EXPECT_FALSE(second.failed);
  EXPECT_EQ(second.wait, milliseconds(100));
  record.failures = second.failures;
  RestartDecision third = AfterEnd(policy, record, SidecarEnd::kStalled, kReadyAt + seconds(2));
  EXPECT_EQ(third.failures, 3);
  EXPECT_TRUE(third.failed);
  EXPECT_EQ(third.state, SlotState::kFailed);
  EXPECT_EQ(third.wait, milliseconds(200));
  EXPECT_EQ(third.retry_delay, seconds(1));
}

TEST(SupervisionTest, ADeathAfterServingACallOrRunningAWhileIsNoCrashLoop) {
  const RestartPolicy policy = Policy();
  // Two quick deaths already: a third quick one would be a crash loop.
  RestartRecord served{2, kReadyAt, true};
  RestartDecision d = AfterEnd(policy, served, SidecarEnd::kExited, kReadyAt + seconds(2));
  EXPECT_EQ(d.failures, 0);
  EXPECT_FALSE(d.failed);
  EXPECT_EQ(d.state, SlotState::kStarting);
  EXPECT_EQ(d.wait, Clock::duration::zero());
  RestartRecord old{2, kReadyAt, false};
  d = AfterEnd(policy, old, SidecarEnd::kExited, kReadyAt + seconds(10));
  EXPECT_EQ(d.failures, 0);
  EXPECT_FALSE(d.failed);
}

TEST(SupervisionTest, EndsThePoolAskedForLeaveTheSlotIdleWithACleanRecord) {
  const RestartPolicy policy = Policy();
  for (SidecarEnd end : {SidecarEnd::kShutdown, SidecarEnd::kUnload, SidecarEnd::kIdle}) {
    EXPECT_FALSE(IsCrash(end));
    RestartDecision d = AfterEnd(policy, RestartRecord{2, kReadyAt, false}, end,
                                 kReadyAt + seconds(1));
    EXPECT_EQ(d.state, SlotState::kIdle) << SidecarEndName(end);
    EXPECT_EQ(d.failures, 0) << SidecarEndName(end);
    EXPECT_FALSE(d.failed) << SidecarEndName(end);
    EXPECT_EQ(d.wait, Clock::duration::zero()) << SidecarEndName(end);
  }
  for (SidecarEnd end : {SidecarEnd::kExited, SidecarEnd::kStalled, SidecarEnd::kUnresponsive}) {
    EXPECT_TRUE(IsCrash(end)) << SidecarEndName(end);
  }
  EXPECT_STREQ(SidecarEndName(SidecarEnd::kIdle), "keep_alive");
  EXPECT_STREQ(SidecarEndName(SidecarEnd::kUnresponsive), "health probe unanswered");
}
}  // namespace
}  // namespace llmbridge::rpc
