"""Input from clients the server cannot trust, on the real binary: request
bytes gRPC cannot decode, the documented request limits, and a log reader
that stops reading (stderr must never stall request processing)."""

from __future__ import annotations

import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ROOT, SERVER_BINARY, SIDECAR
from real_engines import free_port
from test_service_e2e import MODEL, error_details, ollama  # noqa: F401 (a fixture)

COMPLETE = "/llmbridge.v1.LocalLLM/Complete"


def raw_complete(channel: grpc.Channel, payload: bytes) -> grpc.RpcError:
    """Sends `payload` as the request bytes, exactly, and returns the error."""
    call = channel.unary_stream(COMPLETE, request_serializer=None,
                                response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        list(call(payload, timeout=30))
    return err.value


def request_bytes(pb, content: str = "Hello") -> bytes:
    llmbridge_pb2, _ = pb
    return llmbridge_pb2.CompleteRequest(
        messages=[llmbridge_pb2.Message(role="user", content="first"),
                  llmbridge_pb2.Message(role="user", content=content)]).SerializeToString()


# --- bytes gRPC cannot decode ---------------------------------------------------

def test_truncated_request_is_invalid_argument_saying_so(pb, start_server, ollama):
    server = start_server("--backend=ollama", f"--host={ollama.host}", f"--model={MODEL}")
    err = raw_complete(server.channel, request_bytes(pb)[:-3])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "not a valid llmbridge.v1.CompleteRequest" in err.details()
    assert "truncated or corrupt" in err.details()
    info, _ = error_details(err)
    assert info.reason == "INVALID_REQUEST"
    assert ollama.requests == []


def test_invalid_utf8_names_the_field(pb, start_server, ollama):
    server = start_server("--backend=ollama", f"--host={ollama.host}", f"--model={MODEL}")
    payload = request_bytes(pb, "Hello").replace(b"Hello", b"H\xffllo")
    err = raw_complete(server.channel, payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details().startswith("messages[1].content: not valid UTF-8"), err.details()
    # The server keeps serving well-formed requests.
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    replies = list(llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
        llmbridge_pb2.CompleteRequest(messages=[llmbridge_pb2.Message(role="user",
                                                                      content="Hi")]),
        timeout=60))
    assert replies[-1].done


def raw_unary(channel: grpc.Channel, method: str, payload: bytes) -> grpc.RpcError:
    """Sends `payload` as a unary request's bytes, exactly; returns the error."""
    call = channel.unary_unary(f"/llmbridge.v1.LocalLLM/{method}",
                               request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        call(payload, timeout=30)
    return err.value


def test_undecodable_embed_and_count_tokens_are_invalid_argument(pb, start_server, ollama):
    server = start_server("--backend=ollama", f"--host={ollama.host}", f"--model={MODEL}")
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    embed = llmbridge_pb2.EmbedRequest(inputs=["first", "Hello"]).SerializeToString()
    err = raw_unary(server.channel, "Embed", embed.replace(b"Hello", b"H\xffllo"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details().startswith("inputs[1]: not valid UTF-8"), err.details()
    assert error_details(err)[0].reason == "INVALID_REQUEST"

    count = llmbridge_pb2.CountTokensRequest(
        messages=[llmbridge_pb2.Message(role="user", content="Hello")]).SerializeToString()
    err = raw_unary(server.channel, "CountTokens", count[:-2])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "not a valid llmbridge.v1.CountTokensRequest" in err.details(), err.details()
    assert ollama.requests == []

    # Decodable requests still reach the service (here: Embed, answered by the fake).
    reply = llmbridge_pb2_grpc.LocalLLMStub(server.channel).Embed(
        llmbridge_pb2.EmbedRequest(inputs=["Hello"]), timeout=60)
    assert len(reply.embeddings) == 1 and len(reply.embeddings[0].values) > 0


def test_undecodable_unary_requests_still_get_grpcs_unimplemented(pb, start_server, ollama):
    """Pinned limitation: Complete, Embed and CountTokens are decoded by
    llmbridge itself. GetCapabilities and ListTools take empty messages, so only bytes that are
    not protobuf at all fail there, and gRPC 1.51 answers those with
    UNIMPLEMENTED and no message (service/request_decoding.h)."""
    server = start_server("--backend=ollama", f"--host={ollama.host}", f"--model={MODEL}")
    call = server.channel.unary_unary("/llmbridge.v1.LocalLLM/GetCapabilities",
                                      request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        call(b"\x0a\x05ab", timeout=30)  # a length-delimited field cut short
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() in ("", None)


# --- request limits -----------------------------------------------------------------

def test_request_limits_refuse_before_the_backend(pb, start_server, ollama):
    from google.protobuf import struct_pb2

    server = start_server("--backend=ollama", f"--host={ollama.host}", f"--model={MODEL}")
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    hello = [llmbridge_pb2.Message(role="user", content="Hi")]

    deep = struct_pb2.Struct()  # 33 levels: one past the limit (protobuf allows ~50)
    at = deep
    for _ in range(33):
        at = at.fields["n"].struct_value
    cases = [
        (llmbridge_pb2.CompleteRequest(messages=hello * 5000), "messages: 5000 messages"),
        (llmbridge_pb2.CompleteRequest(messages=hello, options=deep), "options: nested"),
        (llmbridge_pb2.CompleteRequest(messages=hello, max_tool_iterations=1000),
         "max_tool_iterations: must be between 0"),
        (llmbridge_pb2.CompleteRequest(messages=hello, model="m" * 5000), "model: 5000 bytes"),
    ]
    big = struct_pb2.Struct()
    big.fields["stop"].string_value = "s" * 100_000
    cases.append((llmbridge_pb2.CompleteRequest(messages=hello, options=big), "options: "))
    for request, prefix in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Complete(request, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, prefix
        assert err.value.details().startswith(prefix), err.value.details()
        assert "limit" in err.value.details() or "between" in err.value.details()
    assert ollama.requests == []


# --- a stderr nobody reads --------------------------------------------------------

def test_a_stalled_stderr_does_not_stall_requests(pb):
    """Before: every log line was a write(2) on the request path, so once
    the pipe's 64 KiB were full (about 200 calls) requests stopped. Now the
    lines that do not fit are dropped and counted, and reported once the
    reader is back."""
    port = free_port()
    process = subprocess.Popen(
        [str(SERVER_BINARY), f"--listen=127.0.0.1:{port}", f"--python={sys.executable}",
         f"--sidecar={SIDECAR}", "--backend=echo", "--log_prompts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        health = health_pb2_grpc.HealthStub(channel)
        llmbridge_pb2, llmbridge_pb2_grpc = pb
        stub = llmbridge_pb2_grpc.LocalLLMStub(channel)
        # A long prompt, logged in full (--log_prompts): a few calls fill the pipe.
        prompt = "word " * 8000
        request = llmbridge_pb2.CompleteRequest(
            messages=[llmbridge_pb2.Message(role="user", content=prompt)], max_tokens=2)
        for i in range(200):
            replies = list(stub.Complete(request, timeout=30))
            assert replies[-1].done, i
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)

        # The reader comes back: the server says how many lines it lost.
        found = threading.Event()
        seen: list[bytes] = []

        def drain() -> None:
            for line in process.stderr:
                seen.append(line)
                if b'"event":"log_lines_dropped"' in line:
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        # One more call after the reader is back: its lines carry the report.
        list(stub.Complete(request, timeout=30))
        assert found.wait(30), b"".join(seen[-5:])
        channel.close()
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
