"""The API beyond messages, end to end: typed sampling controls, structured
output, normalised finish reasons, Embed and CountTokens, through a real gRPC
client -> the llmbridge binary -> the real sidecar -> the backend.

Backends: the protocol-faithful Ollama and OpenAI-compatible fakes, run
in-process so each test asserts the exact request JSON the backend got; the
real SmolLM2 (gguf) for structured output, embeddings and token counts; and
a sidecar written to the seed's text, which lacks the new methods."""

from __future__ import annotations

import json
import math
import sys

import grpc
import jsonschema
import pytest

from conftest import ROOT
from test_complete_e2e import TIMEOUT_S, complete, user
from test_service_e2e import error_details

sys.path.insert(0, str(ROOT / "sidecar" / "tests"))
from fake_ollama import FakeOllama, embedding_of  # noqa: E402
from fake_openai import FakeOpenAI, chatml  # noqa: E402

FAKE_SIDECAR = ROOT / "tests" / "cpp" / "testdata" / "fake_sidecar.py"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
# Every typed control, as a client sets it...
CONTROLS = dict(stop=["\n\n", "END"], seed=7, top_p=0.9, top_k=40, min_p=0.05,
                presence_penalty=0.5, frequency_penalty=-0.5, repeat_penalty=1.25)
# ...and as the backends' JSON carries it.
CONTROLS_JSON = {"stop": ["\n\n", "END"], "seed": 7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
                 "presence_penalty": 0.5, "frequency_penalty": -0.5, "repeat_penalty": 1.25}


@pytest.fixture
def ollama():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def openai_fake():
    with FakeOpenAI() as fake:
        yield fake


def stub(pb, server):
    return pb[1].LocalLLMStub(server.channel)


def schema_format(pb, schema=SCHEMA, **kw):
    return pb[0].ResponseFormat(
        json_schema=pb[0].ResponseFormat.JsonSchema(schema=json.dumps(schema), **kw))


def cosine(a, b) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


