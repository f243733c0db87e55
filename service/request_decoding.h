// A Complete, Embed or CountTokens request whose bytes gRPC cannot decode
// gets INVALID_ARGUMENT saying what is wrong, instead of gRPC's
// UNIMPLEMENTED with no message.
//
// Why this exists: gRPC 1.51's callback handlers answer a request that
// fails to parse (truncated bytes, invalid UTF-8 in a proto3 string field)
// with UNIMPLEMENTED and an empty message
// (grpcpp/impl/codegen/server_callback_handlers.h: "if deserialization or
// reactor creator failed"); the service's code never sees the call. So these
// methods' handlers are replaced by ones that wrap gRPC's own: each
// lets gRPC decode as usual and, only when that fails, looks at the same
// bytes again to name the problem (e.g. "messages[1].content: not valid
// UTF-8") and answers with a reactor that finishes at once.
//
// ListTools and GetCapabilities take empty messages and are left as they
// are (only bytes that are not protobuf at all fail there).
#ifndef LLMBRIDGE_SERVICE_REQUEST_DECODING_H_
#define LLMBRIDGE_SERVICE_REQUEST_DECODING_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/descriptor.h"
#include "llmbridge/v1/llmbridge.grpc.pb.h"

namespace llmbridge::service {

// Installs the handlers on `service` (before the server is built). The
// service keeps answering every decodable request through its own methods.
// Each handler goes to the index gRPC's generated code gives its method
// (LocalLlmMethodIndex); the process aborts, saying why, if llmbridge.proto
// no longer has the method with the same request and response types.
void AnswerUndecodableRequests(llmbridge::v1::LocalLLM::CallbackService* service);

// The index of the LocalLLM method named `method` (e.g. "Embed") among the
// service's handlers: its index in llmbridge.proto's service descriptor,
// which is the order in which the generated code registers the methods.
// NotFound when the proto has no such method.
absl::StatusOr<int> LocalLlmMethodIndex(std::string_view method);

// Why `bytes` do not parse as a `descriptor` message, as INVALID_ARGUMENT:
// the path of the first string field that is not UTF-8, or that the bytes
// are not protobuf (truncated or corrupt).
absl::Status DescribeUndecodable(std::string_view bytes,
                                 const google::protobuf::Descriptor* descriptor);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_REQUEST_DECODING_H_
