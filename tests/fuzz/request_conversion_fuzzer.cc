// Fuzzes what a remote client controls most directly: the bytes of a
// CompleteRequest. gRPC parses them (ParseFromString, as its codec does),
// ToCompleteParams checks and converts them, and the result is encoded as
// the JSON-RPC line sent to the sidecar. Any crash, sanitizer report or a
// line that breaks the framing is a finding.
#include <cstdint>
#include <string>

#include "google/protobuf/stubs/logging.h"
#include "llmbridge/v1/llmbridge.pb.h"
#include "rpc_bridge/protocol.h"
#include "service/request_conversion.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 makes protobuf log an error per parse: keep runs quiet.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  llmbridge::v1::CompleteRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  // A small text limit so that both sides of it are reached.
  absl::StatusOr<llmbridge::rpc::CompleteParams> params =
      llmbridge::service::ToCompleteParams(request, 1 + size / 2);
  if (!params.ok()) {
    if (params.status().message().empty()) __builtin_trap();
    if (params.status().code() != absl::StatusCode::kInvalidArgument) {
      __builtin_trap();  // the client's request: nothing else fits
    }
    return 0;
  }
  params->stream = true;
  params->timeout_s = 1.5;
  llmbridge::rpc::Json json = *params;
  const std::string line = llmbridge::rpc::EncodeRequest(
      {llmbridge::rpc::kMethodComplete, std::move(json), 1});
  if (line.find('\n') != std::string::npos) __builtin_trap();
  if (llmbridge::rpc::Json::parse(line, nullptr, false).is_discarded()) {
    __builtin_trap();
  }
  return 0;
}
