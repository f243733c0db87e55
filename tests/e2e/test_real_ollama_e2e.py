"""llmbridge against the real Ollama (v0.17.4, built from source by
scripts/setup) serving SmolLM2 imported from its GGUF: a real gRPC client ->
the llmbridge binary -> the sidecar -> `ollama serve` -> its model runner.

The protocol-faithful fake (sidecar/tests/fake_ollama.py) stays for what a
real Ollama cannot be made to do on demand (HTTP 500, a stream broken
midway, a hang) and for tool calls (SmolLM2's template has no tools); what
Ollama really does is checked here.
"""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from real_engines import (
    GREEDY,
    MODEL,
    assert_max_tokens_ends_with_length,
    assert_streams_the_direct_answer,
    cancel_mid_generation,
    struct,
)
from test_api_e2e import SCHEMA, schema_format
from test_complete_e2e import complete, user
from test_mcp_e2e import mcp_config, sdk_test_server, stream_with_tools
from test_service_e2e import error_details, wait_serving

# Ollama's request log (gin) prints one line per finished request.
CHAT_REQUEST_DONE = r'\[GIN\].*\|\s*POST\s+"/api/chat"'
# How long Ollama may take to notice a cancelled stream: a bound on waiting,
# not a speed requirement.
CANCEL_NOTICED_WITHIN_S = 30


def serve(start_server, ollama, *flags):
    return start_server("--backend=ollama", f"--host={ollama.host}", f"--model={MODEL}",
                        *flags)


def test_real_ollama_streams_with_usage_from_its_own_counts(pb, start_server, real_ollama):
    prompt = "Name three colors."
    # What Ollama itself answers to the same request, unstreamed.
    status, direct = real_ollama.post("/api/chat", {
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": False,
        "options": {**GREEDY, "num_predict": 24}})
    assert status == 200, direct

    server = serve(start_server, real_ollama)
    responses = complete(pb, server, messages=user(pb, prompt), max_tokens=24,
                         temperature=GREEDY["temperature"], options=struct(seed=GREEDY["seed"]))

    assert_streams_the_direct_answer(
        responses, content=direct["message"]["content"],
        input_tokens=direct["prompt_eval_count"], output_tokens=direct["eval_count"],
        finish_reason=direct["done_reason"], model=direct["model"])


def test_real_ollama_max_tokens_ends_with_length(pb, start_server, real_ollama):
    server = serve(start_server, real_ollama)
    assert_max_tokens_ends_with_length(pb, server)


def test_real_ollama_unknown_model_is_not_found_with_the_pull_hint(pb, start_server,
                                                                   real_ollama):
    server = serve(start_server, real_ollama)
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"), model="no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ollama pull no-such-model" in err.value.details()
    info, retry = error_details(err.value)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["http_status"] == "404"
    assert retry is None


def test_real_ollama_unknown_server_model_is_not_found_naming_what_is_pulled(
        pb, start_server, real_ollama):
    server = start_server("--backend=ollama", f"--host={real_ollama.host}",
                          "--model=no-such-model")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ollama pull no-such-model" in err.value.details()
    assert f"{MODEL}:latest" in err.value.details()  # what is there instead


def test_real_ollama_client_cancel_ends_ollamas_own_request(pb, start_server, real_ollama):
    server = serve(start_server, real_ollama)
    wait_serving(server)
    at_cancel = cancel_mid_generation(pb, server, real_ollama, CHAT_REQUEST_DONE)
    # Ollama's own request ends: the sidecar closed the HTTP stream.
    real_ollama.log.wait_for(CHAT_REQUEST_DONE, since=at_cancel, timeout=CANCEL_NOTICED_WITHIN_S)


def test_real_ollama_tools_offered_to_a_model_without_tool_support_is_invalid_argument(
        pb, start_server, real_ollama, tmp_path):
    # SmolLM2's chat template (as Ollama imports it) has no tools section:
    # Ollama answers HTTP 400 {"error": "registry.ollama.ai/library/
    # smollm2:latest does not support tools"}.
    server = serve(start_server, real_ollama, mcp_config(tmp_path, {"test": sdk_test_server()}))
    with pytest.raises(grpc.RpcError) as err:
        stream_with_tools(pb, server, "What is 2 + 3?", max_tokens=16)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # What is wrong, and the field to change.
    assert "does not support tools" in err.value.details()
    assert "use_tools" in err.value.details()
    info, retry = error_details(err.value)
    assert info.reason == "INVALID_REQUEST"
    assert info.metadata["field"] == "use_tools"
    assert info.metadata["http_status"] == "400"
    assert retry is None  # the same request fails the same way


def next_status(watch, wanted):
    """Reads a health Watch until it reports ``wanted``."""
    for reply in watch:
        if reply.status == wanted:
            return
    raise AssertionError(f"the health watch ended before {wanted}")


def test_real_ollama_health_follows_ollama_stopping_and_restarting(pb, start_server,
                                                                   restartable_ollama):
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    server = serve(start_server, restartable_ollama, "--health_interval=200ms")
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(
        health_pb2.HealthCheckRequest(service="llmbridge.v1.LocalLLM"), timeout=180)
    next_status(watch, serving)

    restartable_ollama.stop()
    next_status(watch, not_serving)
    restartable_ollama.start()
    next_status(watch, serving)
    watch.cancel()

    responses = complete(pb, server, messages=user(pb, "Hi"), max_tokens=4)
    assert responses[-1].done and responses[-1].usage.output_tokens > 0


# ---- [api] against Ollama's real `format` and `options` handling ------------


def test_real_ollama_json_schema_output_parses_and_validates(pb, start_server, real_ollama):
    server = serve(start_server, real_ollama)
    responses = complete(pb, server, messages=user(pb, "Invent a person: name and age."),
                         temperature=0, max_tokens=96, response_format=schema_format(pb))
    text = "".join(r.content for r in responses)
    assert responses[-1].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)


def test_real_ollama_typed_seed_and_stop_are_honoured(pb, start_server, real_ollama):
    server = serve(start_server, real_ollama)
    ask = dict(messages=user(pb, "Count from one to twenty in words, comma separated."),
               max_tokens=48, temperature=1.0, top_k=40, top_p=0.95, seed=11)
    first = "".join(r.content for r in complete(pb, server, **ask))
    again = "".join(r.content for r in complete(pb, server, **ask))
    # Ollama's own sampler, seeded through the typed field: the same text.
    assert first == again and first
    # A stop string (Ollama's options.stop) ends the same seeded answer just
    # before the stop string's first place in it.
    words = first.split()
    assert len(words) >= 3, first
    stop = words[2]
    stopped = complete(pb, server, **{**ask, "stop": [stop]})
    text = "".join(r.content for r in stopped)
    assert text == first[:first.index(stop)], (stop, first, text)
    assert stopped[-1].finish_reason == "stop"
