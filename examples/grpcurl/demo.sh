#!/usr/bin/env bash
# llmbridge from the command line with grpcurl, through server reflection
# (no .proto files needed):
#   1. list the services and describe LocalLLM and its request;
#   2. stream a completion (one JSON message per chunk, as they arrive);
#   3. make a call that fails (an unknown model) and show its status and the
#      rich error details (google.rpc.ErrorInfo), with the reason picked out.
#
# Usage: examples/grpcurl/demo.sh [ADDRESS]   (default: $LLMBRIDGE_ADDRESS or 127.0.0.1:50051)
# grpcurl: $GRPCURL, else the pinned one examples/setup installs, else grpcurl on PATH.
# With $LLMBRIDGE_TOKEN set, every call sends `authorization: Bearer <token>`
# (for a server started with --auth_token_file); the demo shows it as $LLMBRIDGE_TOKEN.
set -euo pipefail
ADDRESS=${1:-${LLMBRIDGE_ADDRESS:-127.0.0.1:50051}}
PINNED=${LLMBRIDGE_CACHE_DIR:-$HOME/.cache/llmbridge}/bin/grpcurl
if [ -z "${GRPCURL:-}" ]; then
  if [ -x "$PINNED" ]; then GRPCURL=$PINNED
  elif command -v grpcurl >/dev/null; then GRPCURL=grpcurl
  else
    echo "grpcurl not found: run examples/setup, or" >&2
    echo "  go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3" >&2
    exit 1
  fi
fi
# -H sends the header on the calls and on reflection (when the server
# protects reflection too: --auth_reflection=false).
auth=()
shown_auth=()
if [ -n "${LLMBRIDGE_TOKEN:-}" ]; then
  auth=(-H "authorization: Bearer $LLMBRIDGE_TOKEN")
  shown_auth=(-H "'authorization: Bearer \$LLMBRIDGE_TOKEN'")
fi
show() { printf '$ grpcurl %s\n' "$*"; }
grpcurl() { "$GRPCURL" "${auth[@]}" "$@"; }

echo "== list"
show "${shown_auth[@]}" -plaintext "$ADDRESS" list
grpcurl -plaintext "$ADDRESS" list

echo "== describe"
show "${shown_auth[@]}" -plaintext "$ADDRESS" describe llmbridge.v1.LocalLLM
grpcurl -plaintext "$ADDRESS" describe llmbridge.v1.LocalLLM
show "${shown_auth[@]}" -plaintext "$ADDRESS" describe llmbridge.v1.CompleteRequest
grpcurl -plaintext "$ADDRESS" describe llmbridge.v1.CompleteRequest

echo "== Complete (streaming)"
request='{"messages": [{"role": "user", "content": "Say hello."}]}'
show "${shown_auth[@]}" -plaintext -d "'$request'" "$ADDRESS" llmbridge.v1.LocalLLM/Complete
grpcurl -plaintext -d "$request" "$ADDRESS" llmbridge.v1.LocalLLM/Complete

echo "== Complete with an unknown model (fails)"
request='{"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]}'
show "${shown_auth[@]}" -plaintext -d "'$request'" "$ADDRESS" llmbridge.v1.LocalLLM/Complete
# On an error status grpcurl prints it (and its details) to stderr and exits
# with 64 + the status code.
if output=$(grpcurl -plaintext -d "$request" "$ADDRESS" llmbridge.v1.LocalLLM/Complete 2>&1); then
  echo "$output"
  echo "the call with an unknown model succeeded" >&2
  exit 1
else
  rc=$?
fi
echo "$output"
echo "grpcurl exit status: $rc (64 + the gRPC code)"
reason=$(sed -n 's/.*"reason": *"\([^"]*\)".*/\1/p' <<<"$output" | head -n 1)
echo "reason: ${reason:-<none>}"
if grep -q 'is not recognized' <<<"$output"; then
  echo "(the server's reflection does not know the detail types; decode one with" \
       "echo <@value> | base64 -d | protoc --decode_raw)"
fi
