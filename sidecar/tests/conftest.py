"""Shared fixtures: the fake Ollama server and a real sidecar subprocess."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
import uvloop

sys.path.insert(0, os.path.dirname(__file__))

from fake_ollama import FakeOllama


def assert_relayed_in_order(contents: list[str], chunks: Sequence[str]) -> None:
    """``contents`` (the stream.chunk texts) relay ``chunks`` in order, whole:
    consecutive chunks may arrive merged into one piece (the sidecar relays
    what the backend sent together as one), but none is split or reordered."""
    assert contents and all(contents), contents
    assert "".join(contents) == "".join(chunks)
    chunk_ends = set(itertools.accumulate(len(c) for c in chunks))
    assert set(itertools.accumulate(len(c) for c in contents)) <= chunk_ends, contents


def stream_chunks(notes: list[dict[str, Any]], rid: Any) -> list[str]:
    """The texts of ``notes``, which must all be ``rid``'s stream.chunk notifications."""
    for note in notes:
        assert note["method"] == "stream.chunk", note
        assert note["params"]["request_id"] == rid and note["params"]["done"] is False, note
    return [n["params"]["content"] for n in notes]


BOTH_EVENT_LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_event_loops: run each async test on asyncio's loop and on uvloop"
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    """Tests marked ``both_event_loops`` run twice; the rest on asyncio's loop."""
    if item.get_closest_marker("both_event_loops") is not None:
        return BOTH_EVENT_LOOPS
    return {"asyncio": asyncio.new_event_loop}


SIDECAR_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDECAR_SCRIPT = os.path.join(SIDECAR_DIR, "sidecar.py")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
MCP_TEST_SERVER = os.path.join(TESTS_DIR, "mcp_test_server.py")
# Generous: only hit when the sidecar is broken; tests never wait this long otherwise.
READ_TIMEOUT_S = 60.0


class SidecarProcess:
    """The real sidecar over real pipes, speaking line-delimited JSON-RPC."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._next_id = 0

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def request(self, method: str, params: Any = None) -> int:
        rid = self.next_id()
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        await self.send(msg)
        return rid

    async def notify(self, method: str, params: Any) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def read(self) -> dict[str, Any]:
        """The next line of stdout; every line must be one JSON-RPC object."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), READ_TIMEOUT_S)
        assert line, "sidecar closed stdout"
        assert line.endswith(b"\n")
        msg = json.loads(line)
        assert isinstance(msg, dict) and msg["jsonrpc"] == "2.0", line
        return msg

    async def read_until_reply(self, rid: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Notifications received before the reply to ``rid``, and that reply."""
        before: list[dict[str, Any]] = []
        while True:
            msg = await self.read()
            if msg.get("id") == rid and "method" not in msg:
                return before, msg
            before.append(msg)

    async def call(self, method: str, params: Any = None) -> dict[str, Any]:
        rid = await self.request(method, params)
        notes, reply = await self.read_until_reply(rid)
        assert notes == [], f"unexpected messages before reply: {notes}"
        return reply

    async def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.stdin.wait_closed()

    async def wait(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), READ_TIMEOUT_S)


async def start_sidecar(*args: str) -> SidecarProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SIDECAR_SCRIPT,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,  # inherited: pytest shows it for failing tests
        limit=16 * 1024 * 1024,
    )
    return SidecarProcess(proc)


@pytest.fixture
async def sidecar() -> AsyncIterator[SidecarProcess]:
    sc = await start_sidecar("--log-level", "DEBUG")
    try:
        yield sc
    finally:
        if sc.proc.returncode is None:
            sc.proc.kill()
            await sc.proc.wait()


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


def mcp_test_server(marker: str = "") -> dict[str, Any]:
    """``mcp_servers`` entry of the SDK-written test server (mcp_test_server.py), over stdio."""
    entry: dict[str, Any] = {"type": "stdio", "command": sys.executable, "args": [MCP_TEST_SERVER]}
    if marker:
        entry["env"] = {"MCP_TEST_MARKER": marker}
    return entry


async def queue_behind_a_long_stream(
    sc: SidecarProcess,
    long_params: dict[str, Any],
    short_params: dict[str, Any],
    waiting: int = 15,
    cancel: tuple[int, ...] = (4, 9),
) -> dict[int, dict[str, Any]]:
    """An in-process model under concurrency: one long stream, ``waiting``
    short requests queued behind it, then a cancel of the queued ones at
    positions ``cancel`` and of the long one. Returns every reply by id.

    Checks on the way: the long stream is running (its first chunk arrived)
    when the cancels are sent; each cancelled queued request is answered
    -32800 before the long stream ends, without a single chunk (it never
    ran); the long stream's cancel is answered -32800 too.
    """
    long_id = await sc.request("complete", {**long_params, "stream": True})
    short_ids = [await sc.request("complete", short_params) for _ in range(waiting)]
    first = await sc.read()
    assert first["method"] == "stream.chunk" and first["params"]["request_id"] == long_id, first
    doomed = {short_ids[i] for i in cancel}
    for rid in doomed:
        await sc.notify("$/cancelRequest", {"id": rid})
    replies: dict[int, dict[str, Any]] = {}
    chunk_ids: set[Any] = set()
    while not doomed <= replies.keys():
        msg = await sc.read()
        if "method" in msg:
            chunk_ids.add(msg["params"].get("request_id"))
            continue
        replies[msg["id"]] = msg
    assert long_id not in replies, "the long stream ended before the queued cancels were answered"
    assert all(replies[rid]["error"]["code"] == -32800 for rid in doomed)
    assert not doomed & chunk_ids, "a cancelled queued request ran"
    await sc.notify("$/cancelRequest", {"id": long_id})
    while len(replies) < waiting + 1:
        msg = await sc.read()
        if "method" in msg:
            chunk_ids.add(msg["params"].get("request_id"))
            continue
        replies[msg["id"]] = msg
    assert replies[long_id]["error"]["code"] == -32800
    assert not doomed & chunk_ids
    return replies