def invalid_argument(err: grpc.RpcError, *words: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    for word in words:
        assert word in err.details(), err.details()


# ---- typed sampling controls and structured output ---------------------------


def test_ollama_fake_receives_every_control_and_the_schema(pb, start_server, ollama):
    server = start_server("--backend=ollama", f"--host={ollama.host}",
                          "--model=llama3.2:latest")
    from google.protobuf import struct_pb2
    options = struct_pb2.Struct()
    options.update({"seed": 1, "num_ctx": 4096})   # the typed seed wins
    responses = complete(pb, server, messages=user(pb, "Say hello."), max_tokens=50,
                         options=options, response_format=schema_format(pb), **CONTROLS)
    assert "".join(r.content for r in responses) == "Hello from fake Ollama"
    assert ollama.requests == [{
        "model": "llama3.2:latest",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "format": SCHEMA,
        "options": {"num_ctx": 4096, **CONTROLS_JSON, "num_predict": 50},
    }]


@pytest.mark.parametrize("backend", ["llama.cpp", "vllm"])
def test_openai_compatible_fake_receives_every_control(pb, start_server, openai_fake, backend):
    server = start_server(f"--backend={backend}", f"--host={openai_fake.host}",
                          "--model=fake-model")
    complete(pb, server, messages=user(pb, "Say hello."), logit_bias={42: -100, 7: 2.5},
             response_format=schema_format(pb, name="person", strict=True), **CONTROLS)
    controls = dict(CONTROLS_JSON)
    if backend == "vllm":
        controls["repetition_penalty"] = controls.pop("repeat_penalty")
        response_format = {"type": "json_schema", "json_schema": {
            "name": "person", "schema": SCHEMA, "strict": True}}
    else:
        response_format = {"type": "json_object", "schema": SCHEMA}
    assert openai_fake.requests == [{
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **controls,
        "logit_bias": {"7": 2.5, "42": -100.0},
        "response_format": response_format,
    }]


def test_a_control_the_backend_cannot_honour_is_invalid_argument(pb, start_server, ollama):
    server = start_server("--backend=ollama", f"--host={ollama.host}",
                          "--model=llama3.2:latest")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"), logit_bias={42: -100})
    invalid_argument(err.value, "logit_bias", "ollama")
    info, _ = error_details(err.value)
    assert info.metadata["field"] == "logit_bias"
    assert ollama.requests == []


@pytest.mark.parametrize("request_fields, words", [
    ({"top_p": 1.5}, ["top_p: must be between 0 and 1"]),
    ({"stop": [""]}, ["stop[0]: must not be empty"]),
    ({"response_format": "not json"}, ["response_format.json_schema.schema: not valid JSON"]),
    # Valid JSON but not a valid JSON schema: the sidecar's meta-schema check.
    ({"response_format": {"type": "object", "properties": {"n": {"type": "integr"}}}},
     ["response_format.json_schema.schema", "not a valid JSON schema"]),
])
def test_bad_controls_fail_before_any_generation(pb, start_server, ollama, request_fields,
                                                 words):
    server = start_server("--backend=ollama", f"--host={ollama.host}",
                          "--model=llama3.2:latest")
    fields = dict(request_fields)
    if "response_format" in fields:
        schema = fields.pop("response_format")
        text = schema if isinstance(schema, str) else json.dumps(schema)
        fields["response_format"] = pb[0].ResponseFormat(
            json_schema=pb[0].ResponseFormat.JsonSchema(schema=text))
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"), **fields)
    invalid_argument(err.value, *words)
    assert ollama.requests == []


@pytest.mark.parametrize("raw, normal", [("load", "stop"), ("length", "length")])
def test_finish_reason_is_normalised_with_the_raw_one_beside_it(pb, start_server, ollama, raw,
                                                                normal):
    server = start_server("--backend=ollama", f"--host={ollama.host}",
                          "--model=llama3.2:latest")
    last = complete(pb, server, messages=user(pb, f"[[finish:{raw}]]"))[-1]
    assert last.done
    assert (last.finish_reason, last.raw_finish_reason) == (normal, raw)


# ---- Embed and CountTokens on the fakes --------------------------------------


def test_embed_on_the_ollama_fake(pb, start_server, ollama):
    server = start_server("--backend=ollama", f"--host={ollama.host}",
                          "--model=llama3.2:latest")
    texts = ["a cat sat", "stocks fell today again"]
    reply = stub(pb, server).Embed(pb[0].EmbedRequest(inputs=texts, dimensions=4),
                                   timeout=TIMEOUT_S)
    assert ollama.requests == [{"model": "llama3.2:latest", "input": texts, "dimensions": 4}]
    assert [list(e.values) for e in reply.embeddings] == [
        pytest.approx(embedding_of(t, 4), rel=1e-6) for t in texts]
    assert reply.model == "llama3.2:latest"
    assert (reply.usage.input_tokens, reply.usage.total_tokens) == (7, 7)
    with pytest.raises(grpc.RpcError) as err:
        stub(pb, server).Embed(pb[0].EmbedRequest(inputs=["x", ""]), timeout=TIMEOUT_S)
    invalid_argument(err.value, "inputs[1]: must not be empty")


def test_count_tokens_on_the_fakes(pb, start_server, ollama, openai_fake):
    request = pb[0].CountTokensRequest(messages=user(pb, "Say hello."),
                                       system_prompt="Be brief.")
    vllm = start_server("--backend=vllm", f"--host={openai_fake.host}", "--model=fake-model")
    counted = stub(pb, vllm).CountTokens(request, timeout=TIMEOUT_S)
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."}]
    assert openai_fake.requests == [
        {"model": "fake-model", "messages": chat, "add_generation_prompt": True}]
    assert counted.input_tokens == len(chatml(chat).split())
    on_ollama = start_server("--backend=ollama", f"--host={ollama.host}",
                             "--model=llama3.2:latest")
    with pytest.raises(grpc.RpcError) as err:
        stub(pb, on_ollama).CountTokens(request, timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ollama" in err.value.details()
    info, _ = error_details(err.value)
    assert info.reason == "UNSUPPORTED"


def test_a_seed_style_sidecar_answers_the_new_rpcs_unimplemented(pb, start_server, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"env": {"FAKE_SIDECAR_MODE": "seed"}}))
    server = start_server(f"--config={config}", f"--sidecar={FAKE_SIDECAR}",
                          "--backend=ollama", "--model=fake")
    for call, request in [
        (stub(pb, server).Embed, pb[0].EmbedRequest(inputs=["x"])),
        (stub(pb, server).CountTokens, pb[0].CountTokensRequest(messages=user(pb, "x"))),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)  # answered at once; the timeout only bounds a hang
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, err.value
        assert "method not found" in err.value.details()
    # Its completions still work.
    assert complete(pb, server, messages=user(pb, "still fine"))[-1].done


# ---- the real SmolLM2 ---------------------------------------------------------


def test_smollm2_json_schema_output_parses_and_validates(pb, start_server, smollm2_path):
    server = start_server("--backend=gguf")
    responses = complete(pb, server, messages=user(pb, "Invent a person: name and age."),
                         temperature=0, max_tokens=96, response_format=schema_format(pb))
    text = "".join(r.content for r in responses)
    assert responses[-1].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)


