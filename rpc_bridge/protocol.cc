#include "rpc_bridge/protocol.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace llmbridge::rpc {
namespace {

// Every reader below checks a value's type before converting it: nlohmann's
// get<T>() converts numbers between kinds, and a double that does not fit an
// int is undefined behaviour. A wrong type throws nlohmann's type_error,
// which Decode turns into a status; nothing here throws past its caller.
[[noreturn]] void Reject(const Json& j, const std::string& what) {
  throw Json::type_error::create(302, what, &j);
}

void ReadString(const Json& j, const char* k, std::string& out) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return;
  if (!it->is_string()) Reject(*it, std::string(k) + " must be a string");
  out = it->get<std::string>();
}

void ReadBool(const Json& j, const char* k, bool& out) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return;
  if (!it->is_boolean()) Reject(*it, std::string(k) + " must be a boolean");
  out = it->get<bool>();
}

// An integer in [lo, hi]; floats are rejected, not truncated.
void ReadInt(const Json& j, const char* k, int& out, int64_t lo, int64_t hi) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return;
  bool fits = false;
  if (it->is_number_unsigned()) {
    fits = it->get<uint64_t>() <= static_cast<uint64_t>(hi);
  } else if (it->is_number_integer()) {
    const int64_t v = it->get<int64_t>();
    fits = v >= lo && v <= hi;
  }
  if (!fits) {
    Reject(*it, absl::StrCat(k, " must be an integer from ", lo, " to ", hi));
  }
  out = static_cast<int>(it->get<int64_t>());
}

template <typename T>
void ReadObject(const Json& j, const char* k, T& out) {
  auto it = j.find(k);
  if (it != j.end() && !it->is_null()) it->get_to(out);
}

std::optional<int64_t> ReadId(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return std::nullopt;
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return std::nullopt;
  }
  return it->get<int64_t>();
}

absl::StatusOr<Json> ParseJson(std::string_view data) {
  Json j = Json::parse(data, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError("message is not valid JSON");
  }
  return j;
}

template <typename T, typename Fn>
absl::StatusOr<T> Decode(const Json& params, const char* what, Fn fill) {
  if (!params.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " params must be a JSON object"));
  }
  try {
    T out;
    fill(params, out);
    return out;
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed ", what, " params: ", e.what()));
  }
}

}  // namespace

void to_json(Json& j, const RpcError& e) {
  j = Json{{"code", e.code}, {"message", e.message}};
  if (!e.data.is_null()) j["data"] = e.data;
}

void from_json(const Json& j, RpcError& e) {
  if (!j.is_object()) Reject(j, "error must be an object");
  if (!j.contains("code")) Reject(j, "error has no code");
  ReadInt(j, "code", e.code, INT32_MIN, INT32_MAX);
  ReadString(j, "message", e.message);
  auto data = j.find("data");
  e.data = data != j.end() ? *data : Json();
}

void to_json(Json& j, const MessageParam& m) {
  j = Json{{"role", m.role}, {"content", m.content}};
  if (!m.name.empty()) j["name"] = m.name;
}

void from_json(const Json& j, MessageParam& m) {
  ReadString(j, "role", m.role);
  ReadString(j, "content", m.content);
  ReadString(j, "name", m.name);
}

void to_json(Json& j, const MCPServerConfig& c) {
  j = Json{{"type", c.type}};
  if (!c.command.empty()) j["command"] = c.command;
  if (!c.args.empty()) j["args"] = c.args;
  if (!c.env.empty()) j["env"] = c.env;
  if (!c.url.empty()) j["url"] = c.url;
  if (!c.headers.empty()) j["headers"] = c.headers;
}

void from_json(const Json& j, MCPServerConfig& c) {
  ReadString(j, "type", c.type);
  ReadString(j, "command", c.command);
  ReadObject(j, "args", c.args);
  ReadObject(j, "env", c.env);
  ReadString(j, "url", c.url);
  ReadObject(j, "headers", c.headers);
}

void to_json(Json& j, const InitParams& p) {
  j = Json{{"backend", p.backend}, {"model", p.model}};
  if (!p.host.empty()) j["host"] = p.host;
  if (!p.mcp_servers.empty()) j["mcp_servers"] = p.mcp_servers;
  if (p.options.is_object() && !p.options.empty()) j["options"] = p.options;
}

