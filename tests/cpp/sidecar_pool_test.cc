// Real-process tests of the serving core: the supervised pool, admission
// control, and a wire that cannot take the server down. The sidecars are
// purpose-built misbehaving ones (testdata/fake_sidecar.py) over real pipes.
#include "rpc_bridge/sidecar_pool.h"

#include <dirent.h>
#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cpp/fake_sidecar.h"
#include "rpc_bridge/client.h"
#include "rpc_bridge/error_reason.h"

namespace llmbridge::rpc {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

using testing::Ask;
using testing::CountEntries;
using testing::ProcessGone;
using testing::FakeConfig;
using testing::FakeSidecarPath;
using testing::kWait;

std::string ReasonOf(const absl::Status& status) {
  return AttachedReason(status).value_or("");
}

// Counts stream ends across streams, so a test can wait for N of them.
struct Tally {
  std::mutex mu;
  std::condition_variable cv;
  int ended = 0;
  std::vector<absl::Status> statuses;
  bool WaitFor(int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, kWait, [&] { return ended >= n; });
  }
};

// One stream's end; Wait blocks on it.
struct Outcome {
  explicit Outcome(Tally* tally = nullptr) : tally(tally) {}
  Tally* const tally;
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<CompleteResult>> done;

  StreamHandlers Handlers() {
    StreamHandlers h;
    h.on_done = [this](absl::StatusOr<CompleteResult> r) {
      // The waiter may destroy this Outcome as soon as `done` is set: touch
      // nothing of it afterwards.
      if (tally != nullptr) {
        std::lock_guard<std::mutex> lock(tally->mu);
        ++tally->ended;
        tally->statuses.push_back(r.status());
        tally->cv.notify_all();
      }
      std::lock_guard<std::mutex> lock(mu);
      done = std::move(r);
      cv.notify_all();
    };
    return h;
  }
  bool Done() {
    std::lock_guard<std::mutex> lock(mu);
    return done.has_value();
  }
  absl::StatusOr<CompleteResult> Wait() {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, kWait, [&] { return done.has_value(); })) {
      return absl::InternalError("test: stream never ended");
    }
    return *done;
  }
};

// Lets a test wait for the pool's published state without sleeping: the
// pool calls OnStateChanged on every change.
class StateWaiter : public PoolObserver {
 public:
  void OnStateChanged() override { Bump(); }
  // Load changes too (this runs under the pool's lock; WaitUntil never
  // holds mu_ while it reads the pool, so the order is always pool, mu_).
  void OnLoad(int, int) override { Bump(); }

  // Waits until `ready(client.Status())` holds; false after kWait.
  bool WaitUntil(Client& client, const std::function<bool(const PoolStatus&)>& ready) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      const int seen = changes_;
      lock.unlock();
      const bool ok = ready(client.Status());
      lock.lock();
      if (ok) return true;
      if (!cv_.wait_until(lock, deadline, [&] { return changes_ != seen; })) {
        return false;
      }
    }
  }

 private:
  void Bump() {
    std::lock_guard<std::mutex> lock(mu_);
    ++changes_;
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int changes_ = 0;
};

int CountReady(const PoolStatus& s) {
  int n = 0;
  for (const SlotStatus& slot : s.slots) n += slot.state == SlotState::kReady;
  return n;
}

TEST(SidecarPoolTest, AdmissionRefusesPastConcurrencyAndQueueAtOnce) {
  StateWaiter waiter;
  ClientOptions options;
  options.pool.max_concurrent = 2;
  options.pool.max_queue = 2;
  options.pool.queue_timeout = seconds(600);
  options.pool.observer = &waiter;
  Client client(FakeConfig("hang"), options);
  ASSERT_TRUE(client.EnsureStarted().ok());
  std::vector<std::unique_ptr<Outcome>> outcomes;
  std::vector<StreamHandle> handles;
  for (int i = 0; i < 4; ++i) {
    outcomes.push_back(std::make_unique<Outcome>());
    handles.push_back(client.Stream(Ask("wait"), outcomes.back()->Handlers()));
  }
  PoolStatus status = client.Status();
  EXPECT_EQ(status.in_flight, 2);
  EXPECT_EQ(status.queued, 2);
  // The fifth is refused before Stream returns: no work was done for it.
  Outcome fifth;
  client.Stream(Ask("one too many"), fifth.Handlers());
  ASSERT_TRUE(fifth.Done()) << "refusal must be immediate";
  absl::Status refused = fifth.done->status();
  EXPECT_TRUE(absl::IsResourceExhausted(refused)) << refused;
  EXPECT_EQ(ReasonOf(refused), reason::kOverloaded);
  // The limits met, in the library's terms: no server flags in a library.
  EXPECT_THAT(AttachedLimits(refused), ElementsAre("max_concurrent", "max_queue"));
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr("--")));
  for (auto& h : handles) h.Cancel(absl::CancelledError("test over"));
  for (auto& o : outcomes) EXPECT_TRUE(absl::IsCancelled(o->Wait().status()));
  EXPECT_TRUE(waiter.WaitUntil(client, [](const PoolStatus& s) {
    return s.in_flight == 0 && s.queued == 0;
  }));
}

