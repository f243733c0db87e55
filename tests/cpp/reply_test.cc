// Reply: once by type, never lost.
#include "rpc_bridge/reply.h"

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

static_assert(!std::is_copy_constructible_v<Reply<int>>,
              "a reply callback must not be copied: two copies could both answer");
static_assert(!std::is_copy_assignable_v<Reply<int>>);

TEST(ReplyTest, FinishRunsTheCallbackOnceAndEmptiesIt) {
  std::vector<int> got;
  Reply<int> reply = [&got](absl::StatusOr<int> r) { got.push_back(r.value_or(-1)); };
  ASSERT_TRUE(reply);
  std::move(reply).Finish(7);
  EXPECT_FALSE(reply);  // NOLINT(bugprone-use-after-move): empty by contract
  std::move(reply).Finish(8);  // NOLINT(bugprone-use-after-move): a no-op
  EXPECT_EQ(got, std::vector<int>{7});
}

TEST(ReplyTest, MovingHandsOverTheOnlyCallback) {
  int calls = 0;
  Reply<int> first = [&calls](absl::StatusOr<int>) { ++calls; };
  Reply<int> second = std::move(first);
  EXPECT_FALSE(first);  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(second);
  std::move(second).Finish(1);
  EXPECT_EQ(calls, 1);
}

TEST(ReplyTest, AReplyDroppedUnfinishedAnswersInternal) {
  absl::Status got;
  {
    Reply<std::string> reply = [&got](absl::StatusOr<std::string> r) { got = r.status(); };
  }
  EXPECT_EQ(got.code(), absl::StatusCode::kInternal);
  EXPECT_NE(got.message().find("dropped without an answer"), absl::string_view::npos);
}

TEST(ReplyTest, AssigningOverAnUnfinishedReplyAnswersIt) {
  std::vector<std::string> got;
  Reply<int> reply = [&got](absl::StatusOr<int> r) { got.push_back("old " + r.status().ToString()); };
  reply = [&got](absl::StatusOr<int> r) { got.push_back("new " + std::to_string(*r)); };
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].rfind("old INTERNAL", 0), 0u) << got[0];
  std::move(reply).Finish(3);
  EXPECT_EQ(got.back(), "new 3");
}

TEST(ReplyTest, AnEmptyReplyDoesNothing) {
  Reply<int> empty;
  EXPECT_FALSE(empty);
  std::move(empty).Finish(1);
}

}  // namespace
}  // namespace llmbridge::rpc
