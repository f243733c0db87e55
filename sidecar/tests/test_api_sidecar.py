"""The typed sampling controls, structured output, finish reasons, ``embed``
and ``count_tokens`` in the real sidecar process, against the
protocol-faithful fakes of Ollama and the OpenAI-compatible servers (each
test asserts the exact request JSON the fake received) and the echo backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import SidecarProcess
from fake_ollama import FakeOllama, embedding_of
from fake_openai import PROMPT_TOKENS, FakeOpenAI, chatml

USER = [{"role": "user", "content": "Say hello"}]
# Every typed control, as the bridge sends them.
EVERY_CONTROL: dict[str, Any] = {
    "stop": ["\n\n", "END"],
    "seed": 7,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.05,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "repeat_penalty": 1.1,
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(params=["llama.cpp", "vllm"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def init(sc: SidecarProcess, backend: str, host: str = "", model: str = "") -> None:
    reply = await sc.call("init", {"backend": backend, "model": model, "host": host})
    assert reply["result"]["ready"] is True, reply


async def init_ollama(sc: SidecarProcess, fake: FakeOllama) -> None:
    await init(sc, "ollama", fake.host, "llama3.2:latest")


async def init_openai(sc: SidecarProcess, flavor: str, fake: FakeOpenAI) -> None:
    await init(sc, flavor, fake.host, "fake-model")


def invalid_params(reply: dict[str, Any], field: str, *words: str) -> str:
    """The -32602 message naming ``field`` (and each of ``words``)."""
    assert "result" not in reply, reply
    err = reply["error"]
    assert err["code"] == -32602, err
    assert err["data"]["field"] == field, err
    for word in (field, *words):
        assert word in err["message"], err
    return str(err["message"])


# ---- typed sampling controls -------------------------------------------------


async def test_ollama_gets_every_control_in_its_options(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama)
    reply = await sidecar.call(
        "complete",
        {
            "messages": USER,
            "max_tokens": 100,
            # A typed control wins over the same key in options.
            "options": {"seed": 1, "top_k": 1, "num_ctx": 4096},
            **EVERY_CONTROL,
        },
    )
    assert reply["result"]["finish_reason"] == "stop", reply
    assert fake_ollama.requests == [
        {
            "model": "llama3.2:latest",
            "messages": USER,
            "stream": True,
            "options": {"num_ctx": 4096, **EVERY_CONTROL, "num_predict": 100},
        }
    ]


async def test_ollama_refuses_logit_bias_naming_field_and_backend(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama)
    reply = await sidecar.call("complete", {"messages": USER, "logit_bias": {"42": -100}})
    invalid_params(reply, "logit_bias", "ollama")
    assert fake_ollama.requests == []  # refused before Ollama saw it


async def test_openai_compatible_servers_get_every_control_as_body_fields(
    sidecar: SidecarProcess, openai_fake: FakeOpenAI, flavor: str
) -> None:
    await init_openai(sidecar, flavor, openai_fake)
    reply = await sidecar.call(
        "complete",
        {
            "messages": USER,
            "options": {"seed": 1, "n_probs": 2},
            "logit_bias": {"42": -100, "7": 2.5},
            **EVERY_CONTROL,
        },
    )
    assert reply["result"]["finish_reason"] == "stop", reply
    controls = dict(EVERY_CONTROL)
    # llama-server says repeat_penalty, vLLM repetition_penalty.
    if flavor == "vllm":
        controls["repetition_penalty"] = controls.pop("repeat_penalty")
    assert openai_fake.requests == [
        {
            "model": "fake-model",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
            "n_probs": 2,
            **controls,
            "logit_bias": {"42": -100.0, "7": 2.5},
        }
    ]


async def test_bad_controls_are_refused_naming_the_field(sidecar: SidecarProcess) -> None:
    await init(sidecar, "echo")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"repeat_penalty": "high"}, "repeat_penalty"),
        ({"stop": "END"}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 1000}}, "logit_bias"),
        ({"response_format": {"yaml": {}}}, "response_format"),
        (
            {"response_format": {"json_schema": {"schema": "{}"}}},
            "response_format.json_schema.schema",
        ),
    ]
    for bad, field in cases:
        invalid_params(await sidecar.call("complete", {"messages": USER, **bad}), field)


# ---- structured output -------------------------------------------------------


async def test_ollama_format_is_json_or_the_schema(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama)
    await sidecar.call("complete", {"messages": USER, "response_format": {"json_object": {}}})
    await sidecar.call(
        "complete",
        {"messages": USER, "response_format": {"json_schema": {"schema": SCHEMA, "strict": True}}},
    )
    assert [r["format"] for r in fake_ollama.requests] == ["json", SCHEMA]


async def test_openai_compatible_response_format_per_server(
    sidecar: SidecarProcess, openai_fake: FakeOpenAI, flavor: str
) -> None:
    await init_openai(sidecar, flavor, openai_fake)
    formats: list[dict[str, Any]] = [
        {"json_object": {}},
        {"json_schema": {"schema": SCHEMA}},
        {"json_schema": {"schema": SCHEMA, "name": "person", "strict": True}},
    ]
    for fmt in formats:
        reply = await sidecar.call("complete", {"messages": USER, "response_format": fmt})
        assert "result" in reply, reply
    sent = [r["response_format"] for r in openai_fake.requests]
    if flavor == "llama.cpp":
        # The form both llama-server and llama-cpp-python's server constrain by.
        assert sent == [
            {"type": "json_object"},
            {"type": "json_object", "schema": SCHEMA},
            {"type": "json_object", "schema": SCHEMA},
        ]
    else:
        assert sent == [
            {"type": "json_object"},
            {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA}},
            {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
            },
        ]


async def test_an_invalid_schema_is_refused_before_the_backend(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama)
    bad = {"type": "object", "properties": {"age": {"type": "integr"}}}
    reply = await sidecar.call(
        "complete", {"messages": USER, "response_format": {"json_schema": {"schema": bad}}}
    )
    message = invalid_params(reply, "response_format.json_schema.schema", "not a valid JSON schema")
    assert "properties/age/type" in message
    assert fake_ollama.requests == []


# ---- finish reasons ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("stop", "stop"), ("load", "stop"), ("length", "length"), ("whatever", "stop")],
)
async def test_ollama_finish_reason_is_normalised_and_the_raw_one_kept(
    sidecar: SidecarProcess, fake_ollama: FakeOllama, raw: str, normal: str
) -> None:
    await init_ollama(sidecar, fake_ollama)
    rid = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": f"[[finish:{raw}]]"}], "stream": True}
    )
    notes, reply = await sidecar.read_until_reply(rid)
    assert (reply["result"]["finish_reason"], reply["result"]["raw_finish_reason"]) == (normal, raw)
    done = notes[-1]["params"]
    assert (done["finish_reason"], done["raw_finish_reason"]) == (normal, raw)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("abort", "cancelled"),
        ("error", "error"),
        ("content_filter", "stop"),
        ("function_call", "tool_calls"),
        ("length", "length"),
    ],
)
async def test_openai_finish_reason_is_normalised_and_the_raw_one_kept(
    sidecar: SidecarProcess, openai_fake: FakeOpenAI, raw: str, normal: str
) -> None:
    await init_openai(sidecar, "vllm", openai_fake)
    reply = await sidecar.call(
        "complete", {"messages": [{"role": "user", "content": f"[[finish:{raw}]]"}]}
    )
    assert (reply["result"]["finish_reason"], reply["result"]["raw_finish_reason"]) == (normal, raw)


# ---- embed -------------------------------------------------------------------


async def test_ollama_embed(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    await init_ollama(sidecar, fake_ollama)
    texts = ["a cat sat", "stocks fell today again"]
    reply = await sidecar.call("embed", {"inputs": texts, "dimensions": 4})
    assert fake_ollama.requests == [{"model": "llama3.2:latest", "input": texts, "dimensions": 4}]
    assert reply["result"] == {
        "embeddings": [embedding_of(t, 4) for t in texts],
        "model": "llama3.2:latest",
        "usage": {"input_tokens": 7, "output_tokens": 0, "total_tokens": 7},
    }


async def test_openai_compatible_embed(
    sidecar: SidecarProcess, openai_fake: FakeOpenAI, flavor: str
) -> None:
    await init_openai(sidecar, flavor, openai_fake)
    texts = ["one", "two words"]
    reply = await sidecar.call("embed", {"inputs": texts, "model": "tiny"})
    assert openai_fake.requests == [{"model": "tiny", "input": texts, "encoding_format": "float"}]
    assert reply["result"] == {
        "embeddings": [embedding_of(t) for t in texts],
        "model": "tiny",
        "usage": {"input_tokens": 3, "output_tokens": 0, "total_tokens": 3},
    }


async def test_embed_normalize_and_an_unknown_model(
    sidecar: SidecarProcess, openai_fake: FakeOpenAI
) -> None:
    await init_openai(sidecar, "vllm", openai_fake)
    reply = await sidecar.call("embed", {"inputs": ["x"], "normalize": True})
    (vector,) = reply["result"]["embeddings"]
    assert sum(x * x for x in vector) == pytest.approx(1.0)
    missing = await sidecar.call("embed", {"inputs": ["x"], "model": "nope"})
    assert missing["error"]["code"] == -32001, missing


async def test_embed_params_are_checked(sidecar: SidecarProcess) -> None:
    await init(sidecar, "echo")
    for bad, field in [
        ({}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": ["a", ""]}, "inputs"),
        ({"inputs": "a"}, "inputs"),
        ({"inputs": ["a"], "dimensions": -2}, "dimensions"),
    ]:
        invalid_params(await sidecar.call("embed", bad), field)


# ---- count_tokens ------------------------------------------------------------


async def test_ollama_cannot_count_tokens(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    await init_ollama(sidecar, fake_ollama)
    reply = await sidecar.call("count_tokens", {"messages": USER})
    assert reply["error"]["code"] == -32601, reply
    assert "ollama" in reply["error"]["message"]


async def test_llama_cpp_counts_by_template_then_tokenize(
    sidecar: SidecarProcess, openai_fake: FakeOpenAI
) -> None:
    await init_openai(sidecar, "llama.cpp", openai_fake)
    reply = await sidecar.call("count_tokens", {"messages": USER, "system_prompt": "Be brief."})
    chat = [{"role": "system", "content": "Be brief."}, *USER]
    prompt = chatml(chat)
    assert openai_fake.requests == [
        {"messages": chat},
        {"content": prompt, "add_special": True, "parse_special": True},
    ]
    assert reply["result"] == {"input_tokens": len(prompt.split()) + 1}


async def test_vllm_counts_with_its_chat_tokenize(
    sidecar: SidecarProcess, openai_fake: FakeOpenAI
) -> None:
    await init_openai(sidecar, "vllm", openai_fake)
    reply = await sidecar.call("count_tokens", {"messages": USER})
    assert openai_fake.requests == [
        {"model": "fake-model", "messages": USER, "add_generation_prompt": True}
    ]
    assert reply["result"] == {"input_tokens": len(chatml(USER).split())}
    assert reply["result"]["input_tokens"] != PROMPT_TOKENS


async def test_a_server_without_tokenize_cannot_count(sidecar: SidecarProcess) -> None:
    with FakeOpenAI(tokenize=False) as fake:
        await init_openai(sidecar, "llama.cpp", fake)
        reply = await sidecar.call("count_tokens", {"messages": USER})
    assert reply["error"]["code"] == -32601, reply
    assert "/apply-template" in reply["error"]["message"]


# ---- echo --------------------------------------------------------------------


async def test_echo_honours_stop_and_has_embeddings_and_counts(sidecar: SidecarProcess) -> None:
    await init(sidecar, "echo")
    said = [{"role": "user", "content": "one two three four"}]
    reply = await sidecar.call("complete", {"messages": said, "stop": ["ee f"], "seed": 3})
    assert reply["result"]["content"] == "one two thr"
    assert reply["result"]["finish_reason"] == "stop"
    counted = await sidecar.call("count_tokens", {"messages": said, "system_prompt": "be kind"})
    assert counted["result"] == {"input_tokens": 6}
    embedded = await sidecar.call("embed", {"inputs": ["a b", "b a", "c"]})
    first, again, other = embedded["result"]["embeddings"]
    assert len(first) == 16 and first == again and first != other
    refused = await sidecar.call(
        "complete", {"messages": said, "response_format": {"json_object": {}}}
    )
    invalid_params(refused, "response_format", "echo")
