// Real-process tests of the bridge: the client drives purpose-built
// misbehaving sidecars (testdata/fake_sidecar.py) over real pipes.
#include "rpc_bridge/client.h"

#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <poll.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cpp/fake_sidecar.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/sidecar.h"

namespace llmbridge::rpc {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

using testing::Ask;
using testing::CountEntries;
using testing::ProcessGone;
using testing::FakeConfig;
using testing::FakeSidecarPath;
using testing::kWait;

// Collects one stream's chunks and its end; Wait blocks on the end.
struct Collected {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> chunks;
  std::optional<absl::StatusOr<CompleteResult>> done;

  StreamHandlers Handlers() {
    return {[this](const std::string& delta) {
              std::lock_guard<std::mutex> lock(mu);
              chunks.push_back(delta);
            },
            [this](absl::StatusOr<CompleteResult> r) {
              std::lock_guard<std::mutex> lock(mu);
              done = std::move(r);
              cv.notify_all();
            }};
  }
  absl::StatusOr<CompleteResult> Wait() {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, kWait, [&] { return done.has_value(); })) {
      return absl::InternalError("test: stream never ended");
    }
    return *done;
  }
  std::string Text() {
    std::lock_guard<std::mutex> lock(mu);
    std::string out;
    for (const auto& c : chunks) out += c;
    return out;
  }
};

TEST(ClientTest, ManyConcurrentStreamsShareOneSidecar) {
  Client client(FakeConfig("echo"));
  constexpr int kStreams = 16;
  std::vector<std::unique_ptr<Collected>> streams;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<Collected>());
    client.Stream(Ask(absl::StrCat("stream", i, " alpha beta")),
                  streams.back()->Handlers());
  }
  for (int i = 0; i < kStreams; ++i) {
    auto result = streams[i]->Wait();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(streams[i]->Text(), absl::StrCat("stream", i, " alpha beta "));
    EXPECT_EQ(result->content, streams[i]->Text());
    EXPECT_EQ(result->usage.output_tokens, 3);
    EXPECT_EQ(result->finish_reason, "stop");
  }
  EXPECT_EQ(client.StartCount(), 1);
}

TEST(ClientTest, SeedStyleSidecarGetsItsStreamsOneAtATime) {
  // The seed-style fake exits (code 7) if two streams ever overlap.
  Client client(FakeConfig("seed"));
  std::vector<std::unique_ptr<Collected>> streams;
  for (int i = 0; i < 4; ++i) {
    streams.push_back(std::make_unique<Collected>());
    client.Stream(Ask(absl::StrCat("seed", i, " words")), streams.back()->Handlers());
  }
  for (int i = 0; i < 4; ++i) {
    auto result = streams[i]->Wait();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(streams[i]->Text(), absl::StrCat("seed", i, " words "));
  }
  EXPECT_TRUE(client.IsRunning());
}

TEST(ClientTest, CompleteReturnsTheWholeAnswer) {
  Client client({WithBackend(kBackendOllama), WithModel("fake"),
                 WithPythonPath("/usr/bin/python3"),
                 WithSidecarPath(FakeSidecarPath()),
                 WithEnv({{"FAKE_SIDECAR_MODE", "echo"}})});
  EXPECT_EQ(client.config().host, "localhost:11434");  // WithDefaults
  auto result = client.Complete(Ask("whole answer"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->content, "whole answer");
  EXPECT_EQ(Client::Provider(), "local");
}

TEST(ClientTest, SeedStyleSidecarAnswersTheNewMethodsUnimplemented) {
  // A sidecar written to the seed's text has no "embed" or "count_tokens":
  // its -32601 is UNIMPLEMENTED at once, never a hang.
  Client client(FakeConfig("seed"));
  auto counted = client.Call(kMethodCountTokens, Json{{"messages", Json::array()}}, kWait);
  EXPECT_EQ(counted.status().code(), absl::StatusCode::kUnimplemented) << counted.status();
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<Json>> embedded;
  client.CallAdmitted(kMethodEmbed, Json{{"inputs", {"x"}}}, [&](absl::StatusOr<Json> r) {
    std::lock_guard<std::mutex> lock(mu);
    embedded = std::move(r);
    cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return embedded.has_value(); }));
  EXPECT_EQ(embedded->status().code(), absl::StatusCode::kUnimplemented)
      << embedded->status();
  EXPECT_THAT(embedded->status().message(), HasSubstr("embed"));
}

