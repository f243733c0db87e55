#include "service/request_decoding.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "rpc_bridge/error_reason.h"
#include "service/grpc_status.h"
#include "service/logging.h"

namespace llmbridge::service {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;
using llmbridge::v1::CompleteRequest;
using llmbridge::v1::CompleteResponse;
using llmbridge::v1::CountTokensRequest;
using llmbridge::v1::CountTokensResponse;
using llmbridge::v1::EmbedRequest;
using llmbridge::v1::EmbedResponse;

using google::protobuf::MethodDescriptor;

// Strict UTF-8, as protobuf checks proto3 strings: no overlong forms, no
// surrogates, nothing past U+10FFFF.
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t extra;
    uint32_t min;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, min = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, min = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, min = 0x10000, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // cut short
    for (size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

// The first string field under `fields` that is not UTF-8, as a path.
std::optional<std::string> FindInvalidUtf8(const UnknownFieldSet& fields,
                                           const Descriptor* descriptor,
                                           const std::string& prefix,
                                           int depth) {
  if (depth > 100) return std::nullopt;  // protobuf's own recursion limit
  std::map<int, int> seen;  // field number -> occurrences so far
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& field = fields.field(i);
    const int index = seen[field.number()]++;
    const FieldDescriptor* fd = descriptor->FindFieldByNumber(field.number());
    if (fd == nullptr || field.type() != UnknownField::TYPE_LENGTH_DELIMITED) {
      continue;
    }
    std::string path = prefix.empty() ? fd->name() : prefix + "." + fd->name();
    if (fd->is_repeated()) absl::StrAppend(&path, "[", index, "]");
    if (fd->type() == FieldDescriptor::TYPE_STRING &&
        !IsValidUtf8(field.length_delimited())) {
      return path;
    }
    if (fd->type() == FieldDescriptor::TYPE_MESSAGE) {
      UnknownFieldSet nested;
      if (!nested.ParseFromString(field.length_delimited())) continue;
      if (auto found = FindInvalidUtf8(nested, fd->message_type(), path,
                                       depth + 1)) {
        return found;
      }
    }
  }
  return std::nullopt;
}

std::string ReadAll(grpc_byte_buffer* buffer) {
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, buffer)) return "";
  grpc_slice slice = grpc_byte_buffer_reader_readall(&reader);
  std::string out(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(slice)),
                  GRPC_SLICE_LENGTH(slice));
  grpc_slice_unref(slice);
  grpc_byte_buffer_reader_destroy(&reader);
  return out;
}

// Why gRPC could not decode `bytes` as a `method` request, logged.
absl::Status ExplainUndecodable(grpc_byte_buffer* bytes, const Descriptor* descriptor,
                                const char* method) {
  absl::Status why = DescribeUndecodable(ReadAll(bytes), descriptor);
  LogEvent("warn", "request_undecodable",
           {{"method", method}, {"error", std::string(why.message())}});
  return why;
}

// The requests gRPC could not decode, each by the empty request that stands
// in for it on its way to the reactor getter, with why. Any thread.
template <typename Request>
class DecodeErrors {
 public:
  void Add(const Request* placeholder, absl::Status why) {
    std::lock_guard<std::mutex> lock(mu_);
    errors_[placeholder] = std::move(why);
  }

  std::optional<absl::Status> Take(const Request* request) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = errors_.find(request);
    if (it == errors_.end()) return std::nullopt;
    absl::Status why = std::move(it->second);
    errors_.erase(it);
    return why;
  }

 private:
  std::mutex mu_;
  std::map<const Request*, absl::Status> errors_ ABSL_GUARDED_BY(mu_);
};

// gRPC's decoder (`inner`'s Deserialize) on `bytes`; when it fails,
// `stand_in()` gives the empty request that goes on in the undecodable one's
// place, recorded in `errors` with why, and the call proceeds (status OK) so
// that the reactor getter can answer it.
template <typename Request, typename Handler, typename StandIn>
void* DecodeOrStandIn(Handler& inner, DecodeErrors<Request>& errors, const char* method,
                      grpc_call* call, grpc_byte_buffer* bytes, grpc::Status* status,
                      void** handler_data, StandIn stand_in) {
  if (bytes == nullptr) {
    return inner.Deserialize(call, bytes, status, handler_data);
  }
  // gRPC's decoder consumes the buffer; a copy shares its slices (no bytes
  // are copied) for the rare second look.
  grpc_byte_buffer* copy = grpc_byte_buffer_copy(bytes);
  void* request = inner.Deserialize(call, bytes, status, handler_data);
  if (request == nullptr) {
    Request* placeholder = stand_in();
    errors.Add(placeholder, ExplainUndecodable(copy, Request::descriptor(), method));
    *status = grpc::Status::OK;
    request = placeholder;
  }
  grpc_byte_buffer_destroy(copy);
  return request;
}

