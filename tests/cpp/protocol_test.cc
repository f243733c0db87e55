#include "rpc_bridge/protocol.h"

#include "gtest/gtest.h"

namespace llmbridge::rpc {
namespace {

TEST(ProtocolTest, EncodesRequestAsOneLineWithSeedKeys) {
  CompleteParams params;
  params.messages = {{"user", "line one\nline two", ""}};
  params.max_tokens = 16;
  params.temperature = 0.5;
  params.stream = true;
  std::string line = EncodeRequest({"complete", params, 7});
  EXPECT_EQ(line.find('\n'), std::string::npos);
  Json j = Json::parse(line);
  EXPECT_EQ(j["jsonrpc"], "2.0");
  EXPECT_EQ(j["method"], "complete");
  EXPECT_EQ(j["id"], 7);
  EXPECT_EQ(j["params"]["messages"][0]["content"], "line one\nline two");
  EXPECT_FALSE(j["params"]["messages"][0].contains("name"));
  EXPECT_EQ(j["params"]["max_tokens"], 16);
  EXPECT_EQ(j["params"]["temperature"], 0.5);
  EXPECT_EQ(j["params"]["stream"], true);
  EXPECT_FALSE(j["params"].contains("model"));  // empty: server default
}

TEST(ProtocolTest, ParsesResultResponse) {
  auto m = ParseIncoming(
      R"({"jsonrpc":"2.0","id":3,"result":{"content":"hi","model":"m",)"
      R"("finish_reason":"stop","usage":{"input_tokens":2,"output_tokens":1}}})");
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(m->response.has_value());
  EXPECT_EQ(m->response->id, 3);
  CompleteResult r = m->response->result.get<CompleteResult>();
  EXPECT_EQ(r.content, "hi");
  EXPECT_EQ(r.usage.total_tokens, 3);  // derived when absent
  EXPECT_EQ(r.usage.cached_tokens, 0);  // not reported
}

TEST(ProtocolTest, CachedTokensAreReadAndCheckedAsTheOtherCounts) {
  UsageResult u = Json::parse(R"({"input_tokens":500,"output_tokens":3,"cached_tokens":480})")
                      .get<UsageResult>();
  EXPECT_EQ(u.cached_tokens, 480);
  EXPECT_EQ(Json(u)["cached_tokens"], 480);
  EXPECT_FALSE(Json(UsageResult{})["cached_tokens"].is_number());  // absent when none
  EXPECT_THROW(Json::parse(R"({"cached_tokens":-1})").get<UsageResult>(), Json::exception);
  EXPECT_THROW(Json::parse(R"({"cached_tokens":"many"})").get<UsageResult>(), Json::exception);
}

TEST(ProtocolTest, ParsesErrorResponseWithData) {
  auto m = ParseIncoming(
      R"({"jsonrpc":"2.0","id":4,"error":{"code":-32001,"message":"no model",)"
      R"("data":{"http_status":404}}})");
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(m->response->error.has_value());
  EXPECT_EQ(m->response->error->code, kModelNotFound);
  EXPECT_EQ(m->response->error->data["http_status"], 404);
}

TEST(ProtocolTest, ParseErrorReplyHasNullId) {
  auto m = ParseIncoming(
      R"({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}})");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(m->response->id.has_value());
}

TEST(ProtocolTest, RejectsMalformedMessages) {
  EXPECT_FALSE(ParseIncoming("not json").ok());
  EXPECT_FALSE(ParseIncoming("[1,2]").ok());
  EXPECT_FALSE(ParseIncoming(R"({"id":1,"result":{}})").ok());  // no jsonrpc
  EXPECT_FALSE(
      ParseIncoming(R"({"jsonrpc":"2.0","id":1,"result":1,"error":{}})").ok());
  EXPECT_FALSE(ParseIncoming(R"({"jsonrpc":"2.0","id":1})").ok());
  EXPECT_FALSE(ParseIncoming(R"({"jsonrpc":"2.0","id":"x","result":1})").ok());
  EXPECT_FALSE(
      ParseIncoming(R"({"jsonrpc":"2.0","method":"init","id":1})").ok());
}

TEST(ProtocolTest, NotificationHelpersFollowTheSeed) {
  const char* chunk =
      R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"content":"Hel","done":false}})";
  EXPECT_TRUE(IsNotification(chunk));
  EXPECT_FALSE(IsNotification(R"({"jsonrpc":"2.0","id":1,"result":{}})"));
  EXPECT_FALSE(IsNotification("{broken"));
  auto n = ParseNotification(chunk);
  ASSERT_TRUE(n.ok());
  ASSERT_TRUE(n->has_value());
  auto parsed = ParseStreamChunk((*n)->params);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->content, "Hel");
  EXPECT_FALSE(parsed->request_id.has_value());  // seed-style: untagged
  auto not_notification = ParseNotification(R"({"jsonrpc":"2.0","id":1,"result":2})");
  ASSERT_TRUE(not_notification.ok());
  EXPECT_FALSE(not_notification->has_value());
}

