#!/usr/bin/env bash
# Regenerates llmbridgev1/ (committed) from proto/llmbridge/v1/llmbridge.proto
# with Debian's protoc and the pinned plugins that examples/setup installs.
# Usage: examples/go/generate.sh [OUT_DIR]   (default: examples/go)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$HERE}
PATH="${LLMBRIDGE_CACHE_DIR:-$HOME/.cache/llmbridge}/bin:$PATH"
MODULE=github.com/llmbridge/llmbridge/examples/go
# M maps the proto file to this module's package, whatever its go_package says.
MAP=Mllmbridge/v1/llmbridge.proto=$MODULE/llmbridgev1
protoc -I "$ROOT/proto" -I /usr/include \
  --go_out="$OUT" --go_opt=module=$MODULE --go_opt="$MAP" \
  --go-grpc_out="$OUT" --go-grpc_opt=module=$MODULE --go-grpc_opt="$MAP" \
  llmbridge/v1/llmbridge.proto
