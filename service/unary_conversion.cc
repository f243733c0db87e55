#include "service/unary_conversion.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc_bridge/error_reason.h"

namespace llmbridge::service {
namespace {

absl::Status Malformed(const std::string& what) {
  return rpc::WithReason(
      absl::InternalError(absl::StrCat("the sidecar sent a malformed ", what)),
      rpc::reason::kSidecarProtocolError);
}

}  // namespace

absl::StatusOr<rpc::Json> ToEmbedParams(const llmbridge::v1::EmbedRequest& request,
                                        const RequestLimits& limits) {
  if (request.inputs().empty()) {
    return absl::InvalidArgumentError(
        R"(inputs: at least one text is required, e.g. {"inputs": ["Hello"]})");
  }
  if (request.inputs_size() > kMaxEmbedInputs) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs: ", request.inputs_size(), " texts, over the limit of ",
                     kMaxEmbedInputs, "; split them over several calls"));
  }
  if (request.model().size() > limits.max_name_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: ", request.model().size(),
                     " bytes, over the server's limit of ", limits.max_name_bytes));
  }
  if (request.dimensions() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dimensions: must be >= 0 (0 means the model's own size), got ",
        request.dimensions()));
  }
  size_t text_bytes = request.model().size();
  rpc::Json inputs = rpc::Json::array();
  for (int i = 0; i < request.inputs_size(); ++i) {
    const std::string& text = request.inputs(i);
    if (text.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("inputs[", i, "]: must not be empty"));
    }
    text_bytes += text.size();
    inputs.push_back(text);
  }
  if (text_bytes > limits.max_request_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs: the request's text is ", text_bytes,
        " bytes, over the server's limit of ", limits.max_request_bytes,
        " (--max_request_bytes); split the inputs over several calls"));
  }
  rpc::Json params{{"inputs", std::move(inputs)}};
  if (!request.model().empty()) params["model"] = request.model();
  if (request.dimensions() > 0) params["dimensions"] = request.dimensions();
  if (request.normalize()) params["normalize"] = true;
  return params;
}

absl::StatusOr<llmbridge::v1::EmbedResponse> ToEmbedResponse(const rpc::Json& result,
                                                             int inputs) {
  if (!result.is_object()) return Malformed("embed result: not an object");
  auto embeddings = result.find("embeddings");
  if (embeddings == result.end() || !embeddings->is_array()) {
    return Malformed("embed result: no embeddings array");
  }
  if (static_cast<int64_t>(embeddings->size()) != inputs) {
    return Malformed(absl::StrCat("embed result: ", embeddings->size(),
                                  " embeddings for ", inputs, " inputs"));
  }
  llmbridge::v1::EmbedResponse response;
  for (const rpc::Json& vector : *embeddings) {
    if (!vector.is_array()) return Malformed("embed result: an embedding is not an array");
    auto* embedding = response.add_embeddings();
    embedding->mutable_values()->Reserve(static_cast<int>(vector.size()));
    for (const rpc::Json& value : vector) {
      // Checked as a double first: a double outside float's range does not
      // convert to one.
      if (!value.is_number() ||
          std::fabs(value.get<double>()) > std::numeric_limits<float>::max()) {
        return Malformed("embed result: an embedding value is not a float");
      }
      embedding->add_values(static_cast<float>(value.get<double>()));
    }
  }
  if (auto model = result.find("model"); model != result.end() && model->is_string()) {
    response.set_model(model->get<std::string>());
  }
  if (auto usage = result.find("usage"); usage != result.end() && !usage->is_null()) {
    absl::StatusOr<rpc::UsageResult> parsed = rpc::ParseUsage(*usage);
    if (!parsed.ok()) return Malformed(absl::StrCat("embed usage: ", parsed.status().message()));
    response.mutable_usage()->set_input_tokens(parsed->input_tokens);
    response.mutable_usage()->set_output_tokens(parsed->output_tokens);
    response.mutable_usage()->set_total_tokens(parsed->total_tokens);
  }
  return response;
}

absl::StatusOr<rpc::Json> ToCountTokensParams(
    const llmbridge::v1::CountTokensRequest& request, const RequestLimits& limits) {
  // The same conversation Complete would send, checked by the same code.
  llmbridge::v1::CompleteRequest as_complete;
  *as_complete.mutable_messages() = request.messages();
  as_complete.set_model(request.model());
  as_complete.set_system_prompt(request.system_prompt());
  absl::StatusOr<rpc::CompleteParams> params = ToCompleteParams(as_complete, limits);
  if (!params.ok()) return params.status();
  return rpc::Json(*params);
}

absl::StatusOr<llmbridge::v1::CountTokensResponse> ToCountTokensResponse(
    const rpc::Json& result) {
  auto count = result.is_object() ? result.find("input_tokens") : result.end();
  if (!result.is_object() || count == result.end() || !count->is_number_integer() ||
      count->get<int64_t>() < 0 || count->get<int64_t>() > INT32_MAX) {
    return Malformed("count_tokens result: input_tokens must be an integer >= 0");
  }
  llmbridge::v1::CountTokensResponse response;
  response.set_input_tokens(static_cast<int32_t>(count->get<int64_t>()));
  return response;
}

}  // namespace llmbridge::service