void from_json(const Json& j, InitResult& r) {
  if (!j.is_object()) Reject(j, "the init result must be an object");
  ReadBool(j, "ready", r.ready);
  ReadString(j, "version", r.version);
  ReadString(j, "message", r.message);
  ReadBool(j, "stream_request_id", r.stream_request_id);
  auto caps = j.find("capabilities");
  if (caps != j.end() && caps->is_object()) r.capabilities = *caps;
}

void to_json(Json& j, const CompleteParams& p) {
  j = Json{{"messages", p.messages}};
  if (!p.model.empty()) j["model"] = p.model;
  if (!p.system_prompt.empty()) j["system_prompt"] = p.system_prompt;
  if (p.max_tokens > 0) j["max_tokens"] = p.max_tokens;
  if (p.temperature.has_value()) j["temperature"] = *p.temperature;
  if (p.stream) j["stream"] = true;
  if (p.timeout_s.has_value()) j["timeout_s"] = *p.timeout_s;
  if (p.use_tools) j["use_tools"] = true;
  if (p.max_tool_iterations > 0) j["max_tool_iterations"] = p.max_tool_iterations;
  if (p.options.is_object() && !p.options.empty()) j["options"] = p.options;
  if (!p.stop.empty()) j["stop"] = p.stop;
  if (p.seed.has_value()) j["seed"] = *p.seed;
  if (p.top_p.has_value()) j["top_p"] = *p.top_p;
  if (p.top_k.has_value()) j["top_k"] = *p.top_k;
  if (p.min_p.has_value()) j["min_p"] = *p.min_p;
  if (p.presence_penalty.has_value()) j["presence_penalty"] = *p.presence_penalty;
  if (p.frequency_penalty.has_value()) j["frequency_penalty"] = *p.frequency_penalty;
  if (p.repeat_penalty.has_value()) j["repeat_penalty"] = *p.repeat_penalty;
  if (!p.logit_bias.empty()) {
    // JSON object keys are strings: {"token id": bias}, as OpenAI's.
    Json bias = Json::object();
    for (const auto& [token, value] : p.logit_bias) {
      bias[std::to_string(token)] = value;
    }
    j["logit_bias"] = std::move(bias);
  }
  if (p.response_format.is_object()) j["response_format"] = p.response_format;
}

void to_json(Json& j, const UsageResult& u) {
  j = Json{{"input_tokens", u.input_tokens},
           {"output_tokens", u.output_tokens},
           {"total_tokens", u.total_tokens}};
  if (u.cached_tokens > 0) j["cached_tokens"] = u.cached_tokens;
}

void from_json(const Json& j, UsageResult& u) {
  if (!j.is_object()) Reject(j, "usage must be an object");
  ReadInt(j, "input_tokens", u.input_tokens, 0, INT32_MAX);
  ReadInt(j, "output_tokens", u.output_tokens, 0, INT32_MAX);
  ReadInt(j, "total_tokens", u.total_tokens, 0, INT32_MAX);
  ReadInt(j, "cached_tokens", u.cached_tokens, 0, INT32_MAX);
  if (u.total_tokens == 0) {
    // Summed in 64 bits: two large counts must not overflow an int.
    u.total_tokens = static_cast<int>(std::min<int64_t>(
        int64_t{u.input_tokens} + u.output_tokens, INT32_MAX));
  }
}

void from_json(const Json& j, CompleteResult& r) {
  if (!j.is_object()) Reject(j, "the complete result must be an object");
  ReadString(j, "content", r.content);
  ReadString(j, "model", r.model);
  ReadString(j, "finish_reason", r.finish_reason);
  ReadString(j, "raw_finish_reason", r.raw_finish_reason);
  ReadObject(j, "usage", r.usage);
}

void from_json(const Json& j, ShutdownResult& r) {
  if (!j.is_object()) Reject(j, "the shutdown result must be an object");
  ReadBool(j, "success", r.success);
  ReadString(j, "message", r.message);
}

