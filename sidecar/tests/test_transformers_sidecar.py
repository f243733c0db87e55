"""The transformers backend on a tiny random Llama built offline inside the test.

The model (a 2-layer ``LlamaForCausalLM`` with random weights) and its
tokenizer (byte-level BPE trained on a few sentences, with a ChatML chat
template) are made in a temporary directory; nothing is downloaded
(``HF_HUB_OFFLINE=1``). The answers are gibberish, but every token goes
through the real chat template, ``generate``, the streamer and the
stopping criteria, on CUDA when the machine has it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import SidecarProcess, queue_behind_a_long_stream

MISSING = [
    m for m in ("torch", "transformers", "tokenizers") if importlib.util.find_spec(m) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"transformers tests need {', '.join(MISSING)}: install the sidecar's "
    "[transformers] extra (torch, transformers, tokenizers)",
)

USER = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tiny_llama import build_tiny_llama

    os.environ["HF_HUB_OFFLINE"] = "1"
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(str(path))
    yield str(path)


def prompt_tokens(model_dir: str, messages: list[dict[str, str]]) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    encoded: Any = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return len(encoded["input_ids"])


async def init(sc: SidecarProcess, model_dir: str) -> dict[str, Any]:
    reply = await sc.call("init", {"backend": "transformers", "model": model_dir})
    assert reply["result"]["ready"] is True, reply
    caps = reply["result"]["capabilities"]
    assert caps["backend"] == "transformers" and caps["in_process"] is True
    import torch

    assert caps["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    return reply["result"]  # type: ignore[no-any-return]


async def test_streamed_generation(sidecar: SidecarProcess, tiny_llama: str) -> None:
    await init(sidecar, tiny_llama)
    rid = await sidecar.request(
        "complete",
        {
            "messages": USER,
            "system_prompt": "Be brief.",
            "max_tokens": 12,
            "temperature": 0,
            # No end of turn before the limit: the length is exact.
            "options": {"min_new_tokens": 12},
            "stream": True,
        },
    )
    notes, reply = await sidecar.read_until_reply(rid)
    chunks = [n for n in notes if n["method"] == "stream.chunk"]
    assert chunks and notes[-1]["method"] == "stream.done"
    assert all(c["params"]["request_id"] == rid for c in chunks)
    result = reply["result"]
    assert result["content"] == "".join(c["params"]["content"] for c in chunks)
    assert result["model"] == os.path.basename(tiny_llama)
    assert result["finish_reason"] == "length"
    expected_prompt = prompt_tokens(tiny_llama, [{"role": "system", "content": "Be brief."}, *USER])
    assert result["usage"] == {
        "input_tokens": expected_prompt,
        "output_tokens": 12,
        "total_tokens": expected_prompt + 12,
    }
    # Greedy decoding is deterministic: the same answer again, non-streamed.
    again = await sidecar.call(
        "complete",
        {
            "messages": USER,
            "system_prompt": "Be brief.",
            "max_tokens": 12,
            "temperature": 0,
            "options": {"min_new_tokens": 12},
        },
    )
    assert again["result"]["content"] == result["content"]


async def test_cancel_stops_generation(sidecar: SidecarProcess, tiny_llama: str) -> None:
    await init(sidecar, tiny_llama)
    limit = 30000  # tens of seconds of generation if the cancel did not stop it
    rid = await sidecar.request(
        "complete",
        {
            "messages": USER,
            "max_tokens": limit,
            "temperature": 0,
            "options": {"min_new_tokens": limit},
            "stream": True,
        },
    )
    first = await sidecar.read()
    assert first["method"] == "stream.chunk"
    await sidecar.notify("$/cancelRequest", {"id": rid})
    notes, reply = await sidecar.read_until_reply(rid)
    assert reply["error"]["code"] == -32800
    assert all(n["method"] == "stream.chunk" for n in notes)
    # Generations run one at a time: this one is answered only once the
    # cancelled generate() has returned, so a prompt answer proves it stopped.
    started = time.monotonic()
    follow = await sidecar.call("complete", {"messages": USER, "max_tokens": 3})
    assert follow["result"]["usage"]["output_tokens"] > 0
    assert time.monotonic() - started < 10


async def test_models_reports_the_config(sidecar: SidecarProcess, tiny_llama: str) -> None:
    from tiny_llama import MAX_POSITIONS
    from transformers import AutoModelForCausalLM

    await init(sidecar, tiny_llama)
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    details = {
        "format": "safetensors",
        "family": "llama",
        "quantization": "F32",
        "parameter_count": model.num_parameters(),
        "size_bytes": os.path.getsize(os.path.join(tiny_llama, "model.safetensors")),
        "context_length": MAX_POSITIONS,
        "context_length_source": "trained",
        "trained_context_length": MAX_POSITIONS,
    }
    name = os.path.basename(os.path.normpath(tiny_llama))
    assert (await sidecar.call("models"))["result"] == {
        "backend": "transformers",
        "model": {"name": name, "details": details},
        "models": [{"name": name, "details": details}],
    }


async def test_missing_model_directory(sidecar: SidecarProcess, tmp_path: Any) -> None:
    missing = os.path.join(str(tmp_path), "no-model-here")
    reply = await sidecar.call("init", {"backend": "transformers", "model": missing})
    assert reply["error"]["code"] == -32001
    assert "no-model-here" in reply["error"]["message"]


async def test_sixteen_concurrent_requests(sidecar: SidecarProcess, tiny_llama: str) -> None:
    """One generation at a time, the others wait on the event loop (no parked
    executor threads: past 6 waiting requests the old design starved the
    running stream); cancelled queued requests never run."""
    await init(sidecar, tiny_llama)
    limit = 30000  # runs until cancelled
    replies = await queue_behind_a_long_stream(
        sidecar,
        {
            "messages": USER,
            "max_tokens": limit,
            "temperature": 0,
            "options": {"min_new_tokens": limit},
        },
        {"messages": USER, "max_tokens": 6, "temperature": 0, "options": {"min_new_tokens": 6}},
    )
    done = [r["result"] for r in replies.values() if "result" in r]
    assert len(done) == 13
    assert all(r["usage"]["output_tokens"] == 6 and r["finish_reason"] == "length" for r in done)
    # Greedy decoding of the same prompt: every answer is the same.
    assert len({r["content"] for r in done}) == 1


async def test_typed_sampling_controls_reach_generate(
    sidecar: SidecarProcess, tiny_llama: str
) -> None:
    await init(sidecar, tiny_llama)
    fixed = {"messages": USER, "max_tokens": 8, "options": {"min_new_tokens": 8}}
    greedy = (await sidecar.call("complete", {**fixed, "temperature": 0}))["result"]["content"]
    # top_k 1 leaves sampling one choice: the greedy answer, at any temperature.
    top1 = await sidecar.call("complete", {**fixed, "temperature": 1.5, "top_k": 1, "seed": 3})
    assert top1["result"]["content"] == greedy
    sampled = {**fixed, "temperature": 1.5, "top_p": 0.99, "min_p": 0.0, "repeat_penalty": 1.2}
    first = await sidecar.call("complete", {**sampled, "seed": 11})
    again = await sidecar.call("complete", {**sampled, "seed": 11})
    assert first["result"]["content"] == again["result"]["content"]
    others = [
        (await sidecar.call("complete", {**sampled, "seed": seed}))["result"]["content"]
        for seed in (12, 13)
    ]
    assert any(text != first["result"]["content"] for text in others), "the seed did nothing"

    from transformers import AutoTokenizer

    token = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True).encode(" sea")[-1]
    biased = await sidecar.call(
        "complete", {**fixed, "temperature": 0, "logit_bias": {str(token): 100}}
    )
    words = biased["result"]["content"].split()
    assert words and set(words) == {"sea"}, biased


async def test_typed_stop_ends_the_answer_before_the_string(
    sidecar: SidecarProcess, tiny_llama: str
) -> None:
    await init(sidecar, tiny_llama)
    fixed = {"messages": USER, "max_tokens": 16, "temperature": 0}
    whole = (await sidecar.call("complete", fixed))["result"]["content"]
    assert len(whole) > 6, whole
    stop = whole[3:6]
    cut = await sidecar.call("complete", {**fixed, "stop": [stop]})
    assert cut["result"]["content"] == whole[: whole.index(stop)]
    assert cut["result"]["finish_reason"] == "stop"


async def test_what_transformers_cannot_honour_is_refused(
    sidecar: SidecarProcess, tiny_llama: str
) -> None:
    await init(sidecar, tiny_llama)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"response_format": {"json_object": {}}}, "response_format"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ]
    for params, field in cases:
        reply = await sidecar.call("complete", {"messages": USER, **params})
        assert reply["error"]["code"] == -32602, reply
        assert reply["error"]["data"]["field"] == field
        assert "transformers" in reply["error"]["message"]


async def test_count_tokens_and_embeddings(sidecar: SidecarProcess, tiny_llama: str) -> None:
    await init(sidecar, tiny_llama)
    conversation = {"messages": USER, "system_prompt": "Be brief."}
    counted = await sidecar.call("count_tokens", conversation)
    expected = prompt_tokens(tiny_llama, [{"role": "system", "content": "Be brief."}, *USER])
    assert counted["result"] == {"input_tokens": expected}
    done = await sidecar.call("complete", {**conversation, "max_tokens": 2})
    assert done["result"]["usage"]["input_tokens"] == expected

    texts = ["The sea is wide.", "Ships sail on the sea under the sun."]
    reply = await sidecar.call("embed", {"inputs": texts, "normalize": True})
    vectors = reply["result"]["embeddings"]
    assert [len(v) for v in vectors] == [32, 32]  # tiny_llama's hidden_size
    assert all(sum(x * x for x in v) == pytest.approx(1.0, abs=1e-5) for v in vectors)
    assert reply["result"]["usage"]["input_tokens"] > 0
    again = await sidecar.call("embed", {"inputs": texts[:1], "normalize": True})
    assert again["result"]["embeddings"][0] == pytest.approx(vectors[0], abs=1e-6)
    refused = await sidecar.call("embed", {"inputs": texts, "dimensions": 8})
    assert refused["error"]["code"] == -32602 and refused["error"]["data"]["field"] == "dimensions"
