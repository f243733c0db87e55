"""Property-based tests (hypothesis) of the sidecar's message parsing and dispatch.

The property, for any input line (arbitrary bytes, arbitrary JSON values,
JSON-RPC envelopes with ill-typed fields, deep nesting, lone surrogates):

* the line yields exactly what JSON-RPC 2.0 says: one reply for a request
  (its id echoed) or for anything that is not a valid message (id null), and
  none for a notification;
* every line written back is one valid UTF-8 JSON-RPC object;
* the reader survives: a normal request sent after it is still answered.

Checked twice: in-process against ``Server`` with a transport that records
its output (hundreds of examples per second), and through the real sidecar
process over real pipes. The sidecar is not initialized, so every request
ends at once (``init`` and ``shutdown`` requests are left out: they would
load models or stop the process; ``parse_init`` gets its own property).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from conftest import SIDECAR_SCRIPT
from llmbridge_sidecar import jsonio, protocol
from llmbridge_sidecar.errors import BackendError
from llmbridge_sidecar.server import Server
from llmbridge_sidecar.transport import LineTooLong, StdioTransport

PROBE_ID = "probe-7f3c9a"
PROBE = json.dumps({"jsonrpc": "2.0", "id": PROBE_ID, "method": "health"}).encode()
# Requests that would load a model or stop the process: not sent here.
EXCLUDED_METHODS = ("init", "shutdown")
REPLY_TIMEOUT_S = 30.0

# ---- strategies ------------------------------------------------------------

# Any text, lone surrogates included (hypothesis leaves category Cs out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=16,
)
ids = st.integers() | any_text | json_values
methods = (
    st.sampled_from(
        ["complete", "models", "health", "tools", "$/cancelRequest", "stream.start", "nope"]
    )
    | any_text
    | json_values
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["user", "system"]) | json_values,
            "content": any_text | json_values,
        },
    )
    | json_values,
    max_size=3,
)
# Params with the right keys and arbitrary (often ill-typed) values.
complete_params = st.fixed_dictionaries(
    {},
    optional={
        "messages": messages | json_values,
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers() | json_values,
        "temperature": st.floats() | json_values,
        "options": st.dictionaries(any_text, json_values, max_size=3) | json_values,
        "timeout_s": st.floats() | json_values,
        "id": ids,
    },
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | json_values,
        "id": ids,
        "method": methods,
        "params": complete_params | json_values,
    },
)


def deep(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One input line (no newline: the transport splits on it)."""
    kind = draw(st.sampled_from(["envelope", "value", "bytes", "truncated", "deep"]))
    if kind == "envelope":
        text = json.dumps(draw(envelopes), ensure_ascii=draw(st.booleans()))
    elif kind == "value":
        text = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    elif kind == "bytes":
        return draw(st.binary(max_size=64)).replace(b"\n", b" ")
    elif kind == "truncated":
        text = json.dumps(draw(envelopes))
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    else:
        depth = draw(st.integers(1, 5000))
        text = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "complete", "params": {"x": None}}
        ).replace("null", deep(depth))
        if draw(st.booleans()):
            text = deep(depth)
    # Lone surrogates written raw cannot be UTF-8: such text goes out escaped.
    return text.encode("utf-8", "backslashreplace").replace(b"\n", b" ")


# ---- the oracle: what JSON-RPC 2.0 says a line must produce ------------------


@dataclass(frozen=True)
class Expected:
    replies: int  # 0 (notification, or a response message to ignore) or 1
    reply_id: Any = None  # the id the one reply carries (None: JSON null)


def valid_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def expected(line: bytes) -> Expected | None:
    """None: a line the test leaves out (a request that would load a model or stop)."""
    if not line.strip():
        return Expected(0)  # blank lines between messages are skipped
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        return Expected(1)
    if not isinstance(msg, dict):
        return Expected(1)
    has_id = "id" in msg
    if has_id and not valid_id(msg["id"]):
        return Expected(1)
    method = msg.get("method")
    if msg.get("jsonrpc") != "2.0" or not isinstance(method, str):
        if not isinstance(method, str) and ("result" in msg or "error" in msg):
            return Expected(0)  # a response: the sidecar sends no requests, so it is ignored
        return Expected(1, msg.get("id"))
    params = msg.get("params")
    if params is not None and not isinstance(params, (dict, list)):
        return Expected(1, msg.get("id"))
    if not has_id:
        return Expected(0)
    if method in EXCLUDED_METHODS or msg["id"] == PROBE_ID:
        return None
    return Expected(1, msg["id"])


def decode_output(raw: bytes) -> dict[str, Any]:
    """One output line: valid UTF-8, one JSON-RPC 2.0 object."""
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw
    text = raw.decode("utf-8")  # raises on invalid UTF-8
    msg = json.loads(text)
    assert isinstance(msg, dict) and msg["jsonrpc"] == "2.0", msg
    if "method" in msg:
        # Only the seed-style stream.start's notifications can come unasked.
        assert msg["method"] in ("stream.error", "stream.chunk", "stream.done"), msg
    else:
        assert ("result" in msg) != ("error" in msg), msg
        if "error" in msg:
            err = msg["error"]
            assert isinstance(err["code"], int) and isinstance(err["message"], str), msg
    return msg