// Ends a Complete call at once with the decoding error.
class FailedWriteReactor final
    : public grpc::ServerWriteReactor<CompleteResponse> {
 public:
  explicit FailedWriteReactor(const absl::Status& why) {
    Finish(ToGrpcStatus(why));
  }
  void OnDone() override { delete this; }
};

// Ends a unary call at once with the decoding error.
class FailedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit FailedUnaryReactor(const absl::Status& why) { Finish(ToGrpcStatus(why)); }
  void OnDone() override { delete this; }
};

// gRPC's own streaming handler for Complete, plus a second look at the
// bytes when it cannot decode them.
class DecodeCheckingHandler final : public grpc::internal::MethodHandler {
 public:
  explicit DecodeCheckingHandler(llmbridge::v1::LocalLLM::CallbackService* service)
      : inner_([this, service](grpc::CallbackServerContext* context,
                               const CompleteRequest* request)
                   -> grpc::ServerWriteReactor<CompleteResponse>* {
          if (std::optional<absl::Status> why = errors_.Take(request)) {
            return new FailedWriteReactor(*why);
          }
          return service->Complete(context, request);
        }) {}

  void RunHandler(const HandlerParameter& param) override {
    inner_.RunHandler(param);
  }

  void* Deserialize(grpc_call* call, grpc_byte_buffer* bytes,
                    grpc::Status* status, void** handler_data) override {
    return DecodeOrStandIn(inner_, errors_, "Complete", call, bytes, status, handler_data,
                           [call] {
                             // In gRPC's call arena like the one its decoder
                             // made (the writer destroys it).
                             return new (grpc_call_arena_alloc(call, sizeof(CompleteRequest)))
                                 CompleteRequest();
                           });
  }

 private:
  DecodeErrors<CompleteRequest> errors_;
  grpc::internal::CallbackServerStreamingHandler<CompleteRequest, CompleteResponse>
      inner_;
};

// gRPC's own unary handler (Embed, CountTokens), plus a second look at the
// bytes when it cannot decode them.
template <typename Request, typename Response>
class UnaryDecodeCheckingHandler final : public grpc::internal::MethodHandler {
 public:
  using ReactorGetter = std::function<grpc::ServerUnaryReactor*(
      grpc::CallbackServerContext*, const Request*, Response*)>;

  UnaryDecodeCheckingHandler(const char* method, ReactorGetter getter)
      : method_(method),
        inner_([this, getter = std::move(getter)](
                   grpc::CallbackServerContext* context, const Request* request,
                   Response* response) -> grpc::ServerUnaryReactor* {
          if (std::optional<absl::Status> why = errors_.Take(request)) {
            return new FailedUnaryReactor(*why);
          }
          return getter(context, request, response);
        }) {}

  void RunHandler(const HandlerParameter& param) override {
    inner_.RunHandler(param);
  }

  void* Deserialize(grpc_call* call, grpc_byte_buffer* bytes,
                    grpc::Status* status, void** handler_data) override {
    return DecodeOrStandIn(inner_, errors_, method_, call, bytes, status, handler_data,
                           [handler_data] {
                             // gRPC's unary handler keeps the request in the
                             // message holder it left in *handler_data
                             // (RunHandler takes it from there): emptied.
                             Request* request = static_cast<grpc::MessageHolder<Request, Response>*>(
                                                    *handler_data)
                                                    ->request();
                             request->Clear();
                             return request;
                           });
  }

 private:
  const char* const method_;
  DecodeErrors<Request> errors_;
  grpc::internal::CallbackUnaryHandler<Request, Response> inner_;
};

// grpc::Service::MarkMethodCallback is protected; a pointer to it formed
// through a subclass is the sanctioned way to reach it from outside the
// generated code without subclassing LocalLLMService.
struct ServiceAccess : grpc::Service {
  static void SetCallbackHandler(grpc::Service* service, int index,
                                 grpc::internal::MethodHandler* handler) {
    (service->*&ServiceAccess::MarkMethodCallback)(index, handler);
  }
};

