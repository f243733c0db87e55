"""End to end: a real gRPC client -> the llmbridge binary -> the real Python
sidecar -> a real model (SmolLM2 via llama.cpp) or an Ollama fake that speaks
Ollama's exact wire format."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

TIMEOUT_S = 120


def complete(pb, server, **request):
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    return list(stub.Complete(llmbridge_pb2.CompleteRequest(**request), timeout=TIMEOUT_S))


def user(pb, text: str):
    return [pb[0].Message(role="user", content=text)]


def test_real_smollm2_model_streams_an_answer(pb, start_server, smollm2_path):
    server = start_server("--backend=gguf")
    responses = complete(pb, server, messages=user(pb, "Name three colors."),
                         max_tokens=48)

    with_content = [r for r in responses if r.content]
    assert len(with_content) >= 3, responses
    text = "".join(r.content for r in responses)
    assert text.strip(), "the model produced no text"
    last = responses[-1]
    assert last.done
    assert not any(r.done for r in responses[:-1])
    assert last.usage.output_tokens > 0
    assert last.usage.input_tokens > 0
    assert last.usage.total_tokens == last.usage.input_tokens + last.usage.output_tokens
    assert last.finish_reason in ("stop", "length")
    assert last.model


def test_ollama_fake_chunks_arrive_in_order_with_usage(pb, start_server, fake_ollama):
    server = start_server("--backend=ollama", f"--host={fake_ollama}",
                          "--model=llama3.2:latest")
    responses = complete(pb, server, messages=user(pb, "Say hello."))

    # In order; deltas that arrive while a write is in flight are merged.
    assert "".join(r.content for r in responses[:-1]) == "Hello from fake Ollama"
    assert all(r.content for r in responses[:-1])
    last = responses[-1]
    assert last.done and last.content == ""
    assert last.usage.input_tokens == 12   # Ollama's prompt_eval_count
    assert last.usage.output_tokens == 4   # Ollama's eval_count
    assert last.usage.total_tokens == 16
    assert last.finish_reason == "stop"
    assert last.model == "llama3.2:latest"


def test_max_tokens_reaches_ollama_as_num_predict(pb, start_server, fake_ollama):
    server = start_server("--backend=ollama", f"--host={fake_ollama}",
                          "--model=llama3.2:latest")
    responses = complete(pb, server, messages=user(pb, "Say hello."), max_tokens=2)

    assert "".join(r.content for r in responses) == "Hello from"
    assert responses[-1].finish_reason == "length"
    assert responses[-1].usage.output_tokens == 2


def test_unknown_model_is_not_found_naming_the_model(pb, start_server, fake_ollama):
    server = start_server("--backend=ollama", f"--host={fake_ollama}",
                          "--model=llama3.2:latest")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"), model="no-such-model:7b")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model:7b" in err.value.details()


def test_unreachable_backend_is_unavailable(pb, start_server):
    # Port 1 on loopback: nothing listens there, so the connection is refused.
    server = start_server("--backend=ollama", "--host=127.0.0.1:1", "--model=x")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:1" in err.value.details()


@pytest.mark.parametrize("request_fields, field_name", [
    ({}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 9.0}, "temperature"),
])
def test_bad_request_is_invalid_argument_naming_the_field(pb, start_server, fake_ollama,
                                                          request_fields, field_name):
    server = start_server("--backend=ollama", f"--host={fake_ollama}", "--model=tiny")
    fields = dict(request_fields)
    fields["messages"] = [pb[0].Message(**m) for m in fields.get("messages", [])]
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field_name + ":")


def test_health_and_reflection_are_served(pb, start_server, fake_ollama):
    server = start_server("--backend=ollama", f"--host={fake_ollama}", "--model=tiny")
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "llmbridge.v1.LocalLLM"):
        # SERVING once the sidecar has started and its backend answered.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=60)
        assert any(r.status == health_pb2.HealthCheckResponse.SERVING for r in watch)

    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"llmbridge.v1.LocalLLM", "grpc.health.v1.Health"} <= names


def test_capabilities_report_the_running_backend(pb, start_server, fake_ollama):
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    server = start_server("--backend=ollama", f"--host={fake_ollama}", "--model=tiny")
    caps = llmbridge_pb2_grpc.LocalLLMStub(server.channel).GetCapabilities(
        llmbridge_pb2.GetCapabilitiesRequest(), timeout=10)
    assert caps.streaming
    assert caps.backend == "ollama"
    assert caps.model == "tiny"


def test_sigterm_stops_server_and_sidecar(pb, start_server, fake_ollama):
    server = start_server("--backend=ollama", f"--host={fake_ollama}", "--model=tiny")
    complete(pb, server, messages=user(pb, "Hi"))  # the sidecar is running now
    assert server.stop() == 0
    assert any("stopped" in line for line in server.stderr.lines)