TEST(ClientTest, AnAdmittedCallEndsAtItsDeadlineOrCancel) {
  Client client(FakeConfig("hang"));  // "complete" is never answered
  std::mutex mu;
  std::condition_variable cv;
  std::vector<absl::Status> ends;
  auto on_reply = [&](absl::StatusOr<Json> r) {
    std::lock_guard<std::mutex> lock(mu);
    ends.push_back(r.status());
    cv.notify_all();
  };
  CallOptions call;
  call.deadline = std::chrono::steady_clock::now() + milliseconds(200);
  client.CallAdmitted(kMethodComplete, Ask("slow"), on_reply, call);
  StreamHandle handle = client.CallAdmitted(kMethodComplete, Ask("stopped"), on_reply);
  handle.Cancel(absl::CancelledError("user pressed stop"));
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return ends.size() == 2; }));
  EXPECT_TRUE(absl::IsCancelled(ends[0])) << ends[0];
  EXPECT_TRUE(absl::IsDeadlineExceeded(ends[1])) << ends[1];
}

TEST(ClientTest, CancelEndsTheStreamAtOnce) {
  Client client(FakeConfig("hang"));
  Collected c;
  StreamHandle handle = client.Stream(Ask("never answered"), c.Handlers());
  handle.Cancel(absl::CancelledError("user pressed stop"));
  std::lock_guard<std::mutex> lock(c.mu);
  ASSERT_TRUE(c.done.has_value()) << "on_done must run before Cancel returns";
  EXPECT_TRUE(absl::IsCancelled(c.done->status()));
}

TEST(ClientTest, CancelReachesTheSidecarAndLateRepliesAreDropped) {
  SidecarOptions options;
  options.config = WithDefaults(FakeConfig("hang"));
  auto sidecar = Sidecar::Start(options);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  Dispatcher& d = (*sidecar)->dispatcher();
  int replies = 0;
  int64_t id = d.Call("complete", Ask("x"),
                      {nullptr, nullptr, [&](absl::StatusOr<Json>) { ++replies; }});
  d.Cancel(id, absl::CancelledError("stop"));
  // The fake answers the cancelled request with -32800 (dropped here) and
  // records the cancel, which "stats" reports.
  auto stats = CallAndWait(d, "stats", Json::object(), kWait);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ((*stats)["cancelled"], Json::array({id}));
  EXPECT_EQ(replies, 1);
}

TEST(ClientTest, PassedDeadlineEndsWithDeadlineExceeded) {
  Client client(FakeConfig("hang"));
  Collected c;
  CallOptions call;
  call.deadline = std::chrono::steady_clock::now() + milliseconds(200);
  client.Stream(Ask("slow"), c.Handlers(), call);
  auto result = c.Wait();
  EXPECT_TRUE(absl::IsDeadlineExceeded(result.status())) << result.status();
  // Complete honours its deadline too.
  call.deadline = std::chrono::steady_clock::now() + milliseconds(200);
  auto whole = client.Complete(Ask("slow"), call);
  EXPECT_TRUE(absl::IsDeadlineExceeded(whole.status())) << whole.status();
}

TEST(ClientTest, CrashFailsInFlightCallsWithExitAndStderrThenRestarts) {
  Client client(FakeConfig("crash_mid_stream"));
  ASSERT_TRUE(client.EnsureStarted().ok());
  Collected first;
  client.Stream(Ask("boom"), first.Handlers());
  pid_t first_pid = client.SidecarPid();
  auto result = first.Wait();
  ASSERT_TRUE(absl::IsUnavailable(result.status())) << result.status();
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("exited with code 3"));
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("fatal: simulated crash"));
  EXPECT_EQ(first.Text(), "partial");

  // The supervisor replaces it at once, without waiting for a request.
  ASSERT_TRUE(client.EnsureStarted().ok());
  EXPECT_NE(client.SidecarPid(), first_pid);
  EXPECT_EQ(client.StartCount(), 2);
  Collected second;
  client.Stream(Ask("again"), second.Handlers());
  EXPECT_TRUE(absl::IsUnavailable(second.Wait().status()));
}

TEST(ClientTest, GarbageOnStdoutIsSkipped) {
  Client client(FakeConfig("garbage"));
  Collected c;
  client.Stream(Ask("still fine"), c.Handlers());
  auto result = c.Wait();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(c.Text(), "still fine ");
}

TEST(ClientTest, OverlongLineFailsOnlyItsCall) {
  ClientOptions options;
  options.pool.sidecar.max_line_bytes = 1 << 20;
  Client client(FakeConfig("huge_line", {{"FAKE_SIDECAR_HUGE_BYTES", "3000000"}}),
                options);
  auto huge = client.Complete(Ask("huge"));
  EXPECT_TRUE(absl::IsResourceExhausted(huge.status())) << huge.status();
  EXPECT_THAT(std::string(huge.status().message()), HasSubstr("1048576"));
  auto fine = client.Complete(Ask("small"));
  ASSERT_TRUE(fine.ok()) << fine.status();
  EXPECT_EQ(fine->content, "small");
  EXPECT_EQ(client.StartCount(), 1);
}

