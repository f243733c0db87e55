// Checks a CompleteRequest and turns it into the sidecar's CompleteParams.
// Bad input is rejected here, before the sidecar is involved.
#ifndef LLMBRIDGE_SERVICE_REQUEST_CONVERSION_H_
#define LLMBRIDGE_SERVICE_REQUEST_CONVERSION_H_

#include "absl/status/statusor.h"
#include "llmbridge/v1/llmbridge.pb.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::service {

// InvalidArgument naming the offending field, e.g. "messages[1].role: ...".
// `max_request_bytes` bounds the text of all messages and the system prompt.
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