// With max_concurrent 0, a sidecar that says how many sequences it decodes
// together (gguf's max_sequences) gets that many calls at once; one that
// says nothing gets unreported_concurrent.
TEST(SidecarPoolTest, ASidecarThatBatchesSetsItsOwnCapacity) {
  for (const char* reported : {"3", ""}) {
    ClientOptions options;
    options.pool.max_concurrent = 0;
    options.pool.unreported_concurrent = 1;
    options.pool.queue_timeout = seconds(600);
    std::map<std::string, std::string> env;
    if (*reported != '\0') env["FAKE_SIDECAR_MAX_SEQUENCES"] = reported;
    Client client(FakeConfig("hang", env), options);
    ASSERT_TRUE(client.EnsureStarted().ok());
    std::vector<std::unique_ptr<Outcome>> outcomes;
    std::vector<StreamHandle> handles;
    for (int i = 0; i < 4; ++i) {
      outcomes.push_back(std::make_unique<Outcome>());
      handles.push_back(client.Stream(Ask("wait"), outcomes.back()->Handlers()));
    }
    const int want = *reported != '\0' ? 3 : 1;
    PoolStatus status = client.Status();
    EXPECT_EQ(status.in_flight, want) << "max_sequences '" << reported << "'";
    EXPECT_EQ(status.queued, 4 - want) << "max_sequences '" << reported << "'";
    for (auto& h : handles) h.Cancel(absl::CancelledError("test over"));
    for (auto& o : outcomes) EXPECT_TRUE(absl::IsCancelled(o->Wait().status()));
  }
}

TEST(SidecarPoolTest, QueuedCallsTimeOutWithOverloaded) {
  ClientOptions options;
  options.pool.max_concurrent = 1;
  options.pool.queue_timeout = milliseconds(300);
  Client client(FakeConfig("hang"), options);
  ASSERT_TRUE(client.EnsureStarted().ok());
  Outcome running, queued;
  StreamHandle first = client.Stream(Ask("hold"), running.Handlers());
  client.Stream(Ask("wait"), queued.Handlers());
  auto result = queued.Wait();
  EXPECT_TRUE(absl::IsResourceExhausted(result.status())) << result.status();
  EXPECT_EQ(ReasonOf(result.status()), reason::kOverloaded);
  EXPECT_THAT(AttachedLimits(result.status()), ElementsAre("queue_timeout"));
  EXPECT_THAT(std::string(result.status().message()), Not(HasSubstr("--")));
  EXPECT_FALSE(running.Done());
  first.Cancel(absl::CancelledError("test over"));
  EXPECT_TRUE(absl::IsCancelled(running.Wait().status()));
}

// Records sidecar events by name, as StateWaiter does load changes.
class EventLog : public StateWaiter {
 public:
  void OnSidecarEvent(std::string_view event, const Json&) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.emplace_back(event);
    }
    OnStateChanged();
  }
  int Count(const std::string& event) {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(std::count(events_.begin(), events_.end(), event));
  }

 private:
  std::mutex mu_;
  std::vector<std::string> events_;
};

