#include "rpc_bridge/status_mapping.h"

#include <string>

#include "absl/strings/cord.h"

namespace llmbridge::rpc {

absl::StatusCode HttpStatusToCode(int http_status) {
  switch (http_status) {
    case 400:
    case 422:
      return absl::StatusCode::kInvalidArgument;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
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
      const Json* http = nullptr;
      if (error.data.is_object() && error.data.contains("http_status")) {
        http = &error.data["http_status"];
      }
      if (http == nullptr || !http->is_number_integer()) {
        return absl::StatusCode::kUnknown;
      }
      return HttpStatusToCode(http->get<int>());
    }
    case kModelNotFound:
      return absl::StatusCode::kNotFound;
    case kStreamError:
    case kConnectionError:
      return absl::StatusCode::kUnavailable;
    case kRequestCancelled:
      return absl::StatusCode::kCancelled;
    default:
      return absl::StatusCode::kUnknown;
  }
}

}  // namespace

absl::Status RpcErrorToStatus(const RpcError& error) {
  std::string message = error.message.empty()
                            ? "sidecar error " + std::to_string(error.code)
                            : error.message;
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
