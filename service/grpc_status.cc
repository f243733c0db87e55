#include "service/grpc_status.h"

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "rpc_bridge/error_reason.h"
#include "rpc_bridge/protocol.h"
#include "rpc_bridge/status_mapping.h"

namespace llmbridge::service {
namespace {

namespace reason = rpc::reason;

std::string Truncate(std::string message, size_t limit) {
  if (message.size() <= limit) return message;
  constexpr char kMarker[] = " ...[truncated]";
  message.resize(limit - sizeof(kMarker) + 1);
  // Do not leave half a UTF-8 sequence before the marker.
  while (!message.empty() &&
         (static_cast<unsigned char>(message.back()) & 0xC0) == 0x80) {
    message.pop_back();
  }
  if (!message.empty() &&
      (static_cast<unsigned char>(message.back()) & 0x80) != 0) {
    message.pop_back();
  }
  return message + kMarker;
}

std::optional<int> HttpStatusOf(const rpc::RpcError& error) {
  if (!error.data.is_object()) return std::nullopt;
  auto it = error.data.find("http_status");
  if (it == error.data.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int>();
}

std::string ReasonForRpcError(const rpc::RpcError& error) {
  switch (error.code) {
    case rpc::kModelNotFound:
      return reason::kModelNotFound;
    case rpc::kConnectionError:
      return reason::kBackendUnavailable;
    case rpc::kStreamError:
      return reason::kStreamInterrupted;
    case rpc::kInvalidParams:
      return reason::kInvalidRequest;
    case rpc::kMethodNotFound:
      return reason::kUnsupported;
    case rpc::kRequestCancelled:
      return reason::kRequestCancelled;
    case rpc::kBackendError:
      switch (HttpStatusOf(error).value_or(0)) {
        case 401:
        case 403:
          return reason::kBackendCredentialsRejected;
        case 404:
          return reason::kModelNotFound;
        case 429:
          return reason::kBackendRateLimited;
        case 502:
        case 503:
          return reason::kBackendUnavailable;
        case 408:
        case 504:
          return reason::kBackendTimeout;
        default:
          return reason::kBackendError;
      }
    default:
      return reason::kSidecarError;
  }
}

std::string ReasonForCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
      return reason::kInvalidRequest;
    case absl::StatusCode::kCancelled:
      return reason::kRequestCancelled;
    case absl::StatusCode::kDeadlineExceeded:
      return reason::kDeadlineExceeded;
    case absl::StatusCode::kUnavailable:
      return reason::kSidecarUnavailable;
    case absl::StatusCode::kResourceExhausted:
      return reason::kBackendRateLimited;
    case absl::StatusCode::kInternal:
      return reason::kInternal;
    case absl::StatusCode::kNotFound:
      return reason::kModelNotFound;
    case absl::StatusCode::kUnimplemented:
      return reason::kUnsupported;
    default:
      return reason::kInternal;
  }
}

// Whether retrying the same call later can succeed: the codes that say so
// (UNAVAILABLE, RESOURCE_EXHAUSTED), except where the same call meets the
// same limit again. Deterministic failures have other codes to begin with
// (status_mapping.cc: a backend's own mid-stream error is INTERNAL).
bool Retryable(const absl::Status& status, const std::string& why) {
  if (status.code() != absl::StatusCode::kUnavailable &&
      status.code() != absl::StatusCode::kResourceExhausted) {
    return false;
  }
  // The sidecar's answer to this call is over the line cap: it would be
  // again.
  return why != reason::kResponseTooLarge;
}

// How long a client should wait: what the bridge attached (e.g. a crash
// loop's back-off), else a second.
google::rpc::RetryInfo RetryInfoFor(const absl::Status& status) {
  const std::chrono::milliseconds delay =
      rpc::AttachedRetryDelay(status).value_or(std::chrono::seconds(1));
  google::rpc::RetryInfo retry;
  retry.mutable_retry_delay()->set_seconds(delay.count() / 1000);
  retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(delay.count() % 1000) *
                                         1000000);
  return retry;
}

// The server flags that set a limit the bridge names (rpc::limit).
std::string FlagsFor(const std::string& limit) {
  if (limit == rpc::limit::kSidecarCommand) return "--python, --sidecar";
  return "--" + limit;  // the flags are named as the settings are
}

// " (server flags: --a, --b)" for the limits behind `status`, else "".
std::string FlagHint(const absl::Status& status) {
  std::vector<std::string> limits = rpc::AttachedLimits(status);
  if (limits.empty()) return "";
  std::vector<std::string> flags;
  for (const std::string& limit : limits) flags.push_back(FlagsFor(limit));
  return absl::StrCat(" (server flags: ", absl::StrJoin(flags, ", "), ")");
}

}  // namespace

std::string ReasonFor(const absl::Status& status) {
  if (std::optional<std::string> attached = rpc::AttachedReason(status)) {
    return *attached;
  }
  if (std::optional<rpc::RpcError> error = rpc::RpcErrorFromStatus(status)) {
    return ReasonForRpcError(*error);
  }
  return ReasonForCode(status.code());
}

grpc::Status ToGrpcStatus(const absl::Status& status,
                          const ErrorContext& context) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  std::string suffix;
  if (!context.request_id.empty() &&
      (status.code() == absl::StatusCode::kInternal ||
       status.code() == absl::StatusCode::kUnavailable ||
       status.code() == absl::StatusCode::kUnknown)) {
    suffix = " (request id " + context.request_id + ")";
  }
  suffix = FlagHint(status) + suffix;
  const std::string message =
      Truncate(std::string(status.message()), kMaxStatusMessageBytes - suffix.size()) +
      suffix;

  google::rpc::ErrorInfo info;
  const std::string why = ReasonFor(status);
  info.set_reason(why);
  info.set_domain(kErrorDomain);
  auto& metadata = *info.mutable_metadata();
  if (!context.backend.empty()) metadata["backend"] = context.backend;
  if (!context.model.empty()) metadata["model"] = context.model;
  if (!context.request_id.empty()) metadata["request_id"] = context.request_id;
  if (std::vector<std::string> limits = rpc::AttachedLimits(status); !limits.empty()) {
    metadata["limits"] = absl::StrJoin(limits, ",");
  }
  if (std::optional<rpc::RpcError> error = rpc::RpcErrorFromStatus(status)) {
    metadata["jsonrpc_code"] = std::to_string(error->code);
    if (std::optional<int> http = HttpStatusOf(*error)) {
      metadata["http_status"] = std::to_string(*http);
    }
    if (error->data.is_object()) {
      // The sidecar knows best which backend and model answered.
      for (const char* key : {"backend", "model", "field"}) {
        auto it = error->data.find(key);
        if (it != error->data.end() && it->is_string() &&
            !it->get<std::string>().empty()) {
          metadata[key] = it->get<std::string>();
        }
      }
    }
  }

  google::rpc::Status details;
  details.set_code(static_cast<int>(code));
  details.set_message(message);
  details.add_details()->PackFrom(info);
  if (Retryable(status, why)) details.add_details()->PackFrom(RetryInfoFor(status));
  return grpc::Status(code, message, details.SerializeAsString());
}

}  // namespace llmbridge::service
