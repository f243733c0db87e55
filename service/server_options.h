// gRPC server settings for running many replicas: how long a client's
// connection may live. gRPC sends every call of a connection to the replica
// it first reached, so a long-lived client never spreads its calls over
// replicas added later. With a maximum age the server sends GOAWAY once the
// connection is that old (gRPC adds +-10% jitter); the client finishes its
// calls on it, resolves the name again and connects anew, reaching new
// replicas (docs/deployment.md, "Load balancing gRPC").
#ifndef LLMBRIDGE_SERVICE_SERVER_OPTIONS_H_
#define LLMBRIDGE_SERVICE_SERVER_OPTIONS_H_

#include <chrono>

#include "absl/status/status.h"
#include "grpcpp/server_builder.h"

namespace llmbridge::service {

struct ConnectionAge {
  // 0: connections live as long as the client keeps them.
  std::chrono::milliseconds max_age{0};
  // After GOAWAY, how long calls in flight on the old connection may still
  // run before it is closed. 0: no limit (each call is bounded by its
  // deadline or --request_timeout anyway).
  std::chrono::milliseconds grace{0};
};

// INVALID_ARGUMENT naming the flag for negative or out-of-range values, or
// a grace without an age.
absl::Status ValidateConnectionAge(const ConnectionAge& age);

// Sets GRPC_ARG_MAX_CONNECTION_AGE_MS / _GRACE_MS on the builder when an
// age is set; a valid `age` is assumed.
void ApplyConnectionAge(const ConnectionAge& age, grpc::ServerBuilder* builder);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_SERVER_OPTIONS_H_
