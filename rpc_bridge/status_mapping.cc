#include "rpc_bridge/status_mapping.h"

#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace llmbridge::rpc {

absl::StatusCode HttpStatusToCode(int http_status) {
  switch (http_status) {
    case 400:
    case 422:
      return absl::StatusCode::kInvalidArgument;
    case 401:
    case 403:
      // The backend refused the sidecar, not the client: UNAUTHENTICATED /
      // PERMISSION_DENIED would tell the client its own token is wrong.
      // Retrying does not help until the operator fixes the backend.
      return absl::StatusCode::kFailedPrecondition;
    case 404:
      return absl::StatusCode::kNotFound;
    case 408:
    case 504:
      return absl::StatusCode::kDeadlineExceeded;
    case 429:
      return absl::StatusCode::kResourceExhausted;
    case 502:
    case 503:
      return absl::StatusCode::kUnavailable;
    default:
      break;
  }
  if (http_status >= 500 && http_status < 600) {
    return absl::StatusCode::kInternal;
  }
  return absl::StatusCode::kUnknown;
}

namespace {

std::optional<int> HttpStatusOf(const RpcError& error) {
  if (!error.data.is_object()) return std::nullopt;
  auto it = error.data.find("http_status");
  if (it == error.data.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int>();
}

std::string DataString(const RpcError& error, const char* key) {
  if (!error.data.is_object()) return "";
  auto it = error.data.find(key);
  return it != error.data.end() && it->is_string() ? it->get<std::string>() : "";
}

// Whether a -32002 stream error is the backend's own report of a failure
// (an error event or line mid-stream, data.upstream_error): the same
// request fails the same way again. Otherwise the stream broke (the
// connection dropped, the backend went silent), which a retry may not meet.
bool BackendReportedStreamError(const RpcError& error) {
  return !DataString(error, "upstream_error").empty();
}

absl::StatusCode CodeFor(const RpcError& error) {
  switch (error.code) {
    case kParseError:
    case kInvalidRequest:
    case kInternalError:
      return absl::StatusCode::kInternal;
    case kMethodNotFound:
      return absl::StatusCode::kUnimplemented;
    case kInvalidParams:
      return absl::StatusCode::kInvalidArgument;
    case kBackendError: {
      std::optional<int> http = HttpStatusOf(error);
      return http.has_value() ? HttpStatusToCode(*http) : absl::StatusCode::kUnknown;
    }
    case kModelNotFound:
      return absl::StatusCode::kNotFound;
    case kStreamError:
      return BackendReportedStreamError(error) ? absl::StatusCode::kInternal
                                               : absl::StatusCode::kUnavailable;
    case kConnectionError:
      return absl::StatusCode::kUnavailable;
    case kRequestCancelled:
      return absl::StatusCode::kCancelled;
    default:
      return absl::StatusCode::kUnknown;
  }
}

// The backend refused the sidecar's request for want of credentials. The
// sidecar's message names the backend's address and quotes its answer; this
// says whose credentials they are and what to change.
std::string CredentialsRejectedMessage(const RpcError& error, int http_status,
                                       const std::string& sidecar_message) {
  const std::string backend = DataString(error, "backend");
  return absl::StrCat(
      "the backend", backend.empty() ? "" : absl::StrCat(" (", backend, ")"),
      " refused the sidecar's request with HTTP ", http_status,
      http_status == 401 ? " (credentials missing or not accepted)"
                         : " (access forbidden)",
      ": ", sidecar_message,
      "; this is the backend's own authentication, not the client's token: "
      "llmbridge sends the backend no credentials, so let it reach the backend "
      "without them (e.g. vLLM or llama-server started without --api-key, or "
      "an address that does not pass through an authenticating proxy)");
}

}  // namespace

absl::Status RpcErrorToStatus(const RpcError& error) {
  std::string message = error.message.empty()
                            ? "sidecar error " + std::to_string(error.code)
                            : error.message;
  if (error.code == kBackendError) {
    std::optional<int> http = HttpStatusOf(error);
    if (http == 401 || http == 403) {
      message = CredentialsRejectedMessage(error, *http, message);
    }
  }
  absl::Status status(CodeFor(error), message);
  Json payload = error;
  status.SetPayload(kRpcErrorPayloadUrl, absl::Cord(payload.dump()));
  return status;
}

std::optional<RpcError> RpcErrorFromStatus(const absl::Status& status) {
  auto payload = status.GetPayload(kRpcErrorPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  Json j = Json::parse(std::string(*payload), nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  try {
    return j.get<RpcError>();
  } catch (const Json::exception&) {
    return std::nullopt;
  }
}

}  // namespace llmbridge::rpc
