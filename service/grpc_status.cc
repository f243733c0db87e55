#include "service/grpc_status.h"

#include <string>

namespace llmbridge::service {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    constexpr char kMarker[] = " ...[truncated]";
    message.resize(kMaxStatusMessageBytes - sizeof(kMarker) + 1);
    // Do not leave half a UTF-8 sequence before the marker.
    while (!message.empty() &&
           (static_cast<unsigned char>(message.back()) & 0xC0) == 0x80) {
      message.pop_back();
    }
    if (!message.empty() &&
        (static_cast<unsigned char>(message.back()) & 0x80) != 0) {
      message.pop_back();
    }
    message += kMarker;
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message);
}

}  // namespace llmbridge::service
