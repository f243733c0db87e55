#include "rpc_bridge/line_reader.h"

#include <unistd.h>

#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

// A real pipe with a writer thread, so reads see partial chunks.
class PipeFixture : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(::pipe(fds_), 0); }
  void TearDown() override {
    if (writer_.joinable()) writer_.join();
    ::close(fds_[0]);
  }
  void WriteAndClose(std::string data) {
    writer_ = std::thread([this, data = std::move(data)] {
      // Dribble the bytes so lines straddle read() calls.
      for (size_t i = 0; i < data.size(); i += 3) {
        size_t n = std::min<size_t>(3, data.size() - i);
        ASSERT_EQ(::write(fds_[1], data.data() + i, n),
                  static_cast<ssize_t>(n));
      }
      ::close(fds_[1]);
    });
  }
  int fds_[2];
  std::thread writer_;
};

TEST_F(PipeFixture, SplitsLinesAcrossReads) {
  WriteAndClose("first\nsecond line\r\n\nlast\n");
  LineReader reader(fds_[0]);
  EXPECT_EQ(*reader.Next(), "first");
  EXPECT_EQ(*reader.Next(), "second line");
  EXPECT_EQ(*reader.Next(), "");
  EXPECT_EQ(*reader.Next(), "last");
  EXPECT_TRUE(absl::IsOutOfRange(reader.Next().status()));
}

TEST_F(PipeFixture, DropsPartialLastLineAtEof) {
  WriteAndClose("whole\npartial");
  LineReader reader(fds_[0]);
  EXPECT_EQ(*reader.Next(), "whole");
  EXPECT_TRUE(absl::IsOutOfRange(reader.Next().status()));
}

TEST_F(PipeFixture, SkipsOverlongLineAndKeepsReading) {
  std::string huge(100000, 'x');
  WriteAndClose("ok\n" + huge + "\nafter\n");
  LineReader reader(fds_[0], /*max_line_bytes=*/1024);
  EXPECT_EQ(*reader.Next(), "ok");
  auto skipped = reader.Next();
  EXPECT_TRUE(absl::IsResourceExhausted(skipped.status())) << skipped.status();
  EXPECT_EQ(*reader.Next(), "after");
}

TEST_F(PipeFixture, ManyLinesInOneReadComeOutInOrder) {
  std::string data;
  for (int i = 0; i < 5000; ++i) data += std::to_string(i) + "\n";
  WriteAndClose(data);
  LineReader reader(fds_[0]);
  for (int i = 0; i < 5000; ++i) ASSERT_EQ(*reader.Next(), std::to_string(i));
  EXPECT_TRUE(absl::IsOutOfRange(reader.Next().status()));
}

TEST_F(PipeFixture, LineExactlyAtCapIsKept) {
  std::string at_cap(64, 'y');
  WriteAndClose(at_cap + "\n");
  LineReader reader(fds_[0], /*max_line_bytes=*/64);
  EXPECT_EQ(*reader.Next(), at_cap);
}

// A read that would block (the writer holds the pipe open) does not happen
// when before_read says no: Next ends with its status, lines already read
// still come first.
TEST_F(PipeFixture, BeforeReadCanEndTheStreamInsteadOfBlocking) {
  ASSERT_EQ(::write(fds_[1], "one\npartial", 12), 12);
  int reads = 0;
  LineReader reader(fds_[0], kDefaultMaxLineBytes, [&reads] {
    return ++reads == 1 ? absl::OkStatus()
                        : absl::DeadlineExceededError("test: no more waiting");
  });
  EXPECT_EQ(*reader.Next(), "one");
  EXPECT_TRUE(absl::IsDeadlineExceeded(reader.Next().status()));
  EXPECT_EQ(reads, 2);
  ::close(fds_[1]);
}

}  // namespace
}  // namespace llmbridge::rpc
