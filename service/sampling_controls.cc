#include "service/sampling_controls.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace llmbridge::service {
namespace {

absl::Status OutOfRange(const char* field, const std::string& range, double got) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": must be ", range, ", got ", got));
}

// An optional double control and its range: [lo, hi], or (lo, hi] when
// `open_low`.
struct RangedControl {
  const char* field;
  bool present;
  double value;
  double lo, hi;
  bool open_low;
  std::optional<double>* out;
};

absl::Status CopyRanged(const RangedControl& c) {
  if (!c.present) return absl::OkStatus();
  const bool low_ok = c.open_low ? c.value > c.lo : c.value >= c.lo;
  if (!std::isfinite(c.value) || !low_ok || c.value > c.hi) {
    return OutOfRange(c.field,
                      absl::StrCat(c.open_low ? "greater than " : "between ", c.lo,
                                   c.open_low ? " and at most " : " and ", c.hi),
                      c.value);
  }
  *c.out = c.value;
  return absl::OkStatus();
}

// How deeply objects and arrays nest in JSON text, counted without parsing
// (so that text nested a million levels deep costs no recursion anywhere).
int JsonTextDepth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return deepest;
}

absl::StatusOr<rpc::Json> ResponseFormatJson(
    const llmbridge::v1::ResponseFormat& format, const SamplingLimits& limits) {
  using llmbridge::v1::ResponseFormat;
  switch (format.format_case()) {
    case ResponseFormat::kJsonObject:
      return rpc::Json{{"json_object", rpc::Json::object()}};
    case ResponseFormat::kJsonSchema:
      break;
    case ResponseFormat::FORMAT_NOT_SET:
      return absl::InvalidArgumentError(
          "response_format: set json_object ({}) or json_schema "
          R"(({"schema": "<JSON schema as text>"}), or leave response_format out)");
  }
  constexpr char kField[] = "response_format.json_schema.schema";
  const std::string& text = format.json_schema().schema();
  if (text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        kField, R"(: required: the JSON schema as text, e.g. "{\"type\": \"object\"}")"));
  }
  if (text.size() > limits.max_schema_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, ": ", text.size(), " bytes, over the server's limit of ",
                     limits.max_schema_bytes));
  }
  if (int depth = JsonTextDepth(text); depth > limits.max_schema_depth) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, ": nested ", depth,
                     " levels deep, over the server's limit of ",
                     limits.max_schema_depth));
  }
  rpc::Json schema = rpc::Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, ": not valid JSON; pass the schema as JSON text"));
  }
  if (!schema.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, ": must be a JSON object (a JSON schema), got ",
                     schema.type_name()));
  }
  rpc::Json spec{{"schema", std::move(schema)}};
  if (!format.json_schema().name().empty()) spec["name"] = format.json_schema().name();
  if (format.json_schema().strict()) spec["strict"] = true;
  return rpc::Json{{"json_schema", std::move(spec)}};
}

}  // namespace

absl::Status AddSamplingControls(const llmbridge::v1::CompleteRequest& request,
                                 const SamplingLimits& limits,
                                 rpc::CompleteParams& params, size_t& text_bytes) {
  if (request.stop_size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop: ", request.stop_size(), " strings, over the limit of ",
                     limits.max_stop_strings));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    const std::string& s = request.stop(i);
    if (s.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop[", i, "]: must not be empty"));
    }
    if (s.size() > limits.max_stop_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop[", i, "]: ", s.size(), " bytes, over the limit of ",
                       limits.max_stop_bytes));
    }
    text_bytes += s.size();
    params.stop.push_back(s);
  }
  if (request.has_seed()) params.seed = request.seed();
  const RangedControl ranged[] = {
      {"top_p", request.has_top_p(), request.top_p(), 0, 1, false, &params.top_p},
      {"min_p", request.has_min_p(), request.min_p(), 0, 1, false, &params.min_p},
      {"presence_penalty", request.has_presence_penalty(),
       request.presence_penalty(), -2, 2, false, &params.presence_penalty},
      {"frequency_penalty", request.has_frequency_penalty(),
       request.frequency_penalty(), -2, 2, false, &params.frequency_penalty},
      {"repeat_penalty", request.has_repeat_penalty(), request.repeat_penalty(), 0,
       100, true, &params.repeat_penalty},
  };
  for (const RangedControl& control : ranged) {
    if (absl::Status status = CopyRanged(control); !status.ok()) return status;
  }
  if (request.has_top_k()) {
    if (request.top_k() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "top_k: must be >= 0 (0 disables it), got ", request.top_k()));
    }
    params.top_k = request.top_k();
  }
  if (request.logit_bias_size() > limits.max_logit_bias) {
    return absl::InvalidArgumentError(
        absl::StrCat("logit_bias: ", request.logit_bias_size(),
                     " entries, over the limit of ", limits.max_logit_bias));
  }
  for (const auto& [token, bias] : request.logit_bias()) {
    if (token < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "logit_bias: token id ", token, " is negative; use the model's token ids"));
    }
    if (!std::isfinite(bias) || bias < -100 || bias > 100) {
      return absl::InvalidArgumentError(absl::StrCat(
          "logit_bias[", token, "]: must be between -100 and 100, got ", bias));
    }
    params.logit_bias[token] = bias;
  }
  if (request.has_response_format()) {
    absl::StatusOr<rpc::Json> format =
        ResponseFormatJson(request.response_format(), limits);
    if (!format.ok()) return format.status();
    text_bytes += request.response_format().json_schema().schema().size();
    params.response_format = *std::move(format);
  }
  return absl::OkStatus();
}

}  // namespace llmbridge::service
