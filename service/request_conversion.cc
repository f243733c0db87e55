#include "service/request_conversion.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace llmbridge::service {
namespace {

bool KnownRole(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant" ||
         role == "tool";
}

// How deeply objects and arrays nest in the options, counted as in their
// JSON form (a scalar is 0, {} is 1). Checked on the protobuf itself:
// protobuf's JSON conversion gives up at 64 message levels (32 JSON levels)
// with a message that means little to a client.
int ValueDepth(const google::protobuf::Value& value);

int StructDepth(const google::protobuf::Struct& s) {
  int deepest = 0;
  for (const auto& [key, value] : s.fields()) {
    deepest = std::max(deepest, ValueDepth(value));
  }
  return deepest + 1;
}

int ValueDepth(const google::protobuf::Value& value) {
  if (value.has_struct_value()) return StructDepth(value.struct_value());
  if (!value.has_list_value()) return 0;
  int deepest = 0;
  for (const auto& item : value.list_value().values()) {
    deepest = std::max(deepest, ValueDepth(item));
  }
  return deepest + 1;
}

absl::Status TooLong(const std::string& field, size_t size, size_t limit) {
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": ", size, " bytes, over the server's limit of ", limit));
}

// The request's options as a JSON object, within the limits.
absl::StatusOr<rpc::Json> OptionsJson(const google::protobuf::Struct& options,
                                      const RequestLimits& limits) {
  if (int depth = StructDepth(options); depth > limits.max_options_depth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options: nested ", depth, " levels deep, over the server's limit of ",
        limits.max_options_depth));
  }
  std::string json;
  auto converted = google::protobuf::util::MessageToJsonString(options, &json);
  if (!converted.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("options: ", converted.ToString()));
  }
  if (json.size() > limits.max_options_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options: ", json.size(), " bytes of JSON, over the server's limit of ",
        limits.max_options_bytes, "; pass only the backend options you need"));
  }
  rpc::Json parsed = rpc::Json::parse(json, nullptr, false);
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError("options: must be a JSON object");
  }
  return parsed;
}

}  // namespace

absl::StatusOr<rpc::CompleteParams> ToCompleteParams(
    const llmbridge::v1::CompleteRequest& request, size_t max_request_bytes) {
  RequestLimits limits;
  limits.max_request_bytes = max_request_bytes;
  return ToCompleteParams(request, limits);
}

absl::StatusOr<rpc::CompleteParams> ToCompleteParams(
    const llmbridge::v1::CompleteRequest& request, const RequestLimits& limits) {
  rpc::CompleteParams params;
  if (request.messages().empty()) {
    return absl::InvalidArgumentError(
        "messages: at least one message is required, e.g. "
        R"({"messages":[{"role":"user","content":"Hello"}]})");
  }
  if (request.messages_size() > limits.max_messages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "messages: ", request.messages_size(),
        " messages, over the server's limit of ", limits.max_messages,
        "; shorten the conversation"));
  }
  if (request.model().size() > limits.max_name_bytes) {
    return TooLong("model", request.model().size(), limits.max_name_bytes);
  }
  size_t text_bytes = request.system_prompt().size() + request.model().size();
  for (int i = 0; i < request.messages_size(); ++i) {
    const auto& m = request.messages(i);
    for (auto [field, value] : {std::pair{"role", &m.role()}, {"name", &m.name()}}) {
      if (value->size() > limits.max_name_bytes) {
        return TooLong(absl::StrCat("messages[", i, "].", field), value->size(),
                       limits.max_name_bytes);
      }
    }
    text_bytes += m.role().size() + m.content().size() + m.name().size();
  }
  if (request.has_options()) {
    absl::StatusOr<rpc::Json> options = OptionsJson(request.options(), limits);
    if (!options.ok()) return options.status();
    params.options = *std::move(options);
    text_bytes += params.options.dump().size();
  }
  if (absl::Status status =
          AddSamplingControls(request, limits.sampling, params, text_bytes);
      !status.ok()) {
    return status;
  }
  if (text_bytes > limits.max_request_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "messages: the request's text is ", text_bytes,
        " bytes, over the server's limit of ", limits.max_request_bytes,
        " (--max_request_bytes); shorten the conversation"));
  }
  for (int i = 0; i < request.messages_size(); ++i) {
    const auto& m = request.messages(i);
    if (!KnownRole(m.role())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role: unknown role '", m.role(),
          "'; use system, user, assistant or tool"));
    }
    params.messages.push_back({m.role(), m.content(), m.name()});
  }
  if (request.max_tokens() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: must be >= 0 (0 means the backend's default), got ",
        request.max_tokens()));
  }
  if (request.has_temperature()) {
    double t = request.temperature();
    if (!std::isfinite(t) || t < 0.0 || t > 2.0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "temperature: must be between 0 and 2, got ", t));
    }
    params.temperature = t;
  }
  if (request.max_tool_iterations() < 0 ||
      request.max_tool_iterations() > limits.max_tool_iterations) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tool_iterations: must be between 0 (the default, 8) and ",
        limits.max_tool_iterations, ", got ", request.max_tool_iterations()));
  }
  params.use_tools = request.use_tools();
  params.max_tool_iterations = request.max_tool_iterations();
  params.model = request.model();
  params.system_prompt = request.system_prompt();
  params.max_tokens = request.max_tokens();
  return params;
}