TEST(ProtocolTest, ParsesStreamDoneWithRequestId) {
  auto done = ParseStreamDone(Json::parse(
      R"({"request_id":9,"usage":{"input_tokens":12,"output_tokens":4,"total_tokens":16},)"
      R"("finish_reason":"stop","model":"tiny"})"));
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->request_id, 9);
  EXPECT_EQ(done->usage.input_tokens, 12);
  EXPECT_EQ(done->usage.output_tokens, 4);
  EXPECT_EQ(done->finish_reason, "stop");
  EXPECT_EQ(done->raw_finish_reason, "");  // seed-style sidecars send none
  EXPECT_FALSE(ParseStreamDone(Json::parse(R"({"usage":"lots"})")).ok());
  EXPECT_FALSE(ParseStreamChunk(Json::parse("[]")).ok());
}

TEST(ProtocolTest, RawFinishReasonIsReadFromStreamDoneAndTheResult) {
  auto done = ParseStreamDone(
      Json::parse(R"({"finish_reason":"cancelled","raw_finish_reason":"abort"})"));
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->finish_reason, "cancelled");
  EXPECT_EQ(done->raw_finish_reason, "abort");
  EXPECT_FALSE(ParseStreamDone(Json::parse(R"({"raw_finish_reason":7})")).ok());
  CompleteResult result =
      Json::parse(R"({"finish_reason":"stop","raw_finish_reason":"load"})").get<CompleteResult>();
  EXPECT_EQ(result.raw_finish_reason, "load");
}

TEST(ProtocolTest, InitResultDetectsTaggedStreams) {
  InitResult seed = Json::parse(R"({"ready":true,"version":"1"})").get<InitResult>();
  EXPECT_FALSE(seed.stream_request_id);
  InitResult ours =
      Json::parse(R"({"ready":true,"stream_request_id":true})").get<InitResult>();
  EXPECT_TRUE(ours.stream_request_id);
}

// The stream.chunk fast path must agree with the full parser on every line
// our sidecar writes, and leave everything else to it.
TEST(ProtocolTest, ChunkFastPathAgreesWithTheFullParser) {
  const std::vector<std::string> texts = {
      "plain",  "", "with \"quotes\" and \\ backslash", "tab\tnew\nline\r",
      "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", std::string("nul\0byte", 8),
      "\x01\x1f control"};
  for (const std::string& text : texts) {
    // Exactly what protocol.py's stream_chunk_line writes (compact JSON).
    Json params = {{"request_id", 42}, {"content", text}, {"done", false}};
    std::string line = R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":42,"content":)" +
                       Json(text).dump() + R"(,"done":false}})";
    ParsedLine parsed = ParseLine(line);
    ASSERT_TRUE(parsed.message.has_value()) << line;
    ASSERT_TRUE(parsed.message->chunk.has_value());
    EXPECT_EQ(parsed.message->chunk->request_id, 42);
    EXPECT_EQ(parsed.message->chunk->content, text);
  }
  // Python's json escapes non-ASCII when ensure_ascii is on: \u escapes,
  // surrogate pairs included.
  ParsedLine escaped = ParseLine(
      R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":7,"content":"\u00e9\ud83d\ude00\/","done":false}})");
  ASSERT_TRUE(escaped.message.has_value());
  EXPECT_EQ(escaped.message->chunk->content, "\xc3\xa9\xf0\x9f\x98\x80/");
}

