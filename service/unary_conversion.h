// Embed and CountTokens: their requests checked and turned into the
// sidecar's "embed" and "count_tokens" params, and the sidecar's results
// (untrusted bytes: every field type-checked) turned into the responses.
#ifndef LLMBRIDGE_SERVICE_UNARY_CONVERSION_H_
#define LLMBRIDGE_SERVICE_UNARY_CONVERSION_H_

#include "absl/status/statusor.h"
#include "llmbridge/v1/llmbridge.pb.h"
#include "rpc_bridge/protocol.h"
#include "service/request_conversion.h"

namespace llmbridge::service {

// Inputs per Embed call (OpenAI's limit too).
inline constexpr int kMaxEmbedInputs = 2048;

// {"inputs": [...], "model"?, "dimensions"?, "normalize"?}, or
// INVALID_ARGUMENT naming the field ("inputs[2]: must not be empty").
absl::StatusOr<rpc::Json> ToEmbedParams(const llmbridge::v1::EmbedRequest& request,
                                        const RequestLimits& limits);

// From {"embeddings": [[float...]...], "model", "usage"}: one embedding per
// input (`inputs` of them), else INTERNAL (reason SIDECAR_PROTOCOL_ERROR).
absl::StatusOr<llmbridge::v1::EmbedResponse> ToEmbedResponse(const rpc::Json& result,
                                                             int inputs);

// {"messages", "model"?, "system_prompt"?}, checked as Complete checks them.
absl::StatusOr<rpc::Json> ToCountTokensParams(
    const llmbridge::v1::CountTokensRequest& request, const RequestLimits& limits);

// From {"input_tokens": N}.
absl::StatusOr<llmbridge::v1::CountTokensResponse> ToCountTokensResponse(
    const rpc::Json& result);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_UNARY_CONVERSION_H_