TEST(ClientTest, SidecarThatNeverAnswersInitTimesOut) {
  Config config = FakeConfig("init_hang");
  config.startup_timeout = milliseconds(300);
  Client client(config);
  absl::Status started = client.EnsureStarted();
  EXPECT_TRUE(absl::IsUnavailable(started)) << started;
  EXPECT_THAT(std::string(started.message()), HasSubstr("not ready within 300 ms"));
  EXPECT_FALSE(client.IsRunning());
}

TEST(ClientTest, SidecarExitingDuringInitReportsCodeAndStderr) {
  Client client(FakeConfig("init_exit"));
  absl::Status started = client.EnsureStarted();
  EXPECT_TRUE(absl::IsUnavailable(started)) << started;
  EXPECT_THAT(std::string(started.message()), HasSubstr("exited with code 4"));
  EXPECT_THAT(std::string(started.message()), HasSubstr("cannot load model"));
}

TEST(ClientTest, AFailedStartIsRememberedAndCallsFailAtOnceWithIt) {
  ClientOptions options;
  options.pool.restart.initial_backoff = seconds(600);  // no second try here
  Client client(FakeConfig("init_exit"), options);
  EXPECT_FALSE(client.EnsureStarted().ok());
  auto refused = client.Complete(Ask("hello"));
  EXPECT_TRUE(absl::IsUnavailable(refused.status())) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("exited with code 4"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("cannot load model"));
  // Its RetryInfo is the wait for the next start, not a default second.
  EXPECT_EQ(AttachedRetryDelay(refused.status()), seconds(600));
  EXPECT_EQ(client.StartCount(), 1);
}

TEST(ClientTest, PermanentStartErrorsKeepTheirCode) {
  // A missing model stays NOT_FOUND however often the start is retried: a
  // client must not be told to retry something that cannot work.
  ClientOptions options;
  options.pool.restart.initial_backoff = milliseconds(1);
  options.pool.restart.max_backoff = milliseconds(5);
  Client client(FakeConfig("init_not_found"), options);
  for (int i = 0; i < 8; ++i) {
    absl::Status started = client.EnsureStarted();
    EXPECT_TRUE(absl::IsNotFound(started)) << started;
    auto result = client.Complete(Ask("hello"));
    EXPECT_TRUE(absl::IsNotFound(result.status())) << result.status();
  }
}

TEST(ClientTest, CrashLoopAfterStartsFailsCallsAtOnce) {
  // Each sidecar starts fine, then dies mid-stream: a crash loop all the
  // same. The first crash restarts at once; the second gives up for a
  // while, and calls fail at once naming the exit.
  ClientOptions options;
  options.pool.restart.max_quick_failures = 2;
  options.pool.restart.initial_backoff = seconds(600);
  options.pool.restart.max_backoff = seconds(600);
  Client client(FakeConfig("crash_mid_stream"), options);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(client.EnsureStarted().ok()) << i;
    Collected c;
    client.Stream(Ask("boom"), c.Handlers());
    EXPECT_TRUE(absl::IsUnavailable(c.Wait().status()));
  }
  // Once the second death is processed (EnsureStarted returns then), calls
  // fail at once.
  absl::Status looping = client.EnsureStarted();
  EXPECT_THAT(std::string(looping.message()), HasSubstr("keeps dying"));
  Collected refused;
  client.Stream(Ask("again"), refused.Handlers());
  auto result = refused.Wait();
  ASSERT_TRUE(absl::IsUnavailable(result.status())) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("keeps dying"));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("exited with code 3"));
  EXPECT_EQ(AttachedRetryDelay(result.status()), seconds(600));  // the back-off
  EXPECT_EQ(client.StartCount(), 2);
}

TEST(ClientTest, StuckSidecarDoesNotBlockWritesForever) {
  ClientOptions options;
  options.pool.sidecar.write_timeout = milliseconds(300);
  options.pool.sidecar.stop_grace = milliseconds(300);
  Client client(FakeConfig("no_read"), options);
  ASSERT_TRUE(client.EnsureStarted().ok());
  const pid_t stuck = client.SidecarPid();
  // Far more than a pipe buffer: the write is left to the writer thread,
  // which gives up after write_timeout; the stuck sidecar is replaced.
  auto result = client.Complete(Ask(std::string(4 << 20, 'w')));
  EXPECT_TRUE(absl::IsUnavailable(result.status())) << result.status();
  ASSERT_TRUE(client.EnsureStarted().ok());
  EXPECT_NE(client.SidecarPid(), stuck);
  EXPECT_TRUE(ProcessGone(stuck));
}

