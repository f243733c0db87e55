// The bound on loaded models: who gets a place, who is asked to unload
// (least recently used, idle only), and who is woken when.
#include "rpc_bridge/load_gate.h"

#include <vector>

#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

// A member whose idleness the test decides, recording what the gate asked.
struct FakeMember {
  bool idle = true;
  int unload_asks = 0;
  int unloads = 0;
  int wakes = 0;
  LoadGate::Member AsMember() {
    return {[this] {
              ++unload_asks;
              if (!idle) return false;
              ++unloads;
              return true;
            },
            [this] { ++wakes; }};
  }
};

TEST(LoadGateTest, WithoutABoundEveryoneLoads) {
  LoadGate gate(0);
  FakeMember a, b;
  const int ida = gate.Join(a.AsMember());
  const int idb = gate.Join(b.AsMember());
  EXPECT_TRUE(gate.TryAcquire(ida));
  EXPECT_TRUE(gate.TryAcquire(idb));
  EXPECT_EQ(a.unload_asks + b.unload_asks, 0);
}

TEST(LoadGateTest, AFullGateEvictsTheIdleHolderAndWakesTheWaiterOnRelease) {
  LoadGate gate(1);
  FakeMember a, b;
  const int ida = gate.Join(a.AsMember());
  const int idb = gate.Join(b.AsMember());
  ASSERT_TRUE(gate.TryAcquire(ida));
  EXPECT_TRUE(gate.TryAcquire(ida));  // holding one already
  EXPECT_FALSE(gate.TryAcquire(idb));
  EXPECT_EQ(a.unloads, 1);
  // While A unloads, asking again evicts nobody else.
  EXPECT_FALSE(gate.TryAcquire(idb));
  EXPECT_EQ(a.unload_asks, 1);
  EXPECT_EQ(b.wakes, 0);
  gate.Release(ida);
  EXPECT_EQ(b.wakes, 1);
  EXPECT_TRUE(gate.TryAcquire(idb));
  EXPECT_EQ(gate.loaded(), 1);
}

TEST(LoadGateTest, TheLeastRecentlyUsedIdleMemberGoesFirst) {
  LoadGate gate(2);
  FakeMember a, b, c;
  const int ida = gate.Join(a.AsMember());
  const int idb = gate.Join(b.AsMember());
  const int idc = gate.Join(c.AsMember());
  ASSERT_TRUE(gate.TryAcquire(ida));
  ASSERT_TRUE(gate.TryAcquire(idb));
  gate.Touch(ida);  // B is now the least recently used
  EXPECT_FALSE(gate.TryAcquire(idc));
  EXPECT_EQ(b.unloads, 1);
  EXPECT_EQ(a.unload_asks, 0);
}

TEST(LoadGateTest, BusyMembersAreSkippedAndNeverUnloaded) {
  LoadGate gate(2);
  FakeMember a, b, c;
  const int ida = gate.Join(a.AsMember());
  const int idb = gate.Join(b.AsMember());
  const int idc = gate.Join(c.AsMember());
  ASSERT_TRUE(gate.TryAcquire(ida));
  ASSERT_TRUE(gate.TryAcquire(idb));
  a.idle = false;  // the least recently used, but busy
  EXPECT_FALSE(gate.TryAcquire(idc));
  EXPECT_EQ(a.unloads, 0);
  EXPECT_EQ(b.unloads, 1);
}

TEST(LoadGateTest, WhenEveryoneIsBusyTheWaiterIsWokenOnceOneGoesIdle) {
  LoadGate gate(1);
  FakeMember a, b;
  const int ida = gate.Join(a.AsMember());
  const int idb = gate.Join(b.AsMember());
  ASSERT_TRUE(gate.TryAcquire(ida));
  a.idle = false;
  EXPECT_FALSE(gate.TryAcquire(idb));
  EXPECT_EQ(a.unloads, 0);
  EXPECT_EQ(b.wakes, 0);
  a.idle = true;
  gate.Idle(ida);
  EXPECT_EQ(b.wakes, 1);
  EXPECT_FALSE(gate.TryAcquire(idb));  // asks A again, which now unloads
  EXPECT_EQ(a.unloads, 1);
  gate.Release(ida);
  EXPECT_TRUE(gate.TryAcquire(idb));
}

TEST(LoadGateTest, LeavingFreesThePlace) {
  LoadGate gate(1);
  FakeMember a, b;
  const int ida = gate.Join(a.AsMember());
  const int idb = gate.Join(b.AsMember());
  ASSERT_TRUE(gate.TryAcquire(ida));
  a.idle = false;
  EXPECT_FALSE(gate.TryAcquire(idb));
  gate.Leave(ida);
  EXPECT_EQ(b.wakes, 1);
  EXPECT_TRUE(gate.TryAcquire(idb));
}

}  // namespace
}  // namespace llmbridge::rpc