TEST(SidecarPoolTest, ACancelledCallHoldsItsPlaceUntilTheSidecarConfirms) {
  // The caller gets CANCELLED at once, but the next queued call starts only
  // when the sidecar answered the cancel (its work stopped), not before:
  // health_timeout (the fallback) is far away here.
  EventLog log;
  ClientOptions options;
  options.pool.max_concurrent = 1;
  options.pool.queue_timeout = seconds(600);
  options.pool.health_timeout = seconds(600);
  options.pool.observer = &log;
  Client client(FakeConfig("hang"), options);
  ASSERT_TRUE(client.EnsureStarted().ok());
  Outcome first, second;
  StreamHandle running = client.Stream(Ask("first"), first.Handlers());
  StreamHandle queued = client.Stream(Ask("second"), second.Handlers());
  ASSERT_TRUE(log.WaitUntil(client, [](const PoolStatus& s) {
    return s.in_flight == 1 && s.queued == 1;
  }));
  running.Cancel(absl::CancelledError("client went away"));
  EXPECT_TRUE(absl::IsCancelled(first.Wait().status()));
  // The -32800 answer frees the place: the second call is sent.
  ASSERT_TRUE(log.WaitUntil(client, [](const PoolStatus& s) {
    return s.in_flight == 1 && s.queued == 0;
  }));
  EXPECT_EQ(log.Count("cancel_unconfirmed"), 0);
  queued.Cancel(absl::CancelledError("test over"));
  EXPECT_TRUE(absl::IsCancelled(second.Wait().status()));
  ASSERT_TRUE(log.WaitUntil(client, [](const PoolStatus& s) { return s.in_flight == 0; }));
}

TEST(SidecarPoolTest, AnUnconfirmedCancelKeepsThePlaceUntilHealthTimeout) {
  // An engine that never stops: its place stays taken (the sidecar is still
  // busy) until health_timeout, then is given back and logged.
  EventLog log;
  ClientOptions options;
  options.pool.max_concurrent = 1;
  options.pool.queue_timeout = seconds(600);
  options.pool.health_timeout = milliseconds(700);
  options.pool.health_interval = seconds(600);
  options.pool.observer = &log;
  Client client(FakeConfig("hang", {{"FAKE_SIDECAR_CANCEL_REPLY", "never"}}), options);
  ASSERT_TRUE(client.EnsureStarted().ok());
  Outcome first, second;
  StreamHandle running = client.Stream(Ask("first"), first.Handlers());
  StreamHandle queued = client.Stream(Ask("second"), second.Handlers());
  running.Cancel(absl::CancelledError("client went away"));
  EXPECT_TRUE(absl::IsCancelled(first.Wait().status()));
  // Still counted: the sidecar has not said the work stopped.
  PoolStatus now = client.Status();
  EXPECT_EQ(now.in_flight, 1);
  EXPECT_EQ(now.queued, 1);
  ASSERT_TRUE(log.WaitUntil(client, [](const PoolStatus& s) { return s.queued == 0; }));
  EXPECT_EQ(log.Count("cancel_unconfirmed"), 1);
  EXPECT_FALSE(second.Done());  // it runs now
  queued.Cancel(absl::CancelledError("test over"));
  EXPECT_TRUE(absl::IsCancelled(second.Wait().status()));
}

TEST(SidecarPoolTest, ControlCallsHaveTheirOwnQueueBound) {
  // While the sidecar starts, calls that only need a ready sidecar (tools,
  // models) wait, up to max_control_queue; the next is OVERLOADED.
  ClientOptions options;
  options.pool.max_control_queue = 2;
  options.pool.preload = true;
  Client client(FakeConfig("slow_init", {{"FAKE_SIDECAR_INIT_DELAY_MS", "1500"}}),
                options);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<absl::Status> replies;
  for (int i = 0; i < 3; ++i) {
    client.CallAsync("pid", Json::object(), seconds(30),
                     [&](absl::StatusOr<Json> reply) {
                       std::lock_guard<std::mutex> lock(mu);
                       replies.push_back(reply.status());
                       cv.notify_all();
                     });
  }
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return replies.size() == 1; }));
  EXPECT_TRUE(absl::IsResourceExhausted(replies[0])) << replies[0];
  EXPECT_EQ(ReasonOf(replies[0]), reason::kOverloaded);
  // The two that queued are answered once the sidecar is ready.
  ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return replies.size() == 3; }));
  EXPECT_TRUE(replies[1].ok()) << replies[1];
  EXPECT_TRUE(replies[2].ok()) << replies[2];
}

