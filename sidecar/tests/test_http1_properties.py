"""Property tests of the HTTP/1.1 client's parsers (backends/http1.py).

A backend's bytes are untrusted input: whatever arrives, in whatever pieces,
the client either decodes exactly what was sent or raises one of its own
``TransportError``s; it never raises anything else and never loses or
invents a byte. Hypothesis drives the parsers directly (no sockets): a
``_Connection`` receives the bytes as its transport would deliver them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmbridge_sidecar.backends import http1


def _response(conn: http1._Connection, kind: str, left: int = 0) -> http1.Response:
    pool: Any = None  # the body parser never touches the pool
    conn.busy = True  # a request is out: what arrives is its answer
    return http1.Response(pool, conn, 200, "OK", {}, http1._Body(kind, left=left), True)


def _chunked(body: bytes, sizes: list[int], extensions: bool, trailer: bool) -> bytes:
    out, start = [], 0
    for size in [*sizes, len(body)]:
        piece = body[start : start + size]
        if not piece:
            break
        ext = b";name=value" if extensions else b""
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
        start += len(piece)
    out.append(b"0\r\n" + (b"X-Checksum: 1\r\n" if trailer else b"") + b"\r\n")
    return b"".join(out)


def _fragments(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for cut in cuts:
        if start >= len(data):
            break
        pieces.append(data[start : start + cut])
        start += cut
    if start < len(data):
        pieces.append(data[start:])
    return pieces


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 700), max_size=12),
    cuts=st.lists(st.integers(1, 64), max_size=80),
    extensions=st.booleans(),
    trailer=st.booleans(),
    after=st.binary(max_size=20),
)
def test_chunked_bodies_decode_exactly_however_they_are_cut(
    body: bytes, sizes: list[int], cuts: list[int], extensions: bool, trailer: bool, after: bytes
) -> None:
    conn = http1._Connection(None)  # type: ignore[arg-type]
    resp = _response(conn, "chunked")
    decoded = []
    for fragment in _fragments(_chunked(body, sizes, extensions, trailer) + after, cuts):
        conn.data_received(fragment)
        if not resp.at_end:
            decoded.append(resp._take_buffered(conn))
    assert b"".join(decoded) == body
    assert resp.at_end
    assert bytes(conn.buffer) == after  # what follows the body is left for the next answer


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=400), kind=st.sampled_from(["chunked", "length", "close"]))
@example(data=b"\xb2\r\n", kind="chunked")
def test_any_bytes_decode_or_fail_with_a_transport_error(data: bytes, kind: str) -> None:
    conn = http1._Connection(None)  # type: ignore[arg-type]
    resp = _response(conn, kind, left=100)
    decoded = b""
    try:
        conn.data_received(data)
        decoded += resp._take_buffered(conn)
        conn.connection_lost(None)  # then the server closes
        while not resp.at_end:
            decoded += resp._take_buffered(conn)
    except http1.TransportError:
        return
    if kind == "close":
        assert decoded == data
    elif kind == "length":
        assert decoded == data[:100]  # exactly Content-Length bytes, the rest left unread
    # chunked: what a valid encoding decodes to is the test above; here only
    # that garbage ends in a TransportError or a (short) body, nothing else


@settings(max_examples=500, deadline=None)
@given(head=st.binary(max_size=300))
@example(head=b"HTTP/1.1 2\xb2\xb2 OK")
@example(head=b"HTTP/1.1 200 OK\r\nContent-Length: \xb2")
def test_any_head_parses_or_is_a_protocol_error(head: bytes) -> None:
    try:
        status, _, version, headers = http1._parse_head(head)
        http1._body_of("GET", status, headers)
    except http1.ProtocolError:
        return
    assert head.startswith(version.encode("latin-1") + b" %03d" % status)


@given(
    status=st.integers(100, 599),
    headers=st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True),
        st.from_regex(r"[ -~]{0,30}", fullmatch=True).map(str.strip),
        max_size=8,
    ),
)
def test_well_formed_heads_parse_back(status: int, headers: dict[str, str]) -> None:
    raw = b"HTTP/1.1 %d Reason Phrase\r\n" % status + b"".join(
        f"{name}: {value}\r\n".encode() for name, value in headers.items()
    )
    parsed_status, reason, version, parsed = http1._parse_head(raw.rstrip(b"\r\n"))
    assert (parsed_status, reason, version) == (status, "Reason Phrase", "HTTP/1.1")
    expected: dict[str, list[str]] = {}
    for name, value in headers.items():
        expected.setdefault(name.lower(), []).append(value)
    assert parsed == {name: ", ".join(values) for name, values in expected.items()}
