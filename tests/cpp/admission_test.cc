// Admission control as a pure unit, on a fake clock.
#include "rpc_bridge/admission.h"

#include <chrono>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

using std::chrono::milliseconds;
using Kind = Admission::Kind;
using Verdict = Admission::Verdict;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

// A fake clock: only moves when the test says so.
struct FakeClock {
  Admission::Clock::time_point now{};
  void Advance(milliseconds d) { now += d; }
};

Admission::Limits OneSlot(int per_slot, int max_queue = 4, int max_control = 2) {
  Admission::Limits l;
  l.slots = 1;
  l.per_slot = per_slot;
  l.max_queue = max_queue;
  l.max_control_queue = max_control;
  l.queue_timeout = milliseconds(1000);
  return l;
}

std::vector<uint64_t> Ids(const std::vector<Admission::Assignment>& a) {
  std::vector<uint64_t> out;
  for (const auto& x : a) out.push_back(x.id);
  return out;
}

TEST(AdmissionTest, CallsWaitWhileNoSlotIsOpenAndGoWhenOneOpens) {
  FakeClock clock;
  Admission a(OneSlot(2));
  EXPECT_EQ(a.Offer(1, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.Offer(2, Kind::kControl, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.queued(), 2);
  std::vector<Admission::Assignment> sent = a.SlotOpened(0);
  EXPECT_THAT(Ids(sent), ElementsAre(1, 2));
  EXPECT_EQ(a.in_flight(0), 1);  // control calls take no place
  EXPECT_EQ(a.queued(), 0);
}

TEST(AdmissionTest, AFullSlotQueuesInOrderAndAReleaseSendsTheOldest) {
  FakeClock clock;
  Admission a(OneSlot(1));
  a.SlotOpened(0);
  Admission::Decision first = a.Offer(1, Kind::kAdmitted, clock.now);
  EXPECT_EQ(first.verdict, Verdict::kSend);
  EXPECT_EQ(first.slot, 0);
  EXPECT_EQ(a.Offer(2, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.Offer(3, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_THAT(Ids(a.Release(0)), ElementsAre(2));
  EXPECT_THAT(Ids(a.Release(0)), ElementsAre(3));
  EXPECT_THAT(a.Release(0), IsEmpty());
  EXPECT_EQ(a.in_flight(), 0);
}

TEST(AdmissionTest, APlaceStaysTakenUntilReleasedNotUntilTheCallerLeaves) {
  // The caller of call 1 cancelled; the sidecar has not confirmed yet. The
  // next call waits: the sidecar is still busy with the abandoned work.
  FakeClock clock;
  Admission a(OneSlot(1));
  a.SlotOpened(0);
  ASSERT_EQ(a.Offer(1, Kind::kAdmitted, clock.now).verdict, Verdict::kSend);
  EXPECT_EQ(a.Offer(2, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.in_flight(0), 1);
  EXPECT_THAT(Ids(a.Release(0)), ElementsAre(2));  // the cancel's answer came
}

TEST(AdmissionTest, ANewAdmittedCallNeverPassesAQueuedOne) {
  FakeClock clock;
  Admission::Limits l = OneSlot(1);
  l.slots = 2;
  Admission a(l);
  a.SlotOpened(0);
  ASSERT_EQ(a.Offer(1, Kind::kAdmitted, clock.now).verdict, Verdict::kSend);
  ASSERT_EQ(a.Offer(2, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  // Slot 1 opens: the queued call takes it, and a new one waits behind.
  EXPECT_THAT(Ids(a.SlotOpened(1)), ElementsAre(2));
  EXPECT_EQ(a.Offer(3, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
}

TEST(AdmissionTest, ControlCallsPassBlockedAdmittedCallsButNeedAnOpenSlot) {
  FakeClock clock;
  Admission a(OneSlot(1));
  a.SlotOpened(0);
  ASSERT_EQ(a.Offer(1, Kind::kAdmitted, clock.now).verdict, Verdict::kSend);
  ASSERT_EQ(a.Offer(2, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.Offer(3, Kind::kControl, clock.now).verdict, Verdict::kSend);
  a.SlotClosed(0);
  EXPECT_EQ(a.Offer(4, Kind::kControl, clock.now).verdict, Verdict::kQueued);
  EXPECT_THAT(a.Release(0), IsEmpty());  // closed: nothing goes to it
  EXPECT_THAT(Ids(a.SlotOpened(0)), ElementsAre(2, 4));
}

TEST(AdmissionTest, EachKindHasItsOwnQueueBound) {
  FakeClock clock;
  Admission a(OneSlot(1, /*max_queue=*/2, /*max_control=*/1));
  // No slot open: everything queues, up to each bound.
  EXPECT_EQ(a.Offer(1, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.Offer(2, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.Offer(3, Kind::kAdmitted, clock.now).verdict, Verdict::kQueueFull);
  EXPECT_EQ(a.Offer(4, Kind::kControl, clock.now).verdict, Verdict::kQueued);
  EXPECT_EQ(a.Offer(5, Kind::kControl, clock.now).verdict, Verdict::kQueueFull);
  EXPECT_EQ(a.queued(Kind::kAdmitted), 2);
  EXPECT_EQ(a.queued(Kind::kControl), 1);
}

TEST(AdmissionTest, QueuedCallsExpireAfterTheQueueTimeoutOldestFirst) {
  FakeClock clock;
  Admission a(OneSlot(1));
  a.Offer(1, Kind::kAdmitted, clock.now);
  clock.Advance(milliseconds(400));
  a.Offer(2, Kind::kControl, clock.now);
  EXPECT_EQ(a.NextExpiry(), clock.now + milliseconds(600));
  clock.Advance(milliseconds(599));
  EXPECT_THAT(a.Expire(clock.now), IsEmpty());
  clock.Advance(milliseconds(1));
  EXPECT_THAT(a.Expire(clock.now), ElementsAre(1));
  EXPECT_EQ(a.NextExpiry(), clock.now + milliseconds(400));
  clock.Advance(milliseconds(400));
  EXPECT_THAT(a.Expire(clock.now), ElementsAre(2));
  EXPECT_EQ(a.NextExpiry(), std::nullopt);
  EXPECT_EQ(a.queued(), 0);
}

TEST(AdmissionTest, RemoveTakesOutOnlyQueuedCalls) {
  FakeClock clock;
  Admission a(OneSlot(1));
  a.SlotOpened(0);
  a.Offer(1, Kind::kAdmitted, clock.now);
  a.Offer(2, Kind::kAdmitted, clock.now);
  EXPECT_FALSE(a.Remove(1));  // sent, not queued
  EXPECT_EQ(a.queued_at(2), clock.now);
  EXPECT_TRUE(a.Remove(2));
  EXPECT_FALSE(a.Remove(2));
  EXPECT_EQ(a.queued(), 0);
  EXPECT_THAT(a.Release(0), IsEmpty());
}

TEST(AdmissionTest, CallsGoToTheLeastLoadedSlotWithRoom) {
  FakeClock clock;
  Admission::Limits l = OneSlot(2);
  l.slots = 2;
  Admission a(l);
  a.SlotOpened(0);
  a.SlotOpened(1, /*capacity=*/1);  // a seed-style sidecar: one at a time
  EXPECT_EQ(a.Offer(1, Kind::kAdmitted, clock.now).slot, 0);
  EXPECT_EQ(a.Offer(2, Kind::kAdmitted, clock.now).slot, 1);
  EXPECT_EQ(a.Offer(3, Kind::kAdmitted, clock.now).slot, 0);
  EXPECT_EQ(a.Offer(4, Kind::kAdmitted, clock.now).verdict, Verdict::kQueued);
  EXPECT_THAT(a.TakeQueue(), ElementsAre(4));
  EXPECT_EQ(a.in_flight(), 3);
}

TEST(AdmissionTest, NoLimitMeansEveryCallIsSentWhileASlotIsOpen) {
  FakeClock clock;
  Admission a(OneSlot(0));
  a.SlotOpened(0);
  for (uint64_t id = 1; id <= 100; ++id) {
    ASSERT_EQ(a.Offer(id, Kind::kAdmitted, clock.now).verdict, Verdict::kSend);
  }
  EXPECT_EQ(a.in_flight(0), 100);
}

}  // namespace
}  // namespace llmbridge::rpc