TEST(SidecarPoolTest, CallsArrivingDuringAStartWaitAndAllRun) {
  // A start storm: 64 calls while the sidecar takes seconds to start. None
  // blocks its caller; all are served once it is up.
  StateWaiter waiter;
  ClientOptions options;
  options.pool.preload = true;
  options.pool.observer = &waiter;
  Client client(FakeConfig("slow_init", {{"FAKE_SIDECAR_INIT_DELAY_MS", "1500"}}),
                options);
  constexpr int kCalls = 64;
  std::vector<std::unique_ptr<Outcome>> outcomes;
  for (int i = 0; i < kCalls; ++i) {
    outcomes.push_back(std::make_unique<Outcome>());
    client.Stream(Ask(absl::StrCat("call ", i)), outcomes.back()->Handlers());
  }
  EXPECT_FALSE(client.IsRunning()) << "the test needs the sidecar still starting";
  EXPECT_EQ(client.Status().queued, kCalls);
  for (int i = 0; i < kCalls; ++i) {
    auto result = outcomes[i]->Wait();
    ASSERT_TRUE(result.ok()) << i << ": " << result.status();
    EXPECT_EQ(result->content, absl::StrCat("call ", i, " "));
  }
  EXPECT_EQ(client.StartCount(), 1);
}

TEST(SidecarPoolTest, CallsGoToTheLeastLoadedAndAKillOnlyFailsItsOwn) {
  StateWaiter waiter;
  ClientOptions options;
  options.pool.sidecars = 2;
  options.pool.preload = true;
  options.pool.observer = &waiter;
  Client client(FakeConfig("hang"), options);
  ASSERT_TRUE(waiter.WaitUntil(client, [](const PoolStatus& s) {
    return CountReady(s) == 2;
  }));
  Tally tally;
  std::vector<std::unique_ptr<Outcome>> outcomes;
  std::vector<StreamHandle> handles;
  for (int i = 0; i < 4; ++i) {
    outcomes.push_back(std::make_unique<Outcome>(&tally));
    handles.push_back(client.Stream(Ask("hold"), outcomes.back()->Handlers()));
  }
  PoolStatus status = client.Status();
  ASSERT_EQ(status.slots.size(), 2u);
  EXPECT_EQ(status.slots[0].in_flight, 2);
  EXPECT_EQ(status.slots[1].in_flight, 2);
  const pid_t victim = status.slots[0].pid;
  const pid_t survivor = status.slots[1].pid;
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  // Exactly the victim's two calls fail, with the signal named.
  ASSERT_TRUE(tally.WaitFor(2));
  {
    std::lock_guard<std::mutex> lock(tally.mu);
    ASSERT_EQ(tally.statuses.size(), 2u);
    for (const absl::Status& why : tally.statuses) {
      EXPECT_TRUE(absl::IsUnavailable(why)) << why;
      EXPECT_THAT(std::string(why.message()), HasSubstr("SIGKILL"));
    }
  }
  // The killed sidecar is replaced; the other one was never touched.
  ASSERT_TRUE(waiter.WaitUntil(client, [victim](const PoolStatus& s) {
    return CountReady(s) == 2 && s.slots[0].pid != victim;
  }));
  status = client.Status();
  EXPECT_NE(status.slots[0].pid, victim);
  EXPECT_EQ(status.slots[1].pid, survivor);
  EXPECT_TRUE(ProcessGone(victim));
  for (auto& h : handles) h.Cancel(absl::CancelledError("test over"));
  for (auto& o : outcomes) (void)o->Wait();
  // Only the victim's two calls failed: the other two ran until cancelled.
  std::lock_guard<std::mutex> lock(tally.mu);
  ASSERT_EQ(tally.statuses.size(), 4u);
  EXPECT_TRUE(absl::IsCancelled(tally.statuses[2]));
  EXPECT_TRUE(absl::IsCancelled(tally.statuses[3]));
}

struct Fault {
  const char* name;
  absl::StatusCode code;
};

class FaultTest : public ::testing::TestWithParam<Fault> {};

