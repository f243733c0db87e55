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
  llmbridge::v1::ListToolsResponse response;
  try {
    for (const rpc::Json& t : result.value("tools", rpc::Json::array())) {
      auto* tool = response.add_tools();
      tool->set_server(t.value("server", ""));
      tool->set_name(t.value("name", ""));
      tool->set_description(t.value("description", ""));
      tool->set_input_schema_json(
          t.value("input_schema", rpc::Json::object()).dump());
    }
    for (const auto& [name, s] : result.value("servers", rpc::Json::object()).items()) {
      auto* server = response.add_servers();
      server->set_name(name);
      server->set_connected(s.value("connected", false));
      server->set_tool_count(s.value("tools", 0));
      server->set_error(s.value("error", ""));
      server->set_protocol_version(s.value("protocol_version", ""));
    }
  } catch (const rpc::Json::exception& e) {
    return absl::InternalError(
        absl::StrCat("malformed tools result from the sidecar: ", e.what()));
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
