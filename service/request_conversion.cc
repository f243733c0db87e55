#include "service/request_conversion.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace llmbridge::service {
namespace {

bool KnownRole(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant" ||
         role == "tool";
}

}  // namespace

absl::StatusOr<rpc::CompleteParams> ToCompleteParams(
    const llmbridge::v1::CompleteRequest& request, size_t max_request_bytes) {
  rpc::CompleteParams params;
  size_t text_bytes = request.system_prompt().size();
  for (const auto& m : request.messages()) text_bytes += m.content().size();
  if (text_bytes > max_request_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "messages: the request's text is ", text_bytes,
        " bytes, over the server's limit of ", max_request_bytes,
        " (--max_request_bytes); shorten the conversation"));
  }
  if (request.messages().empty()) {
    return absl::InvalidArgumentError(
        "messages: at least one message is required, e.g. "
        R"({"messages":[{"role":"user","content":"Hello"}]})");
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
  if (request.max_tool_iterations() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tool_iterations: must be >= 0 (0 means the default), got ",
        request.max_tool_iterations()));
  }
  params.use_tools = request.use_tools();
  params.max_tool_iterations = request.max_tool_iterations();
  params.model = request.model();
  params.system_prompt = request.system_prompt();
  params.max_tokens = request.max_tokens();
  if (request.has_options()) {
    std::string json;
    auto converted =
        google::protobuf::util::MessageToJsonString(request.options(), &json);
    if (!converted.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("options: ", converted.ToString()));
    }
    params.options = rpc::Json::parse(json, nullptr, false);
    if (!params.options.is_object()) {
      return absl::InvalidArgumentError("options: must be a JSON object");
    }
  }
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
  response.set_model(result.model);
  auto* usage = response.mutable_usage();
  usage->set_input_tokens(result.usage.input_tokens);
  usage->set_output_tokens(result.usage.output_tokens);
  usage->set_total_tokens(result.usage.total_tokens);
  return response;
}

}  // namespace llmbridge::service