absl::StatusOr<UsageResult> ParseUsage(const Json& usage) {
  try {
    return usage.get<UsageResult>();
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("malformed usage: ", e.what()));
  }
}

std::string EncodeRequest(const Request& request) {
  Json j{{"jsonrpc", "2.0"}, {"method", request.method}, {"id", request.id}};
  if (!request.params.is_null()) j["params"] = request.params;
  return j.dump(-1, ' ', /*ensure_ascii=*/false,
                Json::error_handler_t::replace);
}

std::string EncodeNotification(const Notification& notification) {
  Json j{{"jsonrpc", "2.0"}, {"method", notification.method}};
  if (!notification.params.is_null()) j["params"] = notification.params;
  return j.dump(-1, ' ', /*ensure_ascii=*/false,
                Json::error_handler_t::replace);
}

namespace {

// --- The stream.chunk fast path --------------------------------------------
// Our sidecar writes every chunk in one fixed shape (protocol.py,
// stream_chunk_line). Matching that shape byte by byte and decoding the one
// string in it costs a fraction of building a JSON tree; any deviation falls
// back to the full parser, so the fast path changes no outcome.

constexpr std::string_view kChunkPrefix =
    R"({"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":)";
constexpr std::string_view kChunkContent = R"(,"content":")";
constexpr std::string_view kChunkSuffix = R"(,"done":false}})";

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool Hex4(std::string_view s, size_t at, uint32_t& out) {
  if (at + 4 > s.size()) return false;
  out = 0;
  for (size_t i = at; i < at + 4; ++i) {
    const char c = s[i];
    out <<= 4;
    if (c >= '0' && c <= '9') {
      out |= static_cast<uint32_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      out |= static_cast<uint32_t>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      out |= static_cast<uint32_t>(c - 'A' + 10);
    } else {
      return false;
    }
  }
  return true;
}

// Length of the well-formed UTF-8 sequence at s[at] (RFC 3629: no overlong
// forms, no surrogates, nothing past U+10FFFF), or 0.
size_t Utf8SequenceLength(std::string_view s, size_t at) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(at);
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (at + n > s.size()) return 0;
  if (b(at + 1) < lo || b(at + 1) > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if (b(at + i) < 0x80 || b(at + i) > 0xBF) return 0;
  }
  return n;
}

// Decodes the JSON string body starting at s[at] (after the opening quote)
// up to its closing quote; returns the index just past that quote, or 0.
size_t DecodeJsonString(std::string_view s, size_t at, std::string& out) {
  out.reserve(s.size() - at);
  size_t i = at;
  while (i < s.size()) {
    // Copy the plain run in one go.
    size_t run = i;
    while (run < s.size()) {
      const unsigned char c = static_cast<unsigned char>(s[run]);
      if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
      ++run;
    }
    out.append(s.data() + i, run - i);
    i = run;
    if (i >= s.size()) return 0;
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"') return i + 1;
    if (c < 0x20) return 0;  // raw control characters are not JSON
    if (c >= 0x80) {
      const size_t n = Utf8SequenceLength(s, i);
      if (n == 0) return 0;
      out.append(s.data() + i, n);
      i += n;
      continue;
    }
    // A backslash escape.
    if (i + 1 >= s.size()) return 0;
    const char e = s[i + 1];
    i += 2;
    switch (e) {
      case '"': out.push_back('"'); break;
      case '\\': out.push_back('\\'); break;
      case '/': out.push_back('/'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        uint32_t cp;
        if (!Hex4(s, i, cp)) return 0;
        i += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return 0;  // lone low surrogate
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t low;
          if (i + 6 > s.size() || s[i] != '\\' || s[i + 1] != 'u' ||
              !Hex4(s, i + 2, low) || low < 0xDC00 || low > 0xDFFF) {
            return 0;
          }
          i += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        AppendUtf8(cp, out);
        break;
      }
      default:
        return 0;
    }
  }
  return 0;
}