// Each protocol fault ends the affected call within seconds with the right
// status (a fault that names no call is dropped and the call completes),
// the next call is served, and nothing leaks.
TEST_P(FaultTest, EndsItsCallAndTheNextCallIsServed) {
  const Fault fault = GetParam();
  Client client(FakeConfig("fault", {{"FAKE_SIDECAR_FAULT", fault.name}}));
  ASSERT_TRUE(client.Complete(Ask("warm up")).ok());
  const int fds = CountEntries("/proc/self/fd");
  const int threads = CountEntries("/proc/self/task");

  Outcome affected;
  client.Stream(Ask("trigger"), affected.Handlers());
  auto result = affected.Wait();
  EXPECT_EQ(result.status().code(), fault.code) << result.status();
  if (fault.code == absl::StatusCode::kInternal) {
    EXPECT_EQ(ReasonOf(result.status()), reason::kSidecarProtocolError);
  }
  // Non-streamed completions get no fault: the next call is served (by a
  // replacement if the sidecar died).
  auto next = client.Complete(Ask("next"));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->content, "next");
  if (fault.code != absl::StatusCode::kUnavailable) {
    EXPECT_EQ(client.StartCount(), 1);
    EXPECT_EQ(CountEntries("/proc/self/fd"), fds);
    EXPECT_EQ(CountEntries("/proc/self/task"), threads);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Faults, FaultTest,
    ::testing::Values(Fault{"jsonrpc_number", absl::StatusCode::kInternal},
                      Fault{"no_result_no_error", absl::StatusCode::kInternal},
                      Fault{"content_number", absl::StatusCode::kInternal},
                      Fault{"non_utf8", absl::StatusCode::kInternal},
                      Fault{"usage_huge", absl::StatusCode::kInternal},
                      Fault{"id_object", absl::StatusCode::kOk},
                      Fault{"params_string", absl::StatusCode::kOk},
                      Fault{"unknown_id", absl::StatusCode::kOk},
                      Fault{"duplicate_done", absl::StatusCode::kOk},
                      Fault{"half_line_eof", absl::StatusCode::kUnavailable}),
    [](const ::testing::TestParamInfo<Fault>& info) {
      return std::string(info.param.name);
    });

TEST(SidecarPoolTest, ASidecarThatStopsAnsweringHealthIsReplaced) {
  StateWaiter waiter;
  ClientOptions options;
  options.pool.health_interval = milliseconds(100);
  options.pool.health_timeout = milliseconds(300);
  options.pool.observer = &waiter;
  Client client(FakeConfig("no_health"), options);
  ASSERT_TRUE(client.EnsureStarted().ok());
  const pid_t stuck = client.SidecarPid();
  Outcome in_flight;
  client.Stream(Ask("hold"), in_flight.Handlers());
  auto result = in_flight.Wait();
  EXPECT_TRUE(absl::IsUnavailable(result.status())) << result.status();
  ASSERT_TRUE(waiter.WaitUntil(client, [stuck](const PoolStatus& s) {
    return s.AnyReady() && s.slots[0].pid != stuck;
  }));
  EXPECT_TRUE(ProcessGone(stuck));
}

TEST(SidecarPoolTest, ShutdownDoesNotWaitForAHealthProbe) {
  StateWaiter waiter;
  ClientOptions options;
  options.pool.health_interval = milliseconds(10);
  options.pool.health_timeout = seconds(600);  // a probe stays pending
  options.pool.sidecar.stop_grace = milliseconds(500);
  Client client(FakeConfig("no_health"), options);
  ASSERT_TRUE(client.EnsureStarted().ok());
  const pid_t pid = client.SidecarPid();
  const auto start = std::chrono::steady_clock::now();
  client.Shutdown();
  // Bounded by the stop sequence, never by the probe's 10 minutes.
  EXPECT_LT(std::chrono::steady_clock::now() - start, kWait);
  EXPECT_TRUE(ProcessGone(pid));
  Outcome refused;
  client.Stream(Ask("after"), refused.Handlers());
  ASSERT_TRUE(refused.Done());
  EXPECT_EQ(ReasonOf(refused.done->status()), reason::kShuttingDown);
}

TEST(SidecarPoolTest, OnDemandStartAndKeepAliveUnload) {
  StateWaiter waiter;
  ClientOptions options;
  options.pool.preload = false;
  options.pool.keep_alive = milliseconds(300);
  options.pool.observer = &waiter;
  Client client(FakeConfig("echo"), options);
  EXPECT_EQ(client.StartCount(), 0);
  EXPECT_EQ(client.Status().slots[0].state, SlotState::kIdle);
  auto first = client.Complete(Ask("wake up"));
  ASSERT_TRUE(first.ok()) << first.status();
  const pid_t pid = client.SidecarPid();
  // Idle past keep_alive: the process goes.
  ASSERT_TRUE(waiter.WaitUntil(client, [](const PoolStatus& s) {
    return s.slots[0].state == SlotState::kIdle && s.slots[0].pid == -1;
  }));
  EXPECT_TRUE(ProcessGone(pid));
  // The next call brings it back.
  auto second = client.Complete(Ask("again"));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(client.StartCount(), 2);
}


