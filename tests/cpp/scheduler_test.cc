// The timer thread of deadlines and queue timeouts.
#include "rpc_bridge/scheduler.h"

#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <vector>

#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

using Clock = Scheduler::Clock;
using std::chrono::milliseconds;

constexpr milliseconds kWait = std::chrono::seconds(30);

TEST(SchedulerTest, RunsTimersInTheOrderTheyAreDue) {
  Scheduler scheduler;
  std::mutex mu;
  std::vector<int> order;
  std::promise<void> last;
  const auto now = Clock::now();
  scheduler.Schedule(now + milliseconds(60), [&] {
    std::lock_guard<std::mutex> lock(mu);
    order.push_back(3);
    last.set_value();
  });
  scheduler.Schedule(now + milliseconds(20), [&] {
    std::lock_guard<std::mutex> lock(mu);
    order.push_back(1);
  });
  scheduler.Schedule(now + milliseconds(40), [&] {
    std::lock_guard<std::mutex> lock(mu);
    order.push_back(2);
  });
  ASSERT_EQ(last.get_future().wait_for(kWait), std::future_status::ready);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST(SchedulerTest, ACancelledTimerNeverRuns) {
  Scheduler scheduler;
  std::promise<void> later;
  bool cancelled_ran = false;
  const auto now = Clock::now();
  const uint64_t token =
      scheduler.Schedule(now + milliseconds(10), [&] { cancelled_ran = true; });
  scheduler.Cancel(token);
  scheduler.Cancel(token);  // twice: a no-op
  scheduler.Cancel(0);
  scheduler.Schedule(now + milliseconds(30), [&] { later.set_value(); });
  ASSERT_EQ(later.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_FALSE(cancelled_ran);
}

// Something that owns a Scheduler, as the pool's core does.
struct Owner {
  explicit Owner(std::promise<void>* destroyed) : destroyed(destroyed) {}
  ~Owner() { destroyed->set_value(); }
  std::promise<void>* destroyed;
  Scheduler scheduler;
};

TEST(SchedulerTest, ATimerHoldingTheLastReferenceToItsOwnerDestroysItSafely) {
  // The defect: ~Scheduler joined its own thread when a timer's callback
  // held the last reference to the scheduler's owner (std::terminate).
  std::promise<void> destroyed;
  std::promise<void> go;
  auto owner = std::make_shared<Owner>(&destroyed);
  std::shared_future<void> go_future = go.get_future().share();
  owner->scheduler.Schedule(Clock::now(), [keep = owner, go_future]() mutable {
    go_future.wait();
    keep.reset();  // the last reference: ~Owner runs on the scheduler thread
  });
  owner.reset();
  go.set_value();
  EXPECT_EQ(destroyed.get_future().wait_for(kWait), std::future_status::ready);
}

TEST(SchedulerTest, CapturesReleasedWhenTheCallbackIsDestroyedMayOwnIt) {
  std::promise<void> destroyed;
  std::promise<void> ran;
  auto owner = std::make_shared<Owner>(&destroyed);
  std::future<void> ran_future = ran.get_future();
  // The callback's captures are destroyed after it returns: the owner goes
  // with them, on the scheduler thread.
  owner->scheduler.Schedule(Clock::now() + milliseconds(20),
                            [keep = owner, &ran] { ran.set_value(); });
  owner.reset();
  ASSERT_EQ(ran_future.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(destroyed.get_future().wait_for(kWait), std::future_status::ready);
}

TEST(SchedulerTest, DestroyingDropsTimersNotYetDue) {
  auto flag = std::make_shared<int>(0);
  {
    Scheduler scheduler;
    scheduler.Schedule(Clock::now() + std::chrono::hours(1), [flag] { *flag = 1; });
    EXPECT_EQ(flag.use_count(), 2);
  }
  EXPECT_EQ(flag.use_count(), 1);  // the callback was destroyed, not run
  EXPECT_EQ(*flag, 0);
}

}  // namespace
}  // namespace llmbridge::rpc
