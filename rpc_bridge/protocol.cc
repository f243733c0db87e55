#include "rpc_bridge/protocol.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace llmbridge::rpc {
namespace {

// Reads key `k` into `out` when present and not null; a present value of the
// wrong type throws nlohmann::json::type_error, which callers turn into
// InvalidArgument.
template <typename T>
void ReadOptional(const Json& j, const char* k, T& out) {
  auto it = j.find(k);
  if (it != j.end() && !it->is_null()) it->get_to(out);
}

std::optional<int64_t> ReadId(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return std::nullopt;
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
  j.at("code").get_to(e.code);
  ReadOptional(j, "message", e.message);
  e.data = j.value("data", Json());
}

void to_json(Json& j, const MessageParam& m) {
  j = Json{{"role", m.role}, {"content", m.content}};
  if (!m.name.empty()) j["name"] = m.name;
}

void from_json(const Json& j, MessageParam& m) {
  ReadOptional(j, "role", m.role);
  ReadOptional(j, "content", m.content);
  ReadOptional(j, "name", m.name);
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
  ReadOptional(j, "type", c.type);
  ReadOptional(j, "command", c.command);
  ReadOptional(j, "args", c.args);
  ReadOptional(j, "env", c.env);
  ReadOptional(j, "url", c.url);
  ReadOptional(j, "headers", c.headers);
}

void to_json(Json& j, const InitParams& p) {
  j = Json{{"backend", p.backend}, {"model", p.model}};
  if (!p.host.empty()) j["host"] = p.host;
  if (!p.mcp_servers.empty()) j["mcp_servers"] = p.mcp_servers;
  if (p.options.is_object() && !p.options.empty()) j["options"] = p.options;
}

void from_json(const Json& j, InitResult& r) {
  ReadOptional(j, "ready", r.ready);
  ReadOptional(j, "version", r.version);
  ReadOptional(j, "message", r.message);
  ReadOptional(j, "stream_request_id", r.stream_request_id);
  r.capabilities = j.value("capabilities", Json());
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
}

void to_json(Json& j, const UsageResult& u) {
  j = Json{{"input_tokens", u.input_tokens},
           {"output_tokens", u.output_tokens},
           {"total_tokens", u.total_tokens}};
}

void from_json(const Json& j, UsageResult& u) {
  if (!j.is_object()) {
    throw Json::type_error::create(302, "usage must be an object", &j);
  }
  ReadOptional(j, "input_tokens", u.input_tokens);
  ReadOptional(j, "output_tokens", u.output_tokens);
  ReadOptional(j, "total_tokens", u.total_tokens);
  if (u.total_tokens == 0) u.total_tokens = u.input_tokens + u.output_tokens;
}

void from_json(const Json& j, CompleteResult& r) {
  ReadOptional(j, "content", r.content);
  ReadOptional(j, "model", r.model);
  ReadOptional(j, "finish_reason", r.finish_reason);
  ReadOptional(j, "usage", r.usage);
}

void from_json(const Json& j, ShutdownResult& r) {
  ReadOptional(j, "success", r.success);
  ReadOptional(j, "message", r.message);
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

absl::StatusOr<IncomingMessage> ParseIncoming(std::string_view line) {
  absl::StatusOr<Json> parsed = ParseJson(line);
  if (!parsed.ok()) return parsed.status();
  const Json& j = *parsed;
  if (!j.is_object()) {
    return absl::InvalidArgumentError("message is not a JSON object");
  }
  if (j.value("jsonrpc", "") != "2.0") {
    return absl::InvalidArgumentError(R"(message lacks "jsonrpc": "2.0")");
  }
  IncomingMessage out;
  auto method = j.find("method");
  if (method != j.end()) {
    if (!method->is_string()) {
      return absl::InvalidArgumentError(R"("method" is not a string)");
    }
    if (j.contains("id")) {
      // The bridge serves no methods: a sidecar request is a protocol error.
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected request from sidecar: ", method->get<std::string>()));
    }
    out.notification = Notification{method->get<std::string>(),
                                    j.value("params", Json())};
    return out;
  }
  if (!j.contains("id")) {
    return absl::InvalidArgumentError(
        "message is neither a response (no id) nor a notification");
  }
  Response response;
  response.id = ReadId(j, "id");
  if (!response.id.has_value() && !j["id"].is_null()) {
    return absl::InvalidArgumentError("response id is not an integer");
  }
  auto error = j.find("error");
  auto result = j.find("result");
  if ((error == j.end()) == (result == j.end())) {
    return absl::InvalidArgumentError(
        "response must carry exactly one of result and error");
  }
  if (error != j.end()) {
    try {
      response.error = error->get<RpcError>();
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed error object: ", e.what()));
    }
  } else {
    response.result = *result;
  }
  out.response = std::move(response);
  return out;
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
  return Notification{method->get<std::string>(), j->value("params", Json())};
}

std::optional<int64_t> StreamRequestId(const Json& params) {
  if (!params.is_object()) return std::nullopt;
  return ReadId(params, "request_id");
}

absl::StatusOr<StreamChunkParams> ParseStreamChunk(const Json& params) {
  return Decode<StreamChunkParams>(
      params, kNotifyStreamChunk, [](const Json& j, StreamChunkParams& out) {
        out.request_id = StreamRequestId(j);
        ReadOptional(j, "content", out.content);
        ReadOptional(j, "done", out.done);
      });
}

absl::StatusOr<StreamDoneParams> ParseStreamDone(const Json& params) {
  return Decode<StreamDoneParams>(
      params, kNotifyStreamDone, [](const Json& j, StreamDoneParams& out) {
        out.request_id = StreamRequestId(j);
        ReadOptional(j, "usage", out.usage);
        ReadOptional(j, "finish_reason", out.finish_reason);
        ReadOptional(j, "model", out.model);
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
        ReadOptional(j, "server", out.server);
        ReadOptional(j, "name", out.name);
        ReadOptional(j, "arguments", out.arguments);
        ReadOptional(j, "content", out.content);
        ReadOptional(j, "is_error", out.is_error);
      });
}

absl::StatusOr<StreamErrorParams> ParseStreamError(const Json& params) {
  return Decode<StreamErrorParams>(
      params, kNotifyStreamError, [](const Json& j, StreamErrorParams& out) {
        out.request_id = StreamRequestId(j);
        ReadOptional(j, "code", out.code);
        ReadOptional(j, "message", out.message);
      });
}

}  // namespace llmbridge::rpc