bool ParseChunkFast(std::string_view line, StreamChunk& out) {
  if (line.substr(0, kChunkPrefix.size()) != kChunkPrefix) return false;
  size_t i = kChunkPrefix.size();
  int64_t id = 0;
  size_t digits = 0;
  while (i < line.size() && line[i] >= '0' && line[i] <= '9') {
    if (++digits > 18) return false;  // leave big numbers to the full parser
    id = id * 10 + (line[i] - '0');
    ++i;
  }
  if (digits == 0 || (digits > 1 && line[kChunkPrefix.size()] == '0')) {
    return false;
  }
  if (line.substr(i, kChunkContent.size()) != kChunkContent) return false;
  i += kChunkContent.size();
  std::string content;
  i = DecodeJsonString(line, i, content);
  if (i == 0 || line.substr(i) != kChunkSuffix) return false;
  out.request_id = id;
  out.content = std::move(content);
  return true;
}

ParsedLine Problem(std::string what, std::optional<int64_t> call_id) {
  ParsedLine out;
  out.problem = std::move(what);
  out.call_id = call_id;
  return out;
}

ParsedLine ParseLineSlow(std::string_view line) {
  // The id, read from the text itself, so that even a line that is not
  // JSON at all can fail the call it was meant for.
  auto scanned_id = [&] {
    std::optional<int64_t> id = ScanIntegerField(line, "\"request_id\"");
    return id.has_value() ? id : ScanIntegerField(line, "\"id\"");
  };
  absl::StatusOr<Json> parsed = ParseJson(line);
  if (!parsed.ok()) return Problem("not valid JSON", scanned_id());
  const Json& j = *parsed;
  if (!j.is_object()) return Problem("not a JSON object", std::nullopt);
  std::optional<int64_t> id = ReadId(j, "id");
  if (!id.has_value()) {
    if (auto params = j.find("params"); params != j.end()) {
      id = StreamRequestId(*params);
    }
  }
  auto version = j.find("jsonrpc");
  if (version == j.end() || !version->is_string() ||
      version->get<std::string>() != "2.0") {
    return Problem(R"(lacks "jsonrpc": "2.0")", id);
  }
  IncomingMessage out;
  auto method = j.find("method");
  if (method != j.end()) {
    if (!method->is_string()) return Problem(R"("method" is not a string)", id);
    if (j.contains("id")) {
      // The bridge serves no methods: a sidecar request is a protocol error.
      return Problem(absl::StrCat("unexpected request from the sidecar: ",
                                  method->get<std::string>()),
                     std::nullopt);
    }
    auto params_it = j.find("params");
    Json params = params_it != j.end() ? *params_it : Json();
    std::string name = method->get<std::string>();
    if (name == kNotifyStreamChunk) {
      absl::StatusOr<StreamChunkParams> chunk = ParseStreamChunk(params);
      if (!chunk.ok()) return Problem(std::string(chunk.status().message()), id);
      out.chunk = StreamChunk{chunk->request_id, std::move(chunk->content)};
      return ParsedLine{std::move(out), "", std::nullopt};
    }
    out.notification = Notification{std::move(name), std::move(params)};
    return ParsedLine{std::move(out), "", std::nullopt};
  }
  if (!j.contains("id")) {
    return Problem("neither a response (no id) nor a notification (no method)",
                   std::nullopt);
  }
  Response response;
  response.id = id;
  if (!response.id.has_value() && !j["id"].is_null()) {
    return Problem("the response id is not an integer", std::nullopt);
  }
  auto error = j.find("error");
  auto result = j.find("result");
  if ((error == j.end()) == (result == j.end())) {
    return Problem("a response must carry exactly one of result and error",
                   response.id);
  }
  if (error != j.end()) {
    try {
      response.error = error->get<RpcError>();
    } catch (const Json::exception& e) {
      return Problem(absl::StrCat("malformed error object: ", e.what()),
                     response.id);
    }
  } else {
    response.result = *result;
  }
  out.response = std::move(response);
  return ParsedLine{std::move(out), "", std::nullopt};
}

}  // namespace

ParsedLine ParseLine(std::string_view line) {
  StreamChunk chunk;
  if (ParseChunkFast(line, chunk)) {
    IncomingMessage out;
    out.chunk = std::move(chunk);
    return ParsedLine{std::move(out), "", std::nullopt};
  }
  try {
    return ParseLineSlow(line);
  } catch (const std::exception& e) {
    // Not expected (every access above is type-checked); the last line of
    // defence keeps one odd line from taking the reader down.
    return Problem(absl::StrCat("unexpected parser failure: ", e.what()),
                   std::nullopt);
  }
}

