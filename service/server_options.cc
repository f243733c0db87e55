#include "service/server_options.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace llmbridge::service {
namespace {

// gRPC's channel arguments are ints of milliseconds.
constexpr int64_t kMaxMillis = std::numeric_limits<int>::max();

absl::Status CheckRange(const char* flag, std::chrono::milliseconds value) {
  if (value.count() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must not be negative (0 turns it off)"));
  }
  if (value.count() > kMaxMillis) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, " is too long: at most ", kMaxMillis / 1000,
        "s (about 24 days); 0 turns it off"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateConnectionAge(const ConnectionAge& age) {
  if (absl::Status s = CheckRange("max_connection_age", age.max_age); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("max_connection_age_grace", age.grace); !s.ok()) {
    return s;
  }
  if (age.max_age.count() == 0 && age.grace.count() != 0) {
    return absl::InvalidArgumentError(
        "--max_connection_age_grace needs --max_connection_age (the grace "
        "starts when a connection reaches its maximum age)");
  }
  return absl::OkStatus();
}

void ApplyConnectionAge(const ConnectionAge& age, grpc::ServerBuilder* builder) {
  if (age.max_age.count() == 0) return;
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                              static_cast<int>(age.max_age.count()));
  if (age.grace.count() != 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                static_cast<int>(age.grace.count()));
  }
}

}  // namespace llmbridge::service
