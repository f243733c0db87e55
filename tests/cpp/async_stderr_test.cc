// AsyncLineWriter over a real pipe: lines arrive in order, and a reader
// that stops reading costs dropped (and reported) lines, never a blocked
// caller.
#include "rpc_bridge/async_stderr.h"

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

class Pipe {
 public:
  Pipe() { EXPECT_EQ(::pipe(fds_), 0); }
  ~Pipe() {
    ::close(fds_[0]);
    CloseWriteEnd();
  }
  void CloseWriteEnd() {
    if (fds_[1] >= 0) ::close(fds_[1]);
    fds_[1] = -1;
  }
  int read_fd() const { return fds_[0]; }
  int write_fd() const { return fds_[1]; }

  std::string ReadAll() { return ReadUntil(std::string(1, '\0')); }

  // Reads until `needle` has arrived, or end of file, or `limit` passed
  // with nothing to read (a failure bound, not a wait: the data's arrival
  // ends it).
  std::string ReadUntilWithin(const std::string& needle,
                              std::chrono::milliseconds limit) {
    std::string got;
    char buf[65536];
    while (got.find(needle) == std::string::npos) {
      pollfd p{fds_[0], POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) break;
      ssize_t n = ::read(fds_[0], buf, sizeof(buf));
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }

  // Reads until `needle` has arrived, or end of file.
  std::string ReadUntil(const std::string& needle) {
    std::string got;
    char buf[65536];
    while (got.find(needle) == std::string::npos) {
      ssize_t n = ::read(fds_[0], buf, sizeof(buf));
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }

 private:
  int fds_[2];
};

TEST(AsyncLineWriterTest, WritesLinesInOrderWithNewlines) {
  Pipe pipe;
  AsyncLineWriter writer(pipe.write_fd());
  EXPECT_TRUE(writer.Write("one"));
  EXPECT_TRUE(writer.Write("two\n"));
  EXPECT_TRUE(writer.Write("three"));
  EXPECT_EQ(pipe.ReadUntil("three\n"), "one\ntwo\nthree\n");
  EXPECT_TRUE(writer.Flush(std::chrono::seconds(10)));
  EXPECT_EQ(writer.written_lines(), 3u);
  EXPECT_EQ(writer.dropped_lines(), 0u);
}

// The writer lingers for more lines before writing (one hand-off per batch,
// not per line), but never past a Flush or a full batch.
AsyncLineWriter::Limits LingeringForAnHour() {
  AsyncLineWriter::Limits limits;
  limits.linger = std::chrono::hours(1);
  limits.batch_lines = 8;
  return limits;
}

TEST(AsyncLineWriterTest, FlushWritesAtOnceDespiteTheLinger) {
  Pipe pipe;
  AsyncLineWriter writer(pipe.write_fd(), LingeringForAnHour());
  EXPECT_TRUE(writer.Write("first"));
  EXPECT_TRUE(writer.Flush(std::chrono::seconds(30)));
  EXPECT_EQ(pipe.ReadUntilWithin("first\n", std::chrono::seconds(30)), "first\n");
}

TEST(AsyncLineWriterTest, AFullBatchIsWrittenWithoutWaitingForTheLinger) {
  Pipe pipe;
  AsyncLineWriter writer(pipe.write_fd(), LingeringForAnHour());
  std::string expected;
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(writer.Write(absl::StrCat("line ", i)));
    expected += absl::StrCat("line ", i, "\n");
  }
  EXPECT_EQ(pipe.ReadUntilWithin("line 7\n", std::chrono::seconds(30)), expected);
}

TEST(AsyncLineWriterTest, StalledReaderDropsAndCountsInsteadOfBlocking) {
  Pipe pipe;
  AsyncLineWriter writer(pipe.write_fd(), {/*max_queued_bytes=*/1 << 20,
                                           /*max_queued_lines=*/16});
  // Far more than the pipe (64 KiB) and the queue hold. Nobody reads: a
  // blocking writer would hang here, and the test with it.
  const std::string payload(200, 'x');
  constexpr int kLines = 5000;
  int accepted = 0;
  for (int i = 0; i < kLines; ++i) {
    if (writer.Write(absl::StrCat(i, " ", payload))) ++accepted;
  }
  const uint64_t dropped = writer.dropped_lines();
  EXPECT_GT(dropped, 0u);
  EXPECT_EQ(accepted + dropped, static_cast<uint64_t>(kLines));

  // The reader comes back: every accepted line arrives, and reports of
  // what was lost add up to the drop count.
  std::string got;
  std::thread reader([&] { got = pipe.ReadAll(); });
  EXPECT_TRUE(writer.Flush(std::chrono::seconds(60)));
  pipe.CloseWriteEnd();
  reader.join();
  uint64_t reported = 0;
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(got, '\n', absl::SkipEmpty())) {
    constexpr absl::string_view kCount = "\"count\":";
    size_t at = line.find(kCount);
    if (line.find("log_lines_dropped") == absl::string_view::npos) {
      ++lines;
      continue;
    }
    ASSERT_NE(at, absl::string_view::npos) << line;
    line.remove_prefix(at + kCount.size());
    uint64_t count = 0;
    ASSERT_TRUE(absl::SimpleAtoi(line.substr(0, line.find(',')), &count)) << line;
    reported += count;
  }
  EXPECT_EQ(lines, accepted);
  EXPECT_EQ(reported, dropped);
}

}  // namespace
}  // namespace llmbridge::rpc
