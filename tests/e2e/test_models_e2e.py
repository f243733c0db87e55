"""Many models behind one server, on the real binary: routing by model name,
pass-through to an Ollama host, ListModels, load on demand, keep_alive
unloads, --max_loaded_models eviction, per-model health and metrics.

The models are the real SmolLM2 (gguf, in the sidecar), the echo backend,
and the protocol-faithful Ollama fake."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ROOT
from test_complete_e2e import TIMEOUT_S, complete, user
from test_service_e2e import error_details

sys.path.insert(0, str(ROOT / "sidecar" / "tests"))
from fake_ollama import FakeOllama  # noqa: E402

# Small contexts: several SmolLM2 instances may be loaded at once.
SMALL = {"n_ctx": 512}


@pytest.fixture
def ollama():
    with FakeOllama() as fake:
        yield fake


def serve(start_server, tmp_path: Path, config: dict, *flags: str):
    path = tmp_path / "models.json"
    path.write_text(json.dumps(config))
    return start_server(f"--config={path}", "--metrics_listen=127.0.0.1:0", *flags)


def text_of(responses) -> str:
    return "".join(r.content for r in responses)


def list_models(pb, server) -> dict:
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    reply = stub.ListModels(llmbridge_pb2.ListModelsRequest(), timeout=TIMEOUT_S)
    return {m.name: m for m in reply.models}


def health(server, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def wait_event(server, event: str, model: str) -> dict:
    """The next log event `event` about `model` (waits on the log, no sleeps)."""
    match = server.stderr.wait_for(
        rf'^\{{.*"event":"{re.escape(event)}".*"model":"{re.escape(model)}"')
    return json.loads(match.string)


def test_requests_route_by_model_name_and_unknown_names_list_the_served_ones(
        pb, start_server, tmp_path):
    server = serve(start_server, tmp_path, {
        "models": {"smollm2": {"backend": "gguf", "options": SMALL},
                   "echo": {"backend": "echo"}},
        "default_model": "echo"})
    # The default model (no name) and a named one.
    assert text_of(complete(pb, server, messages=user(pb, "one two three"))) == "one two three"
    assert text_of(complete(pb, server, model="echo",
                            messages=user(pb, "four five"))) == "four five"
    answer = complete(pb, server, model="smollm2", messages=user(pb, "Say hello."),
                      max_tokens=8)
    assert answer[-1].done and answer[-1].usage.output_tokens > 0
    assert text_of(answer) != "Say hello."  # a real model, not the echo

    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, model="gpt-4", messages=user(pb, "hi"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt-4" in err.value.details()
    assert "served models: echo, smollm2" in err.value.details()
    info, retry = error_details(err.value)
    assert info.reason == "MODEL_NOT_FOUND" and retry is None


def test_a_pass_through_entry_serves_every_model_of_its_host(pb, start_server, tmp_path,
                                                             ollama):
    server = serve(start_server, tmp_path, {
        "models": {"echo": {"backend": "echo"},
                   "ollama": {"backend": "ollama", "host": ollama.host,
                              "model": "llama3.2:latest", "pass_through": True}},
        "default_model": "echo"})
    # "tiny" is no entry's name: it goes to the Ollama host unchanged.
    answer = complete(pb, server, model="tiny", messages=user(pb, "hi"))
    assert answer[-1].done and answer[-1].model == "tiny"
    # The entry's own name means its configured model.
    answer = complete(pb, server, model="ollama", messages=user(pb, "hi"))
    assert answer[-1].model == "llama3.2:latest"
    # A name the host does not have: the host's own NOT_FOUND, with its hint.
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, model="nope:7b", messages=user(pb, "hi"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ollama pull" in err.value.details()

    models = list_models(pb, server)
    assert models["ollama"].pass_through and models["ollama"].state == "loaded"
    host_models = {m.name for m in models["ollama"].host_models}
    assert {"llama3.2:latest", "tiny"} <= host_models


def test_list_models_reports_state_and_loads_on_demand(pb, start_server, tmp_path):
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    server = serve(start_server, tmp_path, {
        "models": {"echo": {"backend": "echo"},
                   "smollm2": {"backend": "gguf", "options": SMALL}},
        "default_model": "echo"})
    wait_event(server, "sidecar_ready", "echo")
    models = list_models(pb, server)
    assert set(models) == {"echo", "smollm2"}
    assert models["echo"].is_default and models["echo"].state == "loaded"
    assert models["echo"].sidecars_running == 1
    # Not the default, in-process: loads on first use, and listing it
    # does not load it.
    smollm2 = models["smollm2"]
    assert smollm2.state == "idle" and smollm2.sidecars_running == 0
    assert smollm2.backend == "gguf" and not smollm2.is_default
    assert smollm2.keep_alive_ms == 5 * 60 * 1000
    assert list_models(pb, server)["smollm2"].state == "idle"
    # Its health is SERVING while unloaded: a request would load it.
    assert health(server, "llmbridge.v1.LocalLLM/smollm2") == health_pb2.HealthCheckResponse.SERVING
    # Capabilities of an idle model do not load it either.
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    caps = stub.GetCapabilities(llmbridge_pb2.GetCapabilitiesRequest(model="smollm2"),
                                timeout=TIMEOUT_S)
    assert caps.backend == "gguf"
    assert list_models(pb, server)["smollm2"].state == "idle"

    complete(pb, server, model="smollm2", messages=user(pb, "Say hi."), max_tokens=4)
    smollm2 = list_models(pb, server)["smollm2"]
    assert smollm2.state == "loaded" and smollm2.sidecars_running == 1
    # What the sidecar reports about the loaded GGUF model.
    assert smollm2.details.context_length > 0

    with pytest.raises(grpc.RpcError) as err:
        stub.GetCapabilities(llmbridge_pb2.GetCapabilitiesRequest(model="nope"),
                             timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_keep_alive_unloads_an_idle_model_and_the_next_request_loads_it(
        pb, start_server, tmp_path):
    server = serve(start_server, tmp_path, {
        "models": {"echo": {"backend": "echo"},
                   "smollm2": {"backend": "gguf", "options": SMALL, "keep_alive": "1s"}},
        "default_model": "echo"})
    complete(pb, server, model="smollm2", messages=user(pb, "Say hi."), max_tokens=4)
    unloaded = wait_event(server, "sidecar_unloaded", "smollm2")
    assert unloaded["why"] == "keep_alive"
    assert list_models(pb, server)["smollm2"].state == "idle"
    answer = complete(pb, server, model="smollm2", messages=user(pb, "Say hi."), max_tokens=4)
    assert answer[-1].done
    assert list_models(pb, server)["smollm2"].state == "loaded"


def test_max_loaded_models_evicts_the_least_recently_used_idle_model(
        pb, start_server, tmp_path):
    server = serve(start_server, tmp_path, {
        "models": {"echo": {"backend": "echo"},
                   "smol-a": {"backend": "gguf", "options": SMALL},
                   "smol-b": {"backend": "gguf", "options": SMALL}},
        "default_model": "echo", "max_loaded_models": 1})
    complete(pb, server, model="smol-a", messages=user(pb, "Say hi."), max_tokens=4)
    assert list_models(pb, server)["smol-a"].state == "loaded"
    # Loading B needs A's place: A (idle) is unloaded first.
    complete(pb, server, model="smol-b", messages=user(pb, "Say hi."), max_tokens=4)
    evicted = wait_event(server, "sidecar_unloaded", "smol-a")
    assert evicted["why"] == "unload"
    models = list_models(pb, server)
    assert models["smol-a"].state == "idle" and models["smol-b"].state == "loaded"
    # The HTTP-like echo entry does not count against the bound.
    assert models["echo"].state == "loaded"

    # Per-model metrics, labelled with the configured names only.
    port = server.started["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'llmbridge_sidecar_starts_total{model="smol-a"} 1' in text
    assert 'llmbridge_sidecars_ready{model="smol-b"} 1' in text
    assert 'model="nope"' not in text


def test_each_model_has_a_health_service(pb, start_server, tmp_path, ollama):
    server = serve(start_server, tmp_path, {
        "models": {"echo": {"backend": "echo"},
                   "ollama": {"backend": "ollama", "host": ollama.host,
                              "model": "llama3.2:latest"}},
        "default_model": "echo"})
    # Both models start at once, in either order.
    ready: set[str] = set()
    while ready != {"echo", "ollama"}:
        ready.add(json.loads(server.stderr.wait_for(r'^\{.*"event":"sidecar_ready"').string)[
            "model"])
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health(server, "") == serving
    assert health(server, "llmbridge.v1.LocalLLM") == serving
    assert health(server, "llmbridge.v1.LocalLLM/echo") == serving
    assert health(server, "llmbridge.v1.LocalLLM/ollama") == serving
    with pytest.raises(grpc.RpcError) as err:
        health(server, "llmbridge.v1.LocalLLM/nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
