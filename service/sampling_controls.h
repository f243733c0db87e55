// The typed sampling controls and the response format of a CompleteRequest
// (stop, seed, top_p, ..., response_format), checked and copied into the
// sidecar's CompleteParams. Ranges are checked here, for every backend
// alike; whether a backend can honour a control is the sidecar's call
// (INVALID_ARGUMENT naming the field and the backend when it cannot).
#ifndef LLMBRIDGE_SERVICE_SAMPLING_CONTROLS_H_
#define LLMBRIDGE_SERVICE_SAMPLING_CONTROLS_H_

#include <cstddef>

#include "absl/status/status.h"
#include "llmbridge/v1/llmbridge.pb.h"
#include "rpc_bridge/protocol.h"

namespace llmbridge::service {

struct SamplingLimits {
  int max_stop_strings = 16;
  size_t max_stop_bytes = 1024;  // each
  int max_logit_bias = 1024;     // entries
  // The JSON schema's text, and how deeply its objects and arrays nest.
  size_t max_schema_bytes = 64 * 1024;
  int max_schema_depth = 64;
};

// Copies the controls `request` sets into `params`; INVALID_ARGUMENT naming
// the field (e.g. "top_p: must be between 0 and 1, got 1.5") otherwise.
// Adds the bytes of the stop strings and the schema to `text_bytes`, which
// the caller holds against --max_request_bytes.
absl::Status AddSamplingControls(const llmbridge::v1::CompleteRequest& request,
                                 const SamplingLimits& limits,
                                 rpc::CompleteParams& params, size_t& text_bytes);

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_SAMPLING_CONTROLS_H_
