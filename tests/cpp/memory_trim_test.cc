#include "service/memory_trim.h"

#include <gtest/gtest.h>

namespace llmbridge::service {
namespace {

constexpr int kPeak = BurstTrimPolicy::kMinPeak;

// Starts `n` calls on top of `in_flight`; returns the new count.
int Start(BurstTrimPolicy& policy, int in_flight, int n) {
  for (int i = 0; i < n; ++i) policy.OnStarted(++in_flight);
  return in_flight;
}

// Ends calls until `target` remain; returns how many of the ends said "trim".
int EndUntil(BurstTrimPolicy& policy, int in_flight, int target) {
  int trims = 0;
  while (in_flight > target) trims += policy.OnEnded(--in_flight) ? 1 : 0;
  return trims;
}

TEST(BurstTrimPolicyTest, SmallBurstsNeverTrim) {
  BurstTrimPolicy policy;
  for (int round = 0; round < 10; ++round) {
    int in_flight = Start(policy, 0, kPeak - 1);
    EXPECT_EQ(EndUntil(policy, in_flight, 0), 0);
  }
}

TEST(BurstTrimPolicyTest, ABurstTrimsOnceWhenItFallsToAQuarter) {
  BurstTrimPolicy policy;
  int in_flight = Start(policy, 0, 4 * kPeak);
  EXPECT_EQ(EndUntil(policy, in_flight, kPeak + 1), 0);  // still above a quarter
  EXPECT_TRUE(policy.OnEnded(kPeak));                    // a quarter of the peak
  EXPECT_EQ(EndUntil(policy, kPeak, 0), 0);              // once per burst
}

TEST(BurstTrimPolicyTest, SteadyLoadUnderABurstDoesNotTrimAgain) {
  BurstTrimPolicy policy;
  int in_flight = Start(policy, 0, 1024);
  EXPECT_EQ(EndUntil(policy, in_flight, 64), 1);
  // 64 calls keep coming and going: no trim per call.
  for (int i = 0; i < 1000; ++i) {
    policy.OnStarted(65);
    EXPECT_FALSE(policy.OnEnded(64));
  }
}

TEST(BurstTrimPolicyTest, EachNewBurstTrimsAgain) {
  BurstTrimPolicy policy;
  for (int round = 0; round < 3; ++round) {
    int in_flight = Start(policy, 0, 2 * kPeak);
    EXPECT_EQ(EndUntil(policy, in_flight, 0), 1) << "round " << round;
  }
}

}  // namespace
}  // namespace llmbridge::service
