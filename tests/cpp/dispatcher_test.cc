// The dispatcher's routing, driven through a fake transport: no process.
#include "rpc_bridge/dispatcher.h"

#include <mutex>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

class FakeTransport : public Transport {
 public:
  absl::Status Send(const std::string& line) override {
    std::lock_guard<std::mutex> lock(mu);
    if (broken) return absl::UnavailableError("pipe broken");
    sent.push_back(Json::parse(line));
    return absl::OkStatus();
  }
  void CloseSend() override {}
  std::mutex mu;
  std::vector<Json> sent;
  bool broken = false;
};

struct Recorder {
  std::vector<std::string> chunks;
  std::vector<absl::StatusOr<Json>> replies;
  CallHandlers Handlers() {
    return {[this](const Notification& n) -> NotificationOutcome {
              chunks.push_back(n.params.value("content", ""));
              return std::nullopt;
            },
            [this](absl::StatusOr<Json> r) { replies.push_back(std::move(r)); }};
  }
};

IncomingMessage Parse(const std::string& line) {
  auto m = ParseIncoming(line);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

std::string Chunk(int64_t id, const std::string& text) {
  return Json{{"jsonrpc", "2.0"},
              {"method", "stream.chunk"},
              {"params", {{"request_id", id}, {"content", text}}}}
      .dump();
}

std::string Result(int64_t id) {
  return Json{{"jsonrpc", "2.0"}, {"id", id}, {"result", {{"content", "x"}}}}
      .dump();
}

class DispatcherTest : public ::testing::Test {
 protected:
  DispatcherTest() { dispatcher.set_transport(&transport); }
  FakeTransport transport;
  Dispatcher dispatcher;
};

TEST_F(DispatcherTest, RoutesInterleavedStreamsByRequestId) {
  Recorder a, b;
  int64_t ida = dispatcher.Call("complete", Json::object(), a.Handlers());
  int64_t idb = dispatcher.Call("complete", Json::object(), b.Handlers());
  ASSERT_NE(ida, idb);
  dispatcher.OnMessage(Parse(Chunk(idb, "b1")));
  dispatcher.OnMessage(Parse(Chunk(ida, "a1")));
  dispatcher.OnMessage(Parse(Chunk(idb, "b2")));
  dispatcher.OnMessage(Parse(Result(ida)));
  dispatcher.OnMessage(Parse(Chunk(idb, "b3")));
  dispatcher.OnMessage(Parse(Result(idb)));
  EXPECT_EQ(a.chunks, (std::vector<std::string>{"a1"}));
  EXPECT_EQ(b.chunks, (std::vector<std::string>{"b1", "b2", "b3"}));
  ASSERT_EQ(a.replies.size(), 1u);
  ASSERT_EQ(b.replies.size(), 1u);
  EXPECT_EQ(dispatcher.pending_count(), 0u);
  EXPECT_EQ(transport.sent[0]["id"], ida);
  EXPECT_EQ(transport.sent[1]["method"], "complete");
}

TEST_F(DispatcherTest, ErrorReplyBecomesMappedStatus) {
  Recorder r;
  int64_t id = dispatcher.Call("complete", Json::object(), r.Handlers());
  dispatcher.OnMessage(Parse(
      Json{{"jsonrpc", "2.0"},
           {"id", id},
           {"error", {{"code", kModelNotFound}, {"message", "model \"x\""}}}}
          .dump()));
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_TRUE(absl::IsNotFound(r.replies[0].status()));
}

TEST_F(DispatcherTest, CancelRepliesOnceAndDropsLateMessages) {
  Recorder r;
  int64_t id = dispatcher.Call("complete", Json::object(), r.Handlers());
  dispatcher.Cancel(id, absl::CancelledError("client left"));
  ASSERT_EQ(transport.sent.size(), 2u);
  EXPECT_EQ(transport.sent[1]["method"], "$/cancelRequest");
  EXPECT_EQ(transport.sent[1]["params"]["id"], id);
  dispatcher.OnMessage(Parse(Chunk(id, "late")));
  dispatcher.OnMessage(Parse(Result(id)));
  dispatcher.Cancel(id, absl::CancelledError("again"));
  EXPECT_TRUE(r.chunks.empty());
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_TRUE(absl::IsCancelled(r.replies[0].status()));
}

TEST_F(DispatcherTest, ClosingFailsEveryPendingCallAndLaterCalls) {
  Recorder a, b, later;
  dispatcher.Call("complete", Json::object(), a.Handlers());
  dispatcher.Call("complete", Json::object(), b.Handlers());
  dispatcher.OnClosed(absl::OutOfRangeError("eof"));
  ASSERT_EQ(a.replies.size(), 1u);
  ASSERT_EQ(b.replies.size(), 1u);
  EXPECT_TRUE(absl::IsUnavailable(a.replies[0].status()));
  dispatcher.Call("complete", Json::object(), later.Handlers());
  ASSERT_EQ(later.replies.size(), 1u);
  EXPECT_TRUE(absl::IsUnavailable(later.replies[0].status()));
  EXPECT_TRUE(dispatcher.closed());
}

TEST_F(DispatcherTest, SendFailureRepliesAtOnce) {
  transport.broken = true;
  Recorder r;
  dispatcher.Call("complete", Json::object(), r.Handlers());
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_TRUE(absl::IsUnavailable(r.replies[0].status()));
  EXPECT_EQ(dispatcher.pending_count(), 0u);
}

TEST_F(DispatcherTest, SeedStyleUntaggedChunksGoToTheOldestCall) {
  dispatcher.set_stream_request_id(false);
  Recorder r;
  dispatcher.Call("complete", Json::object(), r.Handlers());
  dispatcher.OnMessage(Parse(
      R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"content":"seed"}})"));
  EXPECT_EQ(r.chunks, (std::vector<std::string>{"seed"}));
}

TEST_F(DispatcherTest, UntaggedChunksAreDroppedWhenStreamsAreTagged) {
  Recorder r;
  dispatcher.Call("complete", Json::object(), r.Handlers());
  dispatcher.OnMessage(Parse(
      R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"content":"stray"}})"));
  EXPECT_TRUE(r.chunks.empty());
}

}  // namespace
}  // namespace llmbridge::rpc
