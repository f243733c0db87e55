"""The echo debug/benchmark backend, in the real sidecar process over real pipes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import SidecarProcess
from llmbridge_sidecar import protocol
from llmbridge_sidecar.backends.echo import CHUNK_TEXT


async def init_echo(sc: SidecarProcess) -> None:
    reply = await sc.call("init", {"backend": "echo", "model": ""})
    result = reply["result"]
    assert result["ready"] is True
    assert result["stream_request_id"] is True
    assert result["capabilities"]["backend"] == "echo"
    assert result["capabilities"]["debug"] is True


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_echoes_the_last_user_message_word_by_word(sidecar: SidecarProcess) -> None:
    await init_echo(sidecar)
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "  hello   echo world "},
    ]
    rid = await sidecar.request("complete", {"messages": messages, "stream": True})
    notes, reply = await sidecar.read_until_reply(rid)

    assert [n["method"] for n in notes] == ["stream.chunk"] * 3 + ["stream.done"]
    assert [n["params"] for n in notes[:3]] == [
        {"request_id": rid, "content": text, "done": False} for text in ("hello", " echo", " world")
    ]
    usage = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    assert notes[3]["params"] == {
        "request_id": rid,
        "usage": usage,
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "model": "echo",
    }
    assert reply["result"] == {
        "content": "hello echo world",
        "model": "echo",
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "usage": usage,
    }


async def test_fixed_chunk_count_and_max_tokens(sidecar: SidecarProcess) -> None:
    await init_echo(sidecar)
    reply = await sidecar.call(
        "complete", {"messages": user("x"), "options": {"chunks": 50}, "model": "m"}
    )
    assert reply["result"] == {
        "content": CHUNK_TEXT * 50,
        "model": "m",
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "usage": {"input_tokens": 1, "output_tokens": 50, "total_tokens": 51},
    }

    reply = await sidecar.call(
        "complete", {"messages": user("x"), "options": {"chunks": 50}, "max_tokens": 4}
    )
    assert reply["result"]["content"] == CHUNK_TEXT * 4
    assert reply["result"]["finish_reason"] == "length"

    reply = await sidecar.call("complete", {"messages": user("x"), "options": {"chunks": -1}})
    assert reply["error"]["code"] == -32602
    assert "options.chunks" in reply["error"]["message"]


async def test_concurrent_streams_interleave(sidecar: SidecarProcess) -> None:
    await init_echo(sidecar)
    params: dict[str, Any] = {"messages": user("x"), "stream": True, "options": {"chunks": 200}}
    # All three requests in one write, so they arrive together whatever the
    # machine's load: the sidecar starts the three streams at once.
    ids = [sidecar.next_id() for _ in range(3)]
    await sidecar.send_raw(
        b"".join(
            json.dumps(
                {"jsonrpc": "2.0", "id": rid, "method": "complete", "params": params}
            ).encode()
            + b"\n"
            for rid in ids
        )
    )
    chunks: dict[int, int] = dict.fromkeys(ids, 0)
    order: list[int] = []
    replies = 0
    while replies < len(ids):
        msg = await sidecar.read()
        if "method" not in msg:
            assert msg["result"]["usage"]["output_tokens"] == 200
            replies += 1
        elif msg["method"] == "stream.chunk":
            rid = msg["params"]["request_id"]
            chunks[rid] += 1
            order.append(rid)
    assert chunks == dict.fromkeys(ids, 200)
    # One chunk per loop turn: the streams share the pipe instead of queueing,
    # so every stream has started before any has finished. (Not the exact
    # order: when each request is read depends on the machine's load.)
    first = [order.index(rid) for rid in ids]
    last = [len(order) - 1 - order[::-1].index(rid) for rid in ids]
    assert max(first) < min(last)


async def test_cancel_stops_the_stream(sidecar: SidecarProcess) -> None:
    await init_echo(sidecar)
    rid = await sidecar.request(
        "complete",
        {
            "messages": user("x"),
            "stream": True,
            "options": {"chunks": 10_000, "delay_ms": 5},
        },
    )
    first = await sidecar.read()
    assert first["method"] == "stream.chunk"
    await sidecar.notify("$/cancelRequest", {"id": rid})
    notes, reply = await sidecar.read_until_reply(rid)
    assert reply["error"]["code"] == -32800
    assert all(n["method"] == "stream.chunk" for n in notes)
    assert len(notes) < 100
    # The sidecar still serves.
    reply = await sidecar.call("complete", {"messages": user("still here")})
    assert reply["result"]["content"] == "still here"


@pytest.mark.parametrize("rid", [7, 0, -3, "abc", 'q"\\u', None])
@pytest.mark.parametrize(
    "text", ["tok ", "", 'a "quoted" \\ line\n\ttab', "héllo ✓ 😀", "\x00\x1f"]
)
def test_stream_chunk_line_matches_the_generic_encoding(rid: Any, text: str) -> None:
    # The fast path the echo streams (and every backend's chunks) go through.
    tag = {"request_id": rid} if rid is not None else {}
    generic = json.dumps(
        protocol.notification("stream.chunk", {**tag, "content": text, "done": False}),
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert protocol.stream_chunk_line(rid, text) == generic.encode() + b"\n"


async def test_a_streamed_answer_is_not_repeated_in_the_response_when_asked(
    sidecar: SidecarProcess,
) -> None:
    await init_echo(sidecar)
    for result_content, expected in ((None, "one two"), (False, "")):
        params: dict[str, Any] = {"messages": user("one two"), "stream": True}
        if result_content is not None:
            params["result_content"] = result_content
        rid = sidecar.next_id()
        await sidecar.send_raw(
            json.dumps(
                {"jsonrpc": "2.0", "id": rid, "method": "complete", "params": params}
            ).encode()
            + b"\n"
        )
        streamed = ""
        while True:
            msg = await sidecar.read()
            if msg.get("method") == "stream.chunk":
                streamed += msg["params"]["content"]
            elif "method" not in msg:
                break
        assert streamed == "one two"
        assert msg["result"]["content"] == expected
        assert msg["result"]["usage"]["output_tokens"] == 2