def test_smollm2_embeddings_and_token_counts(pb, start_server, smollm2_path):
    server = start_server("--backend=gguf")
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.",
             "Stock markets fell sharply on Tuesday."]
    reply = stub(pb, server).Embed(pb[0].EmbedRequest(inputs=texts), timeout=TIMEOUT_S)
    cat, paraphrase, markets = (list(e.values) for e in reply.embeddings)
    assert [len(v) for v in (cat, paraphrase, markets)] == [576] * 3  # SmolLM2-135M's width
    assert cosine(cat, paraphrase) > cosine(cat, markets)
    assert reply.usage.input_tokens > 0
    # Deterministic: the same request gives the same bits; a text alone
    # rather than in a batch, the same values up to float32 rounding.
    again = stub(pb, server).Embed(pb[0].EmbedRequest(inputs=texts), timeout=TIMEOUT_S)
    assert again == reply
    alone = stub(pb, server).Embed(pb[0].EmbedRequest(inputs=texts[:1]), timeout=TIMEOUT_S)
    assert list(alone.embeddings[0].values) == pytest.approx(cat, abs=1e-5)
    unit = stub(pb, server).Embed(pb[0].EmbedRequest(inputs=texts[:1], normalize=True),
                                  timeout=TIMEOUT_S)
    assert math.fsum(x * x for x in unit.embeddings[0].values) == pytest.approx(1.0, abs=1e-5)

    conversation = dict(messages=[pb[0].Message(role="user", content="What is 2 plus 2?")],
                        system_prompt="You are a math tutor.")
    counted = stub(pb, server).CountTokens(pb[0].CountTokensRequest(**conversation),
                                           timeout=TIMEOUT_S)
    last = complete(pb, server, max_tokens=4, temperature=0, **conversation)[-1]
    assert counted.input_tokens == last.usage.input_tokens > 10


def test_real_llama_cpp_server_constrains_to_the_schema(pb, start_server, llama_cpp_server):
    """llama-cpp-python's server (the real OpenAI-compatible engine that runs
    here) takes the {"type": "json_object", "schema": ...} form the llama.cpp
    backend sends; it has no /apply-template, so CountTokens is UNIMPLEMENTED."""
    server = start_server("--backend=llama.cpp", f"--host={llama_cpp_server}",
                          "--model=smollm2")
    responses = complete(pb, server, messages=user(pb, "Invent a person: name and age."),
                         temperature=0, max_tokens=96, seed=5,
                         response_format=schema_format(pb))
    text = "".join(r.content for r in responses)
    assert responses[-1].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)
    with pytest.raises(grpc.RpcError) as err:
        stub(pb, server).CountTokens(pb[0].CountTokensRequest(messages=user(pb, "Hi")),
                                     timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/apply-template" in err.value.details()


def test_embed_and_count_tokens_route_by_model_name(pb, start_server, tmp_path, ollama):
    """Embed and CountTokens pick their model as Complete does: empty is the
    default model, an entry's name asks its sidecar for the entry's own
    model, another name passes through to a pass-through host unchanged."""
    config = tmp_path / "models.json"
    config.write_text(json.dumps({
        "models": {"echo": {"backend": "echo"},
                   "ollama": {"backend": "ollama", "host": ollama.host,
                              "model": "llama3.2:latest", "pass_through": True}},
        "default_model": "echo"}))
    server = start_server(f"--config={config}")
    api = stub(pb, server)
    by_default = api.Embed(pb[0].EmbedRequest(inputs=["a b"]), timeout=TIMEOUT_S)
    assert len(by_default.embeddings[0].values) == 16  # the echo backend's
    counted = api.CountTokens(pb[0].CountTokensRequest(messages=user(pb, "one two three")),
                              timeout=TIMEOUT_S)
    assert counted.input_tokens == 3  # echo counts words
    api.Embed(pb[0].EmbedRequest(inputs=["x"], model="ollama"), timeout=TIMEOUT_S)
    api.Embed(pb[0].EmbedRequest(inputs=["y"], model="tiny"), timeout=TIMEOUT_S)
    assert [(r["model"], r["input"]) for r in ollama.requests] == [
        ("llama3.2:latest", ["x"]), ("tiny", ["y"])]
    with pytest.raises(grpc.RpcError) as err:
        api.CountTokens(pb[0].CountTokensRequest(messages=user(pb, "x"), model="ollama"),
                        timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
