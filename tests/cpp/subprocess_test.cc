// Subprocess's stderr: each line the child writes reaches the caller's
// callback (the server logs it as JSON), and the tail is still kept for
// error messages.
#include "rpc_bridge/subprocess.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

using ::testing::ElementsAre;

constexpr std::chrono::seconds kWait(20);  // only bounds a broken test

TEST(SubprocessTest, StderrLinesGoToTheCallbackWhenOneIsSet) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> lines;
  SubprocessOptions options;
  options.argv = {"/bin/sh", "-c",
                  "printf 'first\\nsecond \"quoted\"\\n\\nlast\\n' >&2"};
  options.on_stderr_line = [&](std::string_view line) {
    std::lock_guard<std::mutex> lock(mu);
    lines.emplace_back(line);
    cv.notify_all();
  };
  auto child = Subprocess::Spawn(options);
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE((*child)->Wait(kWait).has_value());
  (*child)->WaitStderrDrained(kWait);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return lines.size() == 4; }));
    EXPECT_THAT(lines, ElementsAre("first", "second \"quoted\"", "", "last"));
  }
  EXPECT_EQ((*child)->StderrTail(), "first\nsecond \"quoted\"\n\nlast");
}

}  // namespace
}  // namespace llmbridge::rpc