absl::StatusOr<IncomingMessage> ParseIncoming(std::string_view line) {
  ParsedLine parsed = ParseLine(line);
  if (!parsed.message.has_value()) {
    return absl::InvalidArgumentError(parsed.problem);
  }
  return *std::move(parsed.message);
}

std::optional<int64_t> ScanIntegerField(std::string_view text,
                                        std::string_view key) {
  size_t at = text.find(key);
  if (at == std::string_view::npos) return std::nullopt;
  size_t i = at + key.size();
  while (i < text.size() && (text[i] == ' ' || text[i] == ':')) ++i;
  int64_t value = 0;
  size_t digits = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    if (++digits > 18) return std::nullopt;  // would overflow int64
    value = value * 10 + (text[i] - '0');
  }
  if (digits == 0) return std::nullopt;
  return value;
}

bool IsNotification(std::string_view data) {
  absl::StatusOr<Json> j = ParseJson(data);
  return j.ok() && j->is_object() && j->contains("method") &&
         !j->contains("id");
}

absl::StatusOr<std::optional<Notification>> ParseNotification(
    std::string_view data) {
  absl::StatusOr<Json> j = ParseJson(data);
  if (!j.ok()) return j.status();
  if (!j->is_object() || j->contains("id")) return std::nullopt;
  auto method = j->find("method");
  if (method == j->end() || !method->is_string()) return std::nullopt;
  auto params = j->find("params");
  return Notification{method->get<std::string>(),
                      params != j->end() ? *params : Json()};
}

std::optional<int64_t> StreamRequestId(const Json& params) {
  if (!params.is_object()) return std::nullopt;
  return ReadId(params, "request_id");
}

absl::StatusOr<StreamChunkParams> ParseStreamChunk(const Json& params) {
  return Decode<StreamChunkParams>(
      params, kNotifyStreamChunk, [](const Json& j, StreamChunkParams& out) {
        out.request_id = StreamRequestId(j);
        ReadString(j, "content", out.content);
        ReadBool(j, "done", out.done);
      });
}

absl::StatusOr<StreamDoneParams> ParseStreamDone(const Json& params) {
  return Decode<StreamDoneParams>(
      params, kNotifyStreamDone, [](const Json& j, StreamDoneParams& out) {
        out.request_id = StreamRequestId(j);
        ReadObject(j, "usage", out.usage);
        ReadString(j, "finish_reason", out.finish_reason);
        ReadString(j, "raw_finish_reason", out.raw_finish_reason);
        ReadString(j, "model", out.model);
      });
}

absl::StatusOr<ToolEvent> ParseToolEvent(const Notification& n) {
  const bool call = n.method == kNotifyStreamToolCall;
  if (!call && n.method != kNotifyStreamToolResult) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a tool notification: ", n.method));
  }
  return Decode<ToolEvent>(
      n.params, n.method.c_str(), [call](const Json& j, ToolEvent& out) {
        out.kind = call ? ToolEvent::Kind::kCall : ToolEvent::Kind::kResult;
        // Ids may be strings (OpenAI's "call_...") or numbers.
        if (auto id = j.find("id"); id != j.end() && !id->is_null()) {
          out.id = id->is_string() ? id->get<std::string>() : id->dump();
        }
        ReadString(j, "server", out.server);
        ReadString(j, "name", out.name);
        if (auto args = j.find("arguments"); args != j.end() && !args->is_null()) {
          out.arguments = *args;
        }
        ReadString(j, "content", out.content);
        ReadBool(j, "is_error", out.is_error);
      });
}

absl::StatusOr<StreamErrorParams> ParseStreamError(const Json& params) {
  return Decode<StreamErrorParams>(
      params, kNotifyStreamError, [](const Json& j, StreamErrorParams& out) {
        out.request_id = StreamRequestId(j);
        ReadInt(j, "code", out.code, INT32_MIN, INT32_MAX);
        ReadString(j, "message", out.message);
      });
}

}  // namespace llmbridge::rpc