TEST(ClientTest, FloodOfStderrNeverBlocksTheSidecar) {
  Client client(FakeConfig("stderr_flood", {{"FAKE_SIDECAR_FLOOD_BYTES", "2000000"}}));
  for (int i = 0; i < 3; ++i) {
    auto result = client.Complete(Ask("flooded"));
    ASSERT_TRUE(result.ok()) << result.status();
  }
}

TEST(SidecarTest, StopEscalatesToSigkillWhenIgnored) {
  SidecarOptions options;
  options.config = WithDefaults(FakeConfig("ignore_stop"));
  options.stop_grace = milliseconds(200);
  auto sidecar = Sidecar::Start(options);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  pid_t pid = (*sidecar)->pid();
  ExitInfo exit = (*sidecar)->Stop();
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(exit.signal, SIGKILL);
  EXPECT_TRUE(ProcessGone(pid));
}

TEST(SidecarTest, PoliteStopExitsCleanly) {
  SidecarOptions options;
  options.config = WithDefaults(FakeConfig("echo"));
  auto sidecar = Sidecar::Start(options);
  ASSERT_TRUE(sidecar.ok()) << sidecar.status();
  ExitInfo exit = (*sidecar)->Stop();
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.exit_code, 0);
  EXPECT_EQ(exit.Describe(), "exited with code 0");
}

TEST(ClientTest, NoFdThreadOrZombieLeaksAcrossRestarts) {
  Client client(FakeConfig("echo"));
  ASSERT_TRUE(client.Complete(Ask("warm up")).ok());
  client.Close();
  const int fds = CountEntries("/proc/self/fd");
  const int threads = CountEntries("/proc/self/task");
  std::vector<pid_t> pids;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(client.Restart().ok());
    pids.push_back(client.SidecarPid());
    Collected c;
    client.Stream(Ask("cycle"), c.Handlers());
    ASSERT_TRUE(c.Wait().ok());
  }
  client.Close();
  EXPECT_EQ(CountEntries("/proc/self/fd"), fds);
  EXPECT_EQ(CountEntries("/proc/self/task"), threads);
  for (pid_t pid : pids) EXPECT_TRUE(ProcessGone(pid)) << pid;
}

TEST(SubprocessTest, ChildDiesWithItsParent) {
#if defined(__SANITIZE_THREAD__)
  // The middle process below is a fork of this multi-threaded test that
  // starts a thread (the spawner), which ThreadSanitizer refuses to run.
  GTEST_SKIP() << "not under ThreadSanitizer (threads after fork); the plain "
                  "and ASan runs cover it";
#endif
  // A middle process starts the child and is then SIGKILLed: no chance to
  // clean up, so only PR_SET_PDEATHSIG can take the child down.
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  pid_t middle = ::fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    SubprocessOptions options;
    options.argv = {"/usr/bin/python3", "-c", "import time; time.sleep(600)"};
    auto child = Subprocess::Spawn(options);
    pid_t pid = child.ok() ? (*child)->pid() : -1;
    (void)!::write(report[1], &pid, sizeof(pid));
    ::pause();
    ::_exit(0);
  }
  pid_t child = -1;
  pollfd ready{report[0], POLLIN, 0};
  ASSERT_EQ(::poll(&ready, 1, static_cast<int>(kWait.count())), 1)
      << "the middle process never reported its child";
  ASSERT_EQ(::read(report[0], &child, sizeof(child)),
            static_cast<ssize_t>(sizeof(child)));
  ASSERT_GT(child, 0);
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));
  ASSERT_GE(pidfd, 0);
  ::kill(middle, SIGKILL);
  ::waitpid(middle, nullptr, 0);
  // The pidfd turns readable when the child exits.
  pollfd p{pidfd, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, static_cast<int>(kWait.count())), 1)
      << "the child outlived its parent";
  ::close(pidfd);
  ::close(report[0]);
  ::close(report[1]);
}

TEST(ClientTest, SidecarOutlivesTheThreadThatStartedIt) {
  // PR_SET_PDEATHSIG is per thread: a sidecar forked by a short-lived thread
  // (a health probe, a gRPC worker) must not die when that thread ends.
  Client client(FakeConfig("echo"));
  std::thread starter([&] { ASSERT_TRUE(client.EnsureStarted().ok()); });
  starter.join();
  pid_t pid = client.SidecarPid();
  auto result = client.Complete(Ask("still here"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(client.SidecarPid(), pid);
  EXPECT_EQ(client.StartCount(), 1);
}

TEST(SubprocessTest, MissingProgramIsAClearError) {
  SubprocessOptions options;
  options.argv = {"/nonexistent/python"};
  auto child = Subprocess::Spawn(options);
  EXPECT_FALSE(child.ok());
  EXPECT_THAT(std::string(child.status().message()),
              HasSubstr("No such file or directory"));
}

}  // namespace
}  // namespace llmbridge::rpc
