// JSON-RPC 2.0 messages spoken between the bridge and the Python sidecar.
//
// The wire format is the seed's (one JSON object per line over stdio), plus
// two extensions that let many streams share one pipe:
//   * stream notifications carry "request_id", the id of the request that
//     started the stream;
//   * "$/cancelRequest" {"id": N} asks the sidecar to stop request N, which
//     then replies with kRequestCancelled.
// Everything here is plain data and pure functions: no I/O, no threads.
#ifndef LLMBRIDGE_RPC_BRIDGE_PROTOCOL_H_
#define LLMBRIDGE_RPC_BRIDGE_PROTOCOL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace llmbridge::rpc {

using Json = nlohmann::json;

// Standard JSON-RPC 2.0 error codes.
inline constexpr int kParseError = -32700;
inline constexpr int kInvalidRequest = -32600;
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kInvalidParams = -32602;
inline constexpr int kInternalError = -32603;
// The seed's application codes (-32000..-32099 is the implementation range).
inline constexpr int kBackendError = -32000;
inline constexpr int kModelNotFound = -32001;
inline constexpr int kStreamError = -32002;
inline constexpr int kConnectionError = -32003;
// LSP's RequestCancelled: the reply to a request cancelled by $/cancelRequest.
inline constexpr int kRequestCancelled = -32800;

// Method and notification names.
inline constexpr char kMethodInit[] = "init";
inline constexpr char kMethodComplete[] = "complete";
inline constexpr char kMethodShutdown[] = "shutdown";
inline constexpr char kNotifyStreamStart[] = "stream.start";
inline constexpr char kNotifyStreamChunk[] = "stream.chunk";
inline constexpr char kNotifyStreamDone[] = "stream.done";
inline constexpr char kNotifyStreamError[] = "stream.error";
inline constexpr char kNotifyStreamToolCall[] = "stream.tool_call";
inline constexpr char kNotifyStreamToolResult[] = "stream.tool_result";
inline constexpr char kMethodTools[] = "tools";
inline constexpr char kMethodHealth[] = "health";
inline constexpr char kMethodModels[] = "models";
inline constexpr char kMethodEmbed[] = "embed";
inline constexpr char kMethodCountTokens[] = "count_tokens";
inline constexpr char kNotifyCancelRequest[] = "$/cancelRequest";

struct RpcError {
  int code = 0;
  std::string message;
  Json data;  // null when absent
};

struct Request {
  std::string method;
  Json params;  // null when absent
  int64_t id = 0;
};

struct Response {
  // A response to a parse error carries "id": null: that is nullopt here.
  std::optional<int64_t> id;
  Json result;                    // set when error is empty
  std::optional<RpcError> error;  // exactly one of result / error
};

struct Notification {
  std::string method;
  Json params;  // null when absent
};

// A stream.chunk notification, decoded without a JSON tree: the one message
// per generated token, so it has a parser of its own (ParseLine).
struct StreamChunk {
  std::optional<int64_t> request_id;  // nullopt from seed-style sidecars
  std::string content;
};

struct MessageParam {
  std::string role;
  std::string content;
  std::string name;  // for tool results; omitted when empty
};

struct MCPServerConfig {
  std::string type;  // "stdio", "http", "sse"
  std::string command;
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  std::string url;
  std::vector<std::string> headers;
};

struct InitParams {
  std::string backend;
  std::string model;
  std::string host;
  std::map<std::string, MCPServerConfig> mcp_servers;
  Json options = Json::object();
};

struct InitResult {
  bool ready = false;
  std::string version;
  std::string message;
  // True when the sidecar tags stream notifications with "request_id", so
  // several streams can share the pipe. Sidecars written to the seed's text
  // do not send it.
  bool stream_request_id = false;
  Json capabilities;  // null when the sidecar sent none
};

struct CompleteParams {
  std::vector<MessageParam> messages;
  std::string model;
  std::string system_prompt;
  int max_tokens = 0;
  std::optional<double> temperature;
  bool stream = false;
  Json options = Json::object();
  // Seconds left before the caller gives up (the gRPC deadline): the
  // sidecar may stop the backend's work then.
  std::optional<double> timeout_s;
  // MCP tools: offer them to the model and run its calls (0: default).
  bool use_tools = false;
  int max_tool_iterations = 0;
  // Typed sampling controls (unset / empty: the backend's default); the
  // sidecar maps each to the backend's own name or refuses it (-32602).
  std::vector<std::string> stop;
  std::optional<uint32_t> seed;
  std::optional<double> top_p;
  std::optional<int> top_k;
  std::optional<double> min_p;
  std::optional<double> presence_penalty;
  std::optional<double> frequency_penalty;
  std::optional<double> repeat_penalty;
  std::map<int32_t, double> logit_bias;  // token id -> bias
  // Structured output, shaped as the proto's JSON (the schema parsed):
  // {"json_object": {}} or {"json_schema": {"schema": {...}, "name"?,
  // "strict"?}}; null when absent.
  Json response_format;
};

