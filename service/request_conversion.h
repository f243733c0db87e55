// Checks a CompleteRequest and turns it into the sidecar's CompleteParams.
// Bad input is rejected here, before the sidecar is involved.
#ifndef LLMBRIDGE_SERVICE_REQUEST_CONVERSION_H_
#define LLMBRIDGE_SERVICE_REQUEST_CONVERSION_H_

#include "absl/status/statusor.h"
#include "llmbridge/v1/llmbridge.pb.h"
#include "rpc_bridge/protocol.h"
#include "service/sampling_controls.h"

namespace llmbridge::service {

// Bounds on what one request may ask for. A request comes from any client
// that reaches the port, and each of these costs the sidecar and the
// backend in proportion (README: "Untrusted input limits").
struct RequestLimits {
  // All text of the request: every message's role, content and name, the
  // model, the system prompt and the options as JSON (--max_request_bytes).
  size_t max_request_bytes = 4 * 1024 * 1024;
  // Messages in the conversation.
  int max_messages = 4096;
  // `options`, as JSON: its size, and how deeply objects and arrays nest
  // (protobuf's own JSON conversion stops at 32 levels).
  size_t max_options_bytes = 64 * 1024;
  int max_options_depth = 32;
  // `max_tool_iterations` (model -> tools -> model rounds).
  int max_tool_iterations = 64;
  // `model` and each message's `name` and `role`.
  size_t max_name_bytes = 1024;
  // stop, logit_bias and response_format.
  SamplingLimits sampling;
};

// InvalidArgument naming the offending field, e.g. "messages[1].role: ...",
// and the limit with what to do about it.
absl::StatusOr<rpc::CompleteParams> ToCompleteParams(
    const llmbridge::v1::CompleteRequest& request, const RequestLimits& limits);

// The same with the default limits but `max_request_bytes`.
absl::StatusOr<rpc::CompleteParams> ToCompleteParams(
    const llmbridge::v1::CompleteRequest& request,
    size_t max_request_bytes = 4 * 1024 * 1024);

// A tool call or result as a stream message.
llmbridge::v1::CompleteResponse ToToolResponse(const rpc::ToolEvent& event);

// ListTools' answer from the sidecar's "tools" result.
absl::StatusOr<llmbridge::v1::ListToolsResponse> ToListToolsResponse(
    const rpc::Json& tools_result);

// The final message of a stream (done = true) from the sidecar's result.
llmbridge::v1::CompleteResponse ToFinalResponse(
    const rpc::CompleteResult& result);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_REQUEST_CONVERSION_H_