def check(line: bytes, want: Expected, replies: list[dict[str, Any]]) -> None:
    assert len(replies) == want.replies, (line[:300], replies)
    if want.replies:
        (reply,) = replies
        # A line the sidecar's parser rejects (a stricter codec) is answered with id null.
        assert reply["id"] == want.reply_id or (
            reply["id"] is None and reply.get("error", {}).get("code") == protocol.PARSE_ERROR
        ), (line[:300], reply)


# ---- in-process: Server over a recording transport ---------------------------


class RecordingTransport(StdioTransport):
    """Feeds the given lines to the server, records every line it writes,
    and ends the input once the probe has been answered."""

    def __init__(self, feed: list[bytes]) -> None:
        super().__init__(-1, -1)
        self.feed = feed
        self.out: list[bytes] = []
        self.probe_answered = asyncio.Event()

    async def lines(self) -> AsyncIterator[bytes | LineTooLong]:
        for line in self.feed:
            yield line
        await self.probe_answered.wait()

    async def send_line(self, data: bytes) -> None:
        self.out.append(data)
        if f'"id":"{PROBE_ID}"'.encode() in data:
            self.probe_answered.set()

    async def close(self) -> None:
        pass


async def serve_in_process(line: bytes) -> list[dict[str, Any]]:
    transport = RecordingTransport([line, PROBE])
    assert await asyncio.wait_for(Server(transport).run(), REPLY_TIMEOUT_S) == 0
    return [decode_output(raw) for raw in transport.out]


def replies_other_than_probe(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    probe = [m for m in out if m.get("id") == PROBE_ID and "method" not in m]
    # The reader survived the line: the probe that followed it was answered.
    assert len(probe) == 1 and probe[0]["result"]["ok"] is False, out
    return [m for m in out if "method" not in m and m.get("id") != PROBE_ID]


@settings(max_examples=400, deadline=None, database=None)
@given(lines())
@example(b'{"jsonrpc":"2.0","id":"\\ud800","method":"nope"}')  # lone surrogate id
@example(b'{"jsonrpc":"2.0","id":"\\udfff","method":"complete","params":{"messages":1}}')
@example(deep(1000).encode())  # RecursionError in json.loads
@example(b'{"jsonrpc":"2.0","id":1,"method":"complete","params":' + deep(900).encode() + b"}")
@example(b'{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":true}}')
@example(b"\xff\xfe\x00garbage")
def test_any_line_gets_its_reply_and_the_reader_survives(line: bytes) -> None:
    want = expected(line)
    assume(want is not None)
    assert want is not None
    out = asyncio.run(serve_in_process(line))
    check(line, want, replies_other_than_probe(out))


@settings(max_examples=300, deadline=None, database=None)
@given(json_values | complete_params)
def test_parse_functions_raise_only_backend_errors(params: Any) -> None:
    """Ill-typed params become a BackendError (a -326xx reply), never anything else."""
    for parse in (protocol.parse_init, protocol.parse_complete, protocol.parse_no_params):
        try:
            parse(params)
        except BackendError as e:
            assert e.code == protocol.INVALID_PARAMS, (parse, params, e)


# ---- through the real sidecar process ----------------------------------------


class LineReader:
    """The sidecar's stdout, line by line, drained on a thread."""

    def __init__(self, stream: Any) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self._queue.put(raw)
        self._queue.put(b"")

    def next(self) -> dict[str, Any]:
        raw = self._queue.get(timeout=REPLY_TIMEOUT_S)
        assert raw, "the sidecar closed stdout: it died"
        return decode_output(raw)


@pytest.fixture(scope="module")
def sidecar_process() -> Iterator[tuple[subprocess.Popen[bytes], LineReader]]:
    proc = subprocess.Popen(
        [sys.executable, SIDECAR_SCRIPT, "--log-level", "ERROR"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(SIDECAR_SCRIPT))},
    )
    assert proc.stdout is not None
    try:
        yield proc, LineReader(proc.stdout)
    finally:
        proc.kill()
        proc.wait()


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(lines())
@example(b'{"jsonrpc":"2.0","id":"\\ud800","method":"nope"}')
@example(deep(1000).encode())
def test_real_sidecar_answers_any_line_and_keeps_serving(
    sidecar_process: tuple[subprocess.Popen[bytes], LineReader], line: bytes
) -> None:
    want = expected(line)
    assume(want is not None)
    assert want is not None
    proc, reader = sidecar_process
    assert proc.stdin is not None
    proc.stdin.write(line + b"\n" + PROBE + b"\n")
    proc.stdin.flush()
    out: list[dict[str, Any]] = []
    while not any(m.get("id") == PROBE_ID and "method" not in m for m in out):
        out.append(reader.next())
    replies = replies_other_than_probe(out)
    # The line's own reply may come just after the probe's (another task).
    while len(replies) < want.replies:
        msg = reader.next()
        if "method" not in msg:
            replies.append(msg)
    check(line, want, replies)


@settings(max_examples=300, deadline=None, database=None)
@given(json_values, st.booleans())
@example(-(2**63) - 1, False)  # 19 digits, below int64: orjson reads a float
@example(2**64, False)
def test_jsonio_reads_and_writes_what_the_standard_library_does(
    value: Any, ascii_only: bool
) -> None:
    """orjson on the hot path, the standard library where orjson refuses:
    the same values either way (lone surrogates and big integers included)."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "backslashreplace")
    assert jsonio.loads(raw) == json.loads(raw)
    written = jsonio.dumps(value)
    written.decode("utf-8")  # always valid UTF-8
    assert json.loads(written) == value
