// The one place where a JSON-RPC error from the sidecar becomes an
// absl::Status. Codes are chosen by what the caller should do next
// (REFERENCE.md section 3): UNAVAILABLE = retry this call with backoff,
// NOT_FOUND / INVALID_ARGUMENT = fix the request, FAILED_PRECONDITION = the
// operator must fix the backend first (it refused the sidecar's
// credentials), INTERNAL = a bug or a failure the backend itself reported.
#ifndef LLMBRIDGE_RPC_BRIDGE_STATUS_MAPPING_H_
#define LLMBRIDGE_RPC_BRIDGE_STATUS_MAPPING_H_

#include <optional>

#include "absl/status/status.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::rpc {

// Payload key under which RpcErrorToStatus attaches the original error as
// JSON ({"code", "message", "data"}), so the gRPC layer can build rich error
// details (ErrorInfo metadata) without re-parsing the message.
inline constexpr char kRpcErrorPayloadUrl[] =
    "type.llmbridge.dev/llmbridge.rpc.RpcError";

// Maps the error's code (and, for backend errors, data.http_status; for
// stream errors, whether data.upstream_error says the backend reported it)
// to a status code. The message is the sidecar's, which says what to do; a
// backend's 401 / 403 also gets whose credentials these are and what to
// change, since a client would otherwise suspect its own token.
absl::Status RpcErrorToStatus(const RpcError& error);

// The status code an upstream HTTP status maps to (kBackendError): 401 and
// 403 are FAILED_PRECONDITION (the backend refused the sidecar, not the
// client).
absl::StatusCode HttpStatusToCode(int http_status);

// The JSON-RPC error attached by RpcErrorToStatus, if any.
std::optional<RpcError> RpcErrorFromStatus(const absl::Status& status);

}  // namespace llmbridge::rpc

#endif  // LLMBRIDGE_RPC_BRIDGE_STATUS_MAPPING_H_
