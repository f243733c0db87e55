#include "rpc_bridge/error_reason.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace llmbridge::rpc {
namespace {
constexpr char kReasonPayloadUrl[] = "type.llmbridge.io/llmbridge.rpc.Reason";
// The settings, comma-separated.
constexpr char kLimitsPayloadUrl[] = "type.llmbridge.io/llmbridge.rpc.Limits";
// The delay in whole milliseconds, as decimal text.
constexpr char kRetryDelayPayloadUrl[] = "type.llmbridge.io/llmbridge.rpc.RetryDelay";
}  // namespace

absl::Status WithReason(absl::Status status, std::string_view reason) {
  if (!status.ok()) status.SetPayload(kReasonPayloadUrl, absl::Cord(std::string(reason)));
  return status;
}

std::optional<std::string> AttachedReason(const absl::Status& status) {
  auto payload = status.GetPayload(kReasonPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  return std::string(*payload);
}

absl::Status WithLimits(absl::Status status, std::initializer_list<std::string_view> limits) {
  if (status.ok()) return status;
  std::string joined;
  for (std::string_view limit : limits) {
    if (!joined.empty()) joined += ',';
    joined += limit;
  }
  status.SetPayload(kLimitsPayloadUrl, absl::Cord(joined));
  return status;
}

std::vector<std::string> AttachedLimits(const absl::Status& status) {
  auto payload = status.GetPayload(kLimitsPayloadUrl);
  if (!payload.has_value()) return {};
  return absl::StrSplit(std::string(*payload), ',', absl::SkipEmpty());
}

absl::Status WithRetryDelay(absl::Status status, std::chrono::milliseconds delay) {
  if (!status.ok()) {
    const int64_t ms = std::max<int64_t>(0, delay.count());
    status.SetPayload(kRetryDelayPayloadUrl, absl::Cord(std::to_string(ms)));
  }
  return status;
}

std::optional<std::chrono::milliseconds> AttachedRetryDelay(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryDelayPayloadUrl);
  if (!payload.has_value()) return std::nullopt;
  int64_t ms = 0;
  if (!absl::SimpleAtoi(std::string(*payload), &ms) || ms < 0) return std::nullopt;
  return std::chrono::milliseconds(ms);
}

}  // namespace llmbridge::rpc
