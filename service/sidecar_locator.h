// Finds the sidecar shipped with the server binary, for the --sidecar default.
#ifndef LLMBRIDGE_SERVICE_SIDECAR_LOCATOR_H_
#define LLMBRIDGE_SERVICE_SIDECAR_LOCATOR_H_

#include <string>

namespace llmbridge::service {

// The first existing of:
//   $RUNFILES_DIR/llmbridge/sidecar/sidecar.py      (bazel run / bazel test)
//   <binary>.runfiles/llmbridge/sidecar/sidecar.py  (bazel-bin/service/...)
//   <binary dir>/../share/llmbridge/sidecar/sidecar.py  (installed layout)
// or "" when none exists.
std::string ShippedSidecarPath();

}  // namespace llmbridge::service

#endif  // LLMBRIDGE_SERVICE_SIDECAR_LOCATOR_H_