// Deaths of sidecars that served calls are not a crash loop: more kills in
// a row than max_quick_failures never make the pool refuse calls.
TEST(SidecarPoolTest, KillsOfServingSidecarsNeverLookLikeACrashLoop) {
  StateWaiter waiter;
  ClientOptions options;
  options.pool.observer = &waiter;
  Client client(FakeConfig("echo"), options);
  for (int i = 0; i < options.pool.restart.max_quick_failures + 2; ++i) {
    auto served = client.Complete(Ask(absl::StrCat("call ", i)));
    ASSERT_TRUE(served.ok()) << "call " << i << ": " << served.status();
    const pid_t pid = client.SidecarPid();
    ASSERT_GT(pid, 0);
    ::kill(pid, SIGKILL);
    // Once the pool saw the death, the next call waits for the replacement
    // (a crash loop would fail it at once).
    ASSERT_TRUE(waiter.WaitUntil(client, [pid](const PoolStatus& s) {
      return s.slots[0].pid != pid;
    }));
  }
  EXPECT_TRUE(client.Complete(Ask("after the kills")).ok());
}

// A model loaded on demand, sharing `gate` with others.
ClientOptions OnDemandBehind(LoadGate& gate, StateWaiter& waiter) {
  ClientOptions options;
  options.pool.preload = false;
  options.pool.load_gate = &gate;
  options.pool.observer = &waiter;
  return options;
}

// Two models under --max_loaded_models=1: each call to the other model
// unloads the idle one first, so at most one sidecar runs at a time.
TEST(SidecarPoolTest, ALoadGateOfOneSwapsIdleModels) {
  LoadGate gate(1);
  StateWaiter waiter_a, waiter_b;
  Client a(FakeConfig("echo"), OnDemandBehind(gate, waiter_a));
  Client b(FakeConfig("echo"), OnDemandBehind(gate, waiter_b));

  ASSERT_TRUE(a.Complete(Ask("first")).ok());
  const pid_t a_pid = a.SidecarPid();
  auto from_b = b.Complete(Ask("second"));
  ASSERT_TRUE(from_b.ok()) << from_b.status();
  EXPECT_TRUE(ProcessGone(a_pid));
  EXPECT_EQ(a.Status().slots[0].state, SlotState::kIdle);
  EXPECT_EQ(gate.loaded(), 1);
  const pid_t b_pid = b.SidecarPid();
  ASSERT_TRUE(a.Complete(Ask("third")).ok());
  EXPECT_TRUE(ProcessGone(b_pid));
  EXPECT_EQ(a.StartCount(), 2);
}

// A model with a call in flight is never unloaded: the other waits for a
// place (reported as waiting_for_load) until that call ends.
TEST(SidecarPoolTest, ALoadGateNeverUnloadsUnderACall) {
  LoadGate gate(1);
  StateWaiter waiter_a, waiter_b;
  Client a(FakeConfig("hang"), OnDemandBehind(gate, waiter_a));
  Client b(FakeConfig("echo"), OnDemandBehind(gate, waiter_b));

  Outcome held, waiting;
  StreamHandle hold = a.Stream(Ask("hold"), held.Handlers());
  ASSERT_TRUE(waiter_a.WaitUntil(a, [](const PoolStatus& s) { return s.in_flight == 1; }));
  b.Stream(Ask("wait for a place"), waiting.Handlers());
  ASSERT_TRUE(waiter_b.WaitUntil(b, [](const PoolStatus& s) { return s.waiting_for_load; }));
  EXPECT_STREQ(b.Status().LoadState(), "loading");
  EXPECT_FALSE(held.Done());
  EXPECT_FALSE(waiting.Done());
  EXPECT_TRUE(a.IsRunning());

  hold.Cancel(absl::CancelledError("test: done holding"));
  auto served = waiting.Wait();
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_THAT(served->content, HasSubstr("place"));
  EXPECT_EQ(a.Status().slots[0].state, SlotState::kIdle);
}

}  // namespace
}  // namespace llmbridge::rpc
