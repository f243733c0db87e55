#!/usr/bin/env python3
"""llmbridge example client in Python (grpcio).

1. Streams a completion and prints the text as it arrives, then the usage.
2. Makes a call that fails (an unknown model) and prints the gRPC status code
   and the ErrorInfo reason from the rich error details (google.rpc.Status in
   the grpc-status-details-bin trailer).

Usage: client.py [ADDRESS]   (default: $LLMBRIDGE_ADDRESS or 127.0.0.1:50051)
With $LLMBRIDGE_TOKEN set, every call sends `authorization: Bearer <token>`
(for a server started with --auth_token_file).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
TIMEOUT_S = 60


def auth_metadata() -> list[tuple[str, str]]:
    """The bearer token from $LLMBRIDGE_TOKEN, as call metadata. Over a
    plaintext channel it crosses the network readable: use TLS beyond
    loopback or a pod."""
    token = os.environ.get("LLMBRIDGE_TOKEN")
    return [("authorization", f"Bearer {token}")] if token else []


def load_stubs():
    """Generates llmbridge_pb2 and llmbridge_pb2_grpc from proto/ and imports them."""
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/struct.proto
    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{well_known}",
                          f"--python_out={out}", f"--grpc_python_out={out}",
                          str(PROTO_DIR / "llmbridge" / "v1" / "llmbridge.proto")])
        if rc != 0:
            sys.exit("protoc failed on llmbridge.proto")
        sys.path.insert(0, out)
        pb2 = importlib.import_module("llmbridge.v1.llmbridge_pb2")
        pb2_grpc = importlib.import_module("llmbridge.v1.llmbridge_pb2_grpc")
        sys.path.remove(out)
    return pb2, pb2_grpc


def stream_completion(pb2, stub) -> None:
    print("== Complete (streaming)")
    request = pb2.CompleteRequest(messages=[pb2.Message(role="user", content="Say hello.")])
    for response in stub.Complete(request, timeout=TIMEOUT_S, metadata=auth_metadata()):
        print(response.content, end="", flush=True)  # each text delta as it arrives
        if response.done:
            u = response.usage
            print(f"\nusage: input_tokens={u.input_tokens} output_tokens={u.output_tokens} "
                  f"total_tokens={u.total_tokens}")
            print(f"finish_reason: {response.finish_reason}  model: {response.model}")


def print_error(err: grpc.RpcError) -> None:
    print(f"code: {err.code().name}")
    print(f"message: {err.details()}")
    status = rpc_status.from_call(err)  # google.rpc.Status, or None without details
    reason = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            print(f"domain: {info.domain}")
            print("metadata: " + " ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())))
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            print(f"retry after: {retry.retry_delay.ToTimedelta().total_seconds()}s")
    print(f"reason: {reason or '<none>'}")


def failing_call(pb2, stub) -> None:
    print("== Complete with an unknown model (fails)")
    request = pb2.CompleteRequest(model="no-such-model",
                                  messages=[pb2.Message(role="user", content="Hi")])
    try:
        for _ in stub.Complete(request, timeout=TIMEOUT_S, metadata=auth_metadata()):
            pass
    except grpc.RpcError as err:
        print_error(err)
        return
    sys.exit("the call with an unknown model succeeded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?",
                        default=os.environ.get("LLMBRIDGE_ADDRESS", "127.0.0.1:50051"))
    args = parser.parse_args()

    pb2, pb2_grpc = load_stubs()
    with grpc.insecure_channel(args.address) as channel:
        stub = pb2_grpc.LocalLLMStub(channel)
        try:
            stream_completion(pb2, stub)
        except grpc.RpcError as err:
            print()
            print_error(err)
            sys.exit(1)
        failing_call(pb2, stub)


if __name__ == "__main__":
    main()