struct UsageResult {
  int input_tokens = 0;
  int output_tokens = 0;
  int total_tokens = 0;
  int cached_tokens = 0;  // of input_tokens, reused from a prefix cache
};

struct CompleteResult {
  std::string content;
  std::string model;
  // Normalised by our sidecar ("stop", "length", "tool_calls", "cancelled",
  // "error"); raw_finish_reason is the backend's own (empty from sidecars
  // that do not send it).
  std::string finish_reason;
  std::string raw_finish_reason;
  UsageResult usage;
};

struct StreamChunkParams {
  std::optional<int64_t> request_id;
  std::string content;
  bool done = false;
};

struct StreamDoneParams {
  std::optional<int64_t> request_id;
  UsageResult usage;
  std::string finish_reason;
  std::string raw_finish_reason;
  std::string model;
};

struct StreamErrorParams {
  std::optional<int64_t> request_id;
  int code = 0;
  std::string message;
};

// stream.tool_call / stream.tool_result: a tool the model called through
// MCP, and what it returned.
struct ToolEvent {
  enum class Kind { kCall, kResult };
  Kind kind = Kind::kCall;
  std::string id;
  std::string server;
  std::string name;
  Json arguments = Json::object();  // kCall
  std::string content;              // kResult
  bool is_error = false;            // kResult
};

absl::StatusOr<ToolEvent> ParseToolEvent(const Notification& notification);

struct ShutdownResult {
  bool success = false;
  std::string message;
};

// JSON mapping with the seed's keys. Parsing ignores unknown keys, so newer
// sidecars stay compatible.
void to_json(Json& j, const RpcError& e);
void from_json(const Json& j, RpcError& e);
void to_json(Json& j, const MessageParam& m);
void from_json(const Json& j, MessageParam& m);
void to_json(Json& j, const MCPServerConfig& c);
void from_json(const Json& j, MCPServerConfig& c);
void to_json(Json& j, const InitParams& p);
void from_json(const Json& j, InitResult& r);
void to_json(Json& j, const CompleteParams& p);
void to_json(Json& j, const UsageResult& u);
void from_json(const Json& j, UsageResult& u);
void from_json(const Json& j, CompleteResult& r);
void from_json(const Json& j, ShutdownResult& r);

// Encodes one message as a single line (no trailing newline). nlohmann's
// dump() escapes control characters, so the line never contains '\n'.
std::string EncodeRequest(const Request& request);
std::string EncodeNotification(const Notification& notification);

// One decoded line from the sidecar: exactly one member is set.
struct IncomingMessage {
  std::optional<Response> response;
  std::optional<Notification> notification;  // any but stream.chunk
  std::optional<StreamChunk> chunk;
};

// The outcome of parsing one line. The sidecar is another process: its bytes
// are untrusted, so parsing never throws. A line that is not a usable message
// has `problem` set, and `call_id` when the line still names a call (its
// "id", or a stream notification's "request_id"), so that call can be failed
// at once instead of waiting for a reply that will never come.
struct ParsedLine {
  std::optional<IncomingMessage> message;
  std::string problem;
  std::optional<int64_t> call_id;
};

ParsedLine ParseLine(std::string_view line);

// ParseLine for callers that only need the message: InvalidArgument with the
// problem otherwise.
absl::StatusOr<IncomingMessage> ParseIncoming(std::string_view line);

// The integer after `"key":` in a JSON text prefix, if any: enough to tell
// which call an unparsable line belonged to. Never overflows.
std::optional<int64_t> ScanIntegerField(std::string_view text,
                                        std::string_view key);

// The seed's helpers.
// True when `data` is a JSON object with "method" and no "id".
bool IsNotification(std::string_view data);
// Parses `data` as a notification; nullopt when it is valid JSON but not a
// notification, InvalidArgument when it is not valid JSON.
absl::StatusOr<std::optional<Notification>> ParseNotification(
    std::string_view data);
absl::StatusOr<StreamChunkParams> ParseStreamChunk(const Json& params);
// The fields read from `usage` objects must be integers in [0, 2^31).
absl::StatusOr<UsageResult> ParseUsage(const Json& usage);
absl::StatusOr<StreamDoneParams> ParseStreamDone(const Json& params);
absl::StatusOr<StreamErrorParams> ParseStreamError(const Json& params);

// The request id a stream notification belongs to, if it names one.
std::optional<int64_t> StreamRequestId(const Json& params);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_PROTOCOL_H_
