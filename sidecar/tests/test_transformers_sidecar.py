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
