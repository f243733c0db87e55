// The llmbridge.v1.LocalLLM service on gRPC's callback API, forwarding each
// call to the sidecar through rpc_bridge::Client.
//
// Threading: gRPC calls the service on its own threads; stream data arrives
// on the sidecar's reader thread. Each Complete call is one reactor object
// with one write in flight; see complete_reactor.cc.
#ifndef LLMBRIDGE_SERVICE_LOCAL_LLM_SERVICE_H_
#define LLMBRIDGE_SERVICE_LOCAL_LLM_SERVICE_H_

#include "grpcpp/grpcpp.h"
#include "llmbridge/v1/llmbridge.grpc.pb.h"
#include "rpc_bridge/client.h"

namespace llmbridge::service {

class LocalLLMService final : public llmbridge::v1::LocalLLM::CallbackService {
 public:
  // `client` must outlive the service.
  explicit LocalLLMService(rpc::Client* client) : client_(client) {}

  grpc::ServerWriteReactor<llmbridge::v1::CompleteResponse>* Complete(
      grpc::CallbackServerContext* context,
      const llmbridge::v1::CompleteRequest* request) override;

  grpc::ServerUnaryReactor* GetCapabilities(
      grpc::CallbackServerContext* context,
      const llmbridge::v1::GetCapabilitiesRequest* request,
      llmbridge::v1::Capabilities* response) override;

 private:
  rpc::Client* const client_;
};

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_LOCAL_LLM_SERVICE_H_
