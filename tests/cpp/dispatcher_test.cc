// The dispatcher's routing, driven through a fake transport: no process.
#include "rpc_bridge/dispatcher.h"

#include <mutex>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "rpc_bridge/error_reason.h"

namespace llmbridge::rpc {
namespace {

class FakeTransport : public Transport {
 public:
  absl::Status Send(std::string_view line) override {
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

// What a call's handlers saw. The handlers share the log, so a call still
// pending when the test ends can be answered (a Reply destroyed unfinished
// answers INTERNAL) after the Recorder itself is gone.
struct Recorder {
  struct Log {
    std::vector<std::string> chunks;
    std::vector<absl::StatusOr<Json>> replies;
  };
  std::shared_ptr<Log> log = std::make_shared<Log>();
  std::vector<std::string>& chunks = log->chunks;
  std::vector<absl::StatusOr<Json>>& replies = log->replies;

  CallHandlers Handlers() {
    return {[log = log](std::string text) { log->chunks.push_back(std::move(text)); },
            nullptr,
            [log = log](absl::StatusOr<Json> r) { log->replies.push_back(std::move(r)); }};
  }
  // A plain request (no stream handlers), like a health probe.
  CallHandlers Plain() {
    return {nullptr, nullptr,
            [log = log](absl::StatusOr<Json> r) { log->replies.push_back(std::move(r)); }};
  }
};

// Feeds one raw line the way the transport's reader does.
void Feed(Dispatcher& dispatcher, const std::string& line) {
  ParsedLine parsed = ParseLine(line);
  if (parsed.message.has_value()) {
    dispatcher.OnMessage(*std::move(parsed.message));
  } else {
    dispatcher.OnBadLine(absl::InternalError(parsed.problem), parsed.call_id,
                         line);
  }
}

std::string ReasonOf(const absl::Status& status) {
  return AttachedReason(status).value_or("");
}

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

TEST_F(DispatcherTest, SeedStyleChunksSkipAPendingPlainCall) {
  dispatcher.set_stream_request_id(false);
  Recorder probe, stream;
  dispatcher.Call("health", Json::object(), probe.Plain());  // older
  dispatcher.Call("complete", Json::object(), stream.Handlers());
  dispatcher.OnMessage(Parse(
      R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"content":"seed"}})"));
  EXPECT_EQ(stream.chunks, (std::vector<std::string>{"seed"}));
  EXPECT_TRUE(probe.replies.empty());
}

// Each ill-typed message that still names its call fails that call at once
// with INTERNAL / SIDECAR_PROTOCOL_ERROR (never INVALID_ARGUMENT: the
// client's request was fine), and the next call is served.
TEST_F(DispatcherTest, IllTypedMessagesFailTheCallTheyName) {
  const std::vector<std::string> bad = {
      R"({"jsonrpc":2.0,"id":ID,"result":{"content":"x"}})",
      R"({"jsonrpc":"2.0","id":ID})",
      R"({"jsonrpc":"2.0","id":ID,"error":{"code":"x","message":"m"}})",
      R"({"jsonrpc":"2.0","id":ID,"error":{"code":1e40}})",
      R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":ID,"content":5}})",
      "{\"jsonrpc\":\"2.0\",\"id\":ID,\"result\":\"\xff\xfe\"}",
      R"({"jsonrpc":"2.0","id":ID,"result":{"content":"x"})",  // cut short
  };
  for (const std::string& pattern : bad) {
    Recorder r;
    const int64_t id = dispatcher.Call("complete", Json::object(), r.Handlers());
    std::string line = pattern;
    line.replace(line.find("ID"), 2, std::to_string(id));
    Feed(dispatcher, line);
    ASSERT_EQ(r.replies.size(), 1u) << line;
    EXPECT_TRUE(absl::IsInternal(r.replies[0].status())) << line << ": "
                                                         << r.replies[0].status();
    EXPECT_EQ(ReasonOf(r.replies[0].status()), reason::kSidecarProtocolError);
    EXPECT_EQ(dispatcher.pending_count(), 0u);
  }
  EXPECT_EQ(dispatcher.protocol_errors(), bad.size());
  Recorder ok;
  const int64_t id = dispatcher.Call("complete", Json::object(), ok.Handlers());
  Feed(dispatcher, Result(id));
  ASSERT_EQ(ok.replies.size(), 1u);
  EXPECT_TRUE(ok.replies[0].ok());
}

TEST_F(DispatcherTest, UnattributableGarbageIsDroppedAndCounted) {
  Recorder r;
  const int64_t id = dispatcher.Call("complete", Json::object(), r.Handlers());
  for (const char* line :
       {R"({"jsonrpc":"2.0","id":{},"result":1})", "[1,2,3]",
        R"({"jsonrpc":"2.0","method":"stream.chunk","params":"text"})",
        R"({"jsonrpc":"2.0","id":99999,"result":1})",  // unknown id
        R"({"jsonrpc":"2.0","id":123456789012345678901234567890,"result":1})",
        R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":-1,"content":"x"}})"}) {
    Feed(dispatcher, line);
  }
  EXPECT_TRUE(r.replies.empty());
  Feed(dispatcher, Chunk(id, "still"));
  Feed(dispatcher, Result(id));
  EXPECT_EQ(r.chunks, (std::vector<std::string>{"still"}));
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_TRUE(r.replies[0].ok());
}

TEST_F(DispatcherTest, DuplicateRepliesAndLateChunksAreDropped) {
  Recorder r;
  const int64_t id = dispatcher.Call("complete", Json::object(), r.Handlers());
  Feed(dispatcher, Result(id));
  Feed(dispatcher, Result(id));
  Feed(dispatcher, Chunk(id, "late"));
  EXPECT_EQ(r.replies.size(), 1u);
  EXPECT_TRUE(r.chunks.empty());
}

TEST_F(DispatcherTest, RequestOverTheSidecarsLineCapIsRefusedBeforeSending) {
  Dispatcher small(DispatcherOptions{nullptr, nullptr, 1024});
  small.set_transport(&transport);
  Recorder r;
  // Control characters grow six-fold when escaped.
  std::string text(400, '\x01');
  small.Call("complete", Json{{"messages", {{{"role", "user"}, {"content", text}}}}},
             r.Handlers());
  ASSERT_EQ(r.replies.size(), 1u);
  EXPECT_TRUE(absl::IsInvalidArgument(r.replies[0].status()));
  EXPECT_TRUE(transport.sent.empty());
  EXPECT_EQ(small.pending_count(), 0u);
}

TEST_F(DispatcherTest, AHandlerMayCancelItsOwnCall) {
  // E.g. a stream whose client reads too slowly stops the model from its
  // chunk handler: that must neither deadlock nor reply twice.
  std::vector<absl::StatusOr<Json>> replies;
  int64_t id = 0;
  CallHandlers handlers;
  handlers.on_chunk = [&](std::string) {
    dispatcher.Cancel(id, absl::ResourceExhaustedError("too slow"));
  };
  handlers.on_reply = [&](absl::StatusOr<Json> r) { replies.push_back(std::move(r)); };
  id = dispatcher.Call("complete", Json::object(), std::move(handlers));
  Feed(dispatcher, Chunk(id, "one"));
  Feed(dispatcher, Chunk(id, "two"));
  Feed(dispatcher, Result(id));
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_TRUE(absl::IsResourceExhausted(replies[0].status()));
  ASSERT_EQ(transport.sent.size(), 2u);
  EXPECT_EQ(transport.sent[1]["method"], "$/cancelRequest");
  EXPECT_EQ(dispatcher.pending_count(), 0u);
}

}  // namespace
}  // namespace llmbridge::rpc