llmbridge::v1::CompleteResponse ToToolResponse(const rpc::ToolEvent& event) {
  llmbridge::v1::CompleteResponse response;
  if (event.kind == rpc::ToolEvent::Kind::kCall) {
    auto* call = response.mutable_tool_call();
    call->set_id(event.id);
    call->set_server(event.server);
    call->set_name(event.name);
    call->set_arguments_json(event.arguments.dump());
  } else {
    auto* result = response.mutable_tool_result();
    result->set_id(event.id);
    result->set_server(event.server);
    result->set_name(event.name);
    result->set_content(event.content);
    result->set_is_error(event.is_error);
  }
  return response;
}

absl::StatusOr<llmbridge::v1::ListToolsResponse> ToListToolsResponse(
    const rpc::Json& result) {
  // The sidecar may send null for absent fields (a tool without a
  // description): read each field leniently, by type.
  auto text = [](const rpc::Json& j, const char* key) -> std::string {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : "";
  };
  auto field = [](const rpc::Json& j, const char* key) -> const rpc::Json& {
    static const rpc::Json kNull;
    auto it = j.find(key);
    return it != j.end() ? *it : kNull;
  };
  if (!result.is_object()) {
    return absl::InternalError("malformed tools result from the sidecar");
  }
  llmbridge::v1::ListToolsResponse response;
  const rpc::Json& tools = field(result, "tools");
  for (const rpc::Json& t : tools.is_array() ? tools : rpc::Json::array()) {
    if (!t.is_object()) continue;
    auto* tool = response.add_tools();
    tool->set_server(text(t, "server"));
    tool->set_name(text(t, "name"));
    tool->set_description(text(t, "description"));
    const rpc::Json& schema = field(t, "input_schema");
    tool->set_input_schema_json(schema.is_object() ? schema.dump() : "{}");
  }
  const rpc::Json& servers = field(result, "servers");
  if (servers.is_object()) {
    for (const auto& [name, s] : servers.items()) {
      if (!s.is_object()) continue;
      auto* server = response.add_servers();
      server->set_name(name);
      const rpc::Json& connected = field(s, "connected");
      server->set_connected(connected.is_boolean() && connected.get<bool>());
      const rpc::Json& count = field(s, "tools");
      server->set_tool_count(count.is_number_integer() ? count.get<int>() : 0);
      server->set_error(text(s, "error"));
      server->set_protocol_version(text(s, "protocol_version"));
    }
  }
  return response;
}

llmbridge::v1::CompleteResponse ToFinalResponse(
    const rpc::CompleteResult& result) {
  llmbridge::v1::CompleteResponse response;
  response.set_done(true);
  response.set_finish_reason(result.finish_reason);
  response.set_raw_finish_reason(result.raw_finish_reason);
  response.set_model(result.model);
  auto* usage = response.mutable_usage();
  usage->set_input_tokens(result.usage.input_tokens);
  usage->set_output_tokens(result.usage.output_tokens);
  usage->set_total_tokens(result.usage.total_tokens);
  usage->set_cached_tokens(result.usage.cached_tokens);
  return response;
}

}  // namespace llmbridge::service
