// Fuzzes the decoding of one line from the sidecar exactly as the bridge
// does it: ParseIncoming (JSON-RPC 2.0 parsing and classification), then
// for a notification the stream.* decoders, for a response the result
// decoders and the JSON-RPC error -> status mapping. Any exception that
// escapes, sanitizer report or broken invariant is a finding: these bytes
// come from another process.
//
// Also checks the encoders the other way: a notification or request built
// from the decoded parts encodes to exactly one line of valid JSON.
#include <cstdint>
#include <string>
#include <string_view>

#include "rpc_bridge/protocol.h"
#include "rpc_bridge/status_mapping.h"

namespace {

using namespace llmbridge::rpc;  // NOLINT: a harness, not a library

template <typename T>
void DecodeQuietly(const Json& j) {
  // The bridge decodes results inside try (client.cc DecodeResult,
  // sidecar.cc init): only nlohmann's exceptions are expected here.
  try {
    (void)j.get<T>();
  } catch (const Json::exception&) {
  }
}

void CheckOneLine(const std::string& line) {
  if (line.find('\n') != std::string::npos) __builtin_trap();
  Json reparsed = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (reparsed.is_discarded()) __builtin_trap();
}

void UseNotification(const Notification& n) {
  (void)StreamRequestId(n.params);
  if (n.method == kNotifyStreamChunk) (void)ParseStreamChunk(n.params);
  if (n.method == kNotifyStreamDone) {
    absl::StatusOr<StreamDoneParams> done = ParseStreamDone(n.params);
    if (done.ok()) {
      // client.cc re-encodes the usage into the final result.
      Json usage = done->usage;
      DecodeQuietly<UsageResult>(usage);
    }
  }
  if (n.method == kNotifyStreamError) {
    absl::StatusOr<StreamErrorParams> error = ParseStreamError(n.params);
    if (error.ok()) {
      (void)RpcErrorToStatus({error->code, error->message, Json()});
    }
  }
  if (n.method == kNotifyStreamToolCall || n.method == kNotifyStreamToolResult) {
    absl::StatusOr<ToolEvent> event = ParseToolEvent(n);
    if (event.ok()) (void)event->arguments.dump();
  }
  CheckOneLine(EncodeNotification(n));
}

void UseResponse(const Response& r) {
  if (r.error.has_value()) {
    absl::Status status = RpcErrorToStatus(*r.error);
    if (status.ok()) __builtin_trap();  // an error never maps to OK
    std::optional<RpcError> back = RpcErrorFromStatus(status);
    if (!back.has_value() || back->code != r.error->code) __builtin_trap();
    return;
  }
  DecodeQuietly<CompleteResult>(r.result);
  DecodeQuietly<InitResult>(r.result);
  DecodeQuietly<ShutdownResult>(r.result);
  if (r.id.has_value()) CheckOneLine(EncodeRequest({"x", r.result, *r.id}));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<IncomingMessage> message = ParseIncoming(line);
  // The seed's helpers see the same bytes.
  (void)IsNotification(line);
  (void)ParseNotification(line);
  if (!message.ok()) {
    if (message.status().message().empty()) __builtin_trap();
    return 0;
  }
  const int kinds = int{message->notification.has_value()} +
                    int{message->response.has_value()} +
                    int{message->chunk.has_value()};
  if (kinds != 1) __builtin_trap();  // exactly one kind
  if (message->chunk.has_value()) {
    // The text must be what a full JSON parse reads (the fast path's too):
    // the "content" string, or nothing when there is none.
    Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) __builtin_trap();
    const Json& params = j["params"];
    if (!params.is_object()) __builtin_trap();
    auto content = params.find("content");
    if (content == params.end()) {
      if (!message->chunk->content.empty()) __builtin_trap();
    } else if (!content->is_string() ||
               content->get<std::string>() != message->chunk->content) {
      __builtin_trap();
    }
    CheckOneLine(EncodeNotification(
        {kNotifyStreamChunk, Json{{"content", message->chunk->content}}}));
  }
  if (message->notification.has_value()) UseNotification(*message->notification);
  if (message->response.has_value()) UseResponse(*message->response);
  return 0;
}