// llmbridge.proto's LocalLLM service.
const google::protobuf::ServiceDescriptor* LocalLlmDescriptor() {
  return CompleteRequest::descriptor()->file()->FindServiceByName("LocalLLM");
}

// The index of `method` among LocalLLM's handlers, for a handler that
// takes `Request` and answers `Response` (a stream of them when
// `server_streaming`). Start-up stops here, loudly, when llmbridge.proto no
// longer has such a method: installing the handler at another index would
// hand one method's messages to another method's handler.
template <typename Request, typename Response>
int HandlerIndex(std::string_view method, bool server_streaming) {
  absl::StatusOr<int> index = LocalLlmMethodIndex(method);
  if (index.ok()) {
    const MethodDescriptor* found = LocalLlmDescriptor()->method(*index);
    if (found->input_type() != Request::descriptor() ||
        found->output_type() != Response::descriptor() || found->client_streaming() ||
        found->server_streaming() != server_streaming) {
      index = absl::FailedPreconditionError(absl::StrCat(
          found->full_name(), " is no longer ",
          server_streaming ? "a server-streaming" : "a unary", " call from ",
          Request::descriptor()->full_name(), " to ", Response::descriptor()->full_name()));
    }
  }
  if (!index.ok()) {
    std::fprintf(stderr,
                 "llmbridge: cannot install the request decoding handlers: %s "
                 "(service/request_decoding.cc must follow llmbridge.proto)\n",
                 std::string(index.status().message()).c_str());
    std::abort();
  }
  return *index;
}

}  // namespace

absl::StatusOr<int> LocalLlmMethodIndex(std::string_view method) {
  const google::protobuf::ServiceDescriptor* service = LocalLlmDescriptor();
  const MethodDescriptor* found =
      service == nullptr ? nullptr : service->FindMethodByName(std::string(method));
  if (found == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(llmbridge::v1::LocalLLM::service_full_name(), " has no method ", std::string(method)));
  }
  return found->index();
}

absl::Status DescribeUndecodable(std::string_view bytes,
                                 const Descriptor* descriptor) {
  UnknownFieldSet fields;
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return rpc::WithReason(
        absl::InvalidArgumentError(absl::StrCat(
            "the request is not a valid ", descriptor->full_name(), ": its ",
            bytes.size(),
            " bytes are not protobuf (truncated or corrupt); send a message "
            "encoded by a protobuf library from llmbridge.proto")),
        rpc::reason::kInvalidRequest);
  }
  if (std::optional<std::string> path =
          FindInvalidUtf8(fields, descriptor, "", 0)) {
    return rpc::WithReason(
        absl::InvalidArgumentError(absl::StrCat(
            *path,
            ": not valid UTF-8; protobuf string fields must hold UTF-8 text "
            "(check the client's text encoding)")),
        rpc::reason::kInvalidRequest);
  }
  return rpc::WithReason(
      absl::InvalidArgumentError(absl::StrCat(
          "the request could not be decoded as ", descriptor->full_name(),
          " (", bytes.size(), " bytes); check that the client uses "
          "llmbridge.proto")),
      rpc::reason::kInvalidRequest);
}

void AnswerUndecodableRequests(
    llmbridge::v1::LocalLLM::CallbackService* service) {
  // Looked up before anything is installed: a missing method stops the
  // start with nothing half done.
  const int complete = HandlerIndex<CompleteRequest, CompleteResponse>("Complete", true);
  const int embed = HandlerIndex<EmbedRequest, EmbedResponse>("Embed", false);
  const int count_tokens =
      HandlerIndex<CountTokensRequest, CountTokensResponse>("CountTokens", false);
  ServiceAccess::SetCallbackHandler(service, complete, new DecodeCheckingHandler(service));
  ServiceAccess::SetCallbackHandler(
      service, embed,
      new UnaryDecodeCheckingHandler<EmbedRequest, EmbedResponse>(
          "Embed", [service](grpc::CallbackServerContext* context,
                             const EmbedRequest* request, EmbedResponse* response) {
            return service->Embed(context, request, response);
          }));
  ServiceAccess::SetCallbackHandler(
      service, count_tokens,
      new UnaryDecodeCheckingHandler<CountTokensRequest, CountTokensResponse>(
          "CountTokens",
          [service](grpc::CallbackServerContext* context,
                    const CountTokensRequest* request, CountTokensResponse* response) {
            return service->CountTokens(context, request, response);
          }));
}

}  // namespace llmbridge::service