TEST(ProtocolTest, ChunkFastPathRejectsWhatTheFullParserRejects) {
  for (const std::string& line : {
           // lone surrogate, invalid UTF-8, raw control character, bad escape
           std::string(R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":1,"content":"\ud800","done":false}})"),
           std::string("{\"jsonrpc\":\"2.0\",\"method\":\"stream.chunk\",\"params\":{\"request_id\":1,\"content\":\"\xff\",\"done\":false}}"),
           std::string("{\"jsonrpc\":\"2.0\",\"method\":\"stream.chunk\",\"params\":{\"request_id\":1,\"content\":\"a\nb\",\"done\":false}}"),
           std::string(R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":1,"content":"\q","done":false}})"),
           // overlong encoding of '/', a UTF-16 surrogate in UTF-8
           std::string("{\"jsonrpc\":\"2.0\",\"method\":\"stream.chunk\",\"params\":{\"request_id\":1,\"content\":\"\xc0\xaf\",\"done\":false}}"),
           std::string("{\"jsonrpc\":\"2.0\",\"method\":\"stream.chunk\",\"params\":{\"request_id\":1,\"content\":\"\xed\xa0\x80\",\"done\":false}}"),
       }) {
    ParsedLine parsed = ParseLine(line);
    EXPECT_FALSE(parsed.message.has_value()) << line;
    EXPECT_EQ(parsed.call_id, 1) << line;  // still names its call
  }
}

TEST(ProtocolTest, IllTypedFieldsNeverThrow) {
  for (const char* line : {
           R"({"jsonrpc":2.0,"id":1,"result":{}})",
           R"({"jsonrpc":"2.0","id":1,"error":{"code":1e300,"message":3}})",
           R"({"jsonrpc":"2.0","id":1,"error":[]})",
           R"({"jsonrpc":"2.0","method":7})",
           R"({"jsonrpc":"2.0","method":"stream.done","params":{"usage":{"input_tokens":1e20}}})",
           R"({"jsonrpc":"2.0","id":18446744073709551615,"result":1})",
           R"(null)", R"("text")", R"({"jsonrpc":null})",
       }) {
    ParsedLine parsed = ParseLine(line);  // must not throw
    (void)parsed;
  }
  EXPECT_FALSE(ParseStreamDone(Json::parse(R"({"usage":{"input_tokens":1e20}})")).ok());
  EXPECT_FALSE(ParseStreamDone(Json::parse(R"({"usage":{"input_tokens":-1}})")).ok());
  EXPECT_FALSE(ParseStreamDone(Json::parse(R"({"usage":{"output_tokens":3000000000}})")).ok());
  auto big = ParseStreamDone(Json::parse(
      R"({"usage":{"input_tokens":2147483647,"output_tokens":2147483647}})"));
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->usage.total_tokens, 2147483647);  // clamped, not overflowed
  EXPECT_FALSE(ParseStreamChunk(Json::parse(R"({"content":5})")).ok());
}

TEST(ProtocolTest, ScanIntegerFieldNeverOverflows) {
  EXPECT_EQ(ScanIntegerField(R"({"id": 12,)", "\"id\""), 12);
  EXPECT_EQ(ScanIntegerField(R"({"id":99999999999999999999999999})", "\"id\""),
            std::nullopt);
  EXPECT_EQ(ScanIntegerField(R"({"id":"x"})", "\"id\""), std::nullopt);
  EXPECT_EQ(ScanIntegerField(R"({"other":1})", "\"id\""), std::nullopt);
}

}  // namespace
}  // namespace llmbridge::rpc
