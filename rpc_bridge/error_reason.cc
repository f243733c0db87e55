#include "rpc_bridge/error_reason.h"

#include <string>

#include "absl/strings/cord.h"

namespace llmbridge::rpc {
namespace {
constexpr char kReasonPayloadUrl[] = "type.llmbridge.io/llmbridge.rpc.Reason";
}

absl::Status WithReason(absl::Status status, std::string_view reason) {
  if (!status.ok()) status.SetPayload(kReasonPayloadUrl, absl::Cord(std::string(reason)));
  return status;
}

std::optional<std::string> AttachedReason(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  return std::string(*payload);
}

}  // namespace llmbridge::rpc
