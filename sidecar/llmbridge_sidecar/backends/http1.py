"""A small HTTP/1.1 client: one keep-alive connection pool per origin, streamed bodies.

Why the sidecar has its own: on the hot path (POST a chat body, read a
streamed answer) aiohttp cost about 0.5 ms of CPU per request, most of the
sidecar's cost and more than the C++ server's (BENCHMARKS.md, "The sidecar's
HTTP client"). Everything here is an ``asyncio.Protocol`` reading into one
buffer: a request is one ``write``, a response head one parse, and a body
that is already buffered is returned without waiting.

Scope, what local model servers (Ollama, llama.cpp, vLLM) need and no more:

* requests with a ``bytes`` body (or none), ``Content-Length`` set;
* responses delimited by ``Content-Length``, ``Transfer-Encoding: chunked``,
  or the end of the connection; 1xx heads skipped; no content codings asked
  for (no ``Accept-Encoding``), so none to undo;
* ``http`` and ``https`` (the system's CA store), and an HTTP proxy: absolute
  request targets for ``http``, a ``CONNECT`` tunnel for ``https``;
* a pool of at most ``limit`` connections; a request waits up to
  ``pool_timeout_s`` for one to be free; idle connections older than
  ``keepalive_s`` are closed instead of reused, and ones the server closed
  are noticed (EOF) and dropped;
* a request that fails on a *reused* connection before any byte of the
  answer arrives (the server closed it while idle) is sent once more on a
  new connection: the server never saw it.

Not here: redirects, cookies, compression, HTTP/2, request bodies streamed in
pieces. Errors are ``TransportError`` subclasses; an HTTP error status is not
an error here (the caller reads ``status``).

Threading: everything runs on the event loop that made the pool.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import cast
from urllib.parse import unquote, urlsplit

# Limits on what a server may send before the body.
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 4096
MAX_INTERIM_HEADS = 8  # 1xx heads before the answer's own
# Stop reading from the socket while this much is buffered and unread
# (a fast server, a slow reader); resume below the low mark.
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
USER_AGENT = b"llmbridge-sidecar"
# A chunk's size line: hex digits (at most 16: 64 bits), optional extensions.
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")


class TransportError(Exception):
    """The HTTP exchange failed below HTTP: no answer, or a broken one."""


class ConnectError(TransportError):
    """No connection: refused, unresolvable, timed out, or no free one in the pool."""


class ReadTimeout(TransportError):
    """The server sent nothing for the read timeout."""


class ConnectionClosed(TransportError):
    """The server closed (or reset) the connection before the answer's end."""


class ProtocolError(TransportError):
    """The server's bytes are not HTTP/1.1 as this client reads it."""


class UnusableProxy(ValueError):
    """The proxy URL (from the environment) is not one this client can use."""


@dataclass(frozen=True)
class Origin:
    """Where connections go: ``scheme://host:port``, and the base URL's path."""

    scheme: str
    host: str
    port: int
    path: str  # the base URL's path prefix, "" or "/prefix" (no trailing slash)

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: only http:// and https:// URLs are supported")
        if not parts.hostname:
            raise ValueError(f"{url!r} names no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the bytes it has received but nobody read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False  # EOF, reset or closed by us: never reused
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self.reused = False
        self.answered = False  # a byte of the current answer has arrived
        # A request is out and its answer not yet wholly read. Bytes that
        # arrive otherwise belong to no request: the connection is dropped,
        # or they would be read as the next request's answer.
        self.busy = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # ---- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.close()
            self._wake()
            return
        self.answered = True
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    # ---- reading ------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self, timeout_s: float | None) -> None:
        """Wait until more bytes arrive or the connection ends.

        Raises ``ReadTimeout`` after ``timeout_s`` with neither, and
        ``ConnectionClosed`` when the connection had already ended.
        """
        if self.closed:
            raise self.closed_error()
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = (
            self._loop.call_later(timeout_s, _time_out, waiter, timeout_s)
            if timeout_s is not None
            else None
        )
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def closed_error(self) -> ConnectionClosed:
        if self.error is not None:
            return ConnectionClosed(f"{type(self.error).__name__}: {self.error}")
        return ConnectionClosed("the server closed the connection")

    def consume(self, n: int) -> bytes:
        """The first ``n`` buffered bytes, removed from the buffer."""
        data = bytes(self.buffer) if n >= len(self.buffer) else bytes(self.buffer[:n])
        self.discard(n)
        return data

    def discard(self, n: int) -> None:
        """Remove the first ``n`` buffered bytes."""
        if n >= len(self.buffer):
            self.buffer.clear()
        else:
            del self.buffer[:n]
        if self._paused and len(self.buffer) < LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _time_out(waiter: asyncio.Future[None], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout(f"no data for {timeout_s:g} s"))


@dataclass
class _Body:
    """How the response body ends, and how far it has been read."""

    kind: str  # "none", "length", "chunked", "close"
    left: int = 0  # "length": bytes left; "chunked": bytes left in this chunk
    need_crlf: bool = False  # "chunked": a chunk's data was read, its CRLF not yet


class Response:
    """An answer's status and headers; its body read with ``read_some`` / ``read``.

    Give the connection back with ``release()`` once the body has been read to
    its end (``at_end``); ``close()`` (also what ``async with`` does unless
    released) drops it, which also tells a streaming server to stop.
    """

    def __init__(
        self,
        pool: Pool,
        conn: _Connection,
        status: int,
        reason: str,
        headers: dict[str, str],
        body: _Body,
        keep_alive: bool,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self._body = body
        self._keep_alive = keep_alive
        self.at_end = body.kind == "none"

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def read_some(self) -> bytes:
        """The next body bytes (everything already buffered, else what arrives
        next); ``b""`` at the body's end."""
        conn = self._conn
        if self.at_end or conn is None:
            return b""
        while True:
            data = self._take_buffered(conn)
            if data or self.at_end:
                return data
            await conn.receive(self._pool.read_timeout_s)

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body. ``ProtocolError`` past ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        while data := await self.read_some():
            parts.append(data)
            size += len(data)
            if limit is not None and size > limit:
                self.close()
                raise ProtocolError(f"the body is longer than {limit} bytes")
        return b"".join(parts)

    async def read_up_to(self, limit: int) -> bytes:
        """The body, or its first ``limit`` bytes (then the connection cannot be
        reused: ``release`` closes it)."""
        parts: list[bytes] = []
        size = 0
        while size < limit and (data := await self.read_some()):
            parts.append(data)
            size += len(data)
        return b"".join(parts)[:limit]

    def _take_buffered(self, conn: _Connection) -> bytes:
        """Body bytes decodable from the buffer without waiting (maybe b"").

        Raises ``ConnectionClosed`` when the connection ended before the body
        did, ``ProtocolError`` on a malformed chunked body.
        """
        body = self._body
        buf = conn.buffer
        if body.kind == "close":
            if buf:
                return conn.consume(len(buf))
            if conn.closed:
                self._end()
            return b""
        if body.kind == "length":
            if buf:
                data = conn.consume(min(body.left, len(buf)))
                body.left -= len(data)
                if body.left == 0:
                    self._end()
                return data
            if conn.closed:
                raise conn.closed_error()
            return b""
        data, used = self._decode_chunks(buf)
        if used:
            conn.discard(used)
        if data or self.at_end:
            return data
        if conn.closed:
            raise conn.closed_error()
        return b""

    def _decode_chunks(self, buf: bytearray) -> tuple[bytes, int]:
        """The chunked body's data decodable from ``buf``, and how many bytes of
        ``buf`` that used (the caller removes them: one move per read, not per chunk)."""
        body = self._body
        parts: list[bytearray] = []
        pos = 0
        size_of_buf = len(buf)
        size_line = _CHUNK_SIZE_LINE.match
        while True:
            if body.left:
                if pos == size_of_buf:
                    break
                take = min(body.left, size_of_buf - pos)
                parts.append(buf[pos : pos + take])
                pos += take
                body.left -= take
                if body.left:
                    break  # the rest of this chunk has not arrived
                body.need_crlf = True
            if body.need_crlf:
                if size_of_buf - pos < 2:
                    if bytes(buf[pos:]) not in (b"", b"\r"):
                        raise ProtocolError("a chunk's data is not followed by CRLF")
                    break
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise ProtocolError("a chunk's data is not followed by CRLF")
                pos += 2
                body.need_crlf = False
            line = size_line(buf, pos)
            if line is None:
                end = buf.find(b"\r\n", pos)
                if end >= 0:
                    raise ProtocolError(f"bad chunk size line {bytes(buf[pos:end])[:40]!r}")
                if size_of_buf - pos > MAX_CHUNK_LINE_BYTES:
                    raise ProtocolError("a chunk size line is too long")
                break  # the size line has not all arrived
            size = int(line.group(1), 16)
            if size == 0:
                trailer_end = _trailer_end(buf, line.end() - 2)
                if trailer_end >= 0:
                    pos = trailer_end
                    self._end()
                break
            pos = line.end()
            body.left = size
        return b"".join(parts), pos

    def _end(self) -> None:
        self.at_end = True
        if self._body.kind == "close":
            self._keep_alive = False

    def release(self) -> None:
        """Back to the pool if the body was read to its end and the server
        keeps the connection open; otherwise closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.at_end and self.reusable and not conn.closed and not conn.buffer:
            conn.busy = False
            self._pool._put_back(conn)
        else:
            self._pool._discard(conn)

    @property
    def reusable(self) -> bool:
        """Whether the connection can serve another request once the body is read."""
        return self._keep_alive and self._body.kind != "close"

    def close(self) -> None:
        """Drop the connection (no-op after ``release``)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._discard(conn)


def _trailer_end(buf: bytearray, size_line_end: int) -> int:
    """Where the last chunk's trailer section ends in ``buf`` (-1: not all buffered)."""
    start = size_line_end + 2
    while True:
        end = buf.find(b"\r\n", start)
        if end < 0:
            if len(buf) - start > MAX_HEAD_BYTES:
                raise ProtocolError("the chunked trailer is too long")
            return -1
        if end == start:
            return end + 2
        start = end + 2


class Pool:
    """Keep-alive connections to one origin (through a proxy, if given).

    ``request`` returns a ``Response`` once the head has arrived. Its
    ``read_timeout_s`` bounds every wait for bytes (the head included);
    ``None`` waits forever.
    """

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        keepalive_s: float,
        connect_timeout_s: float,
        pool_timeout_s: float,
        read_timeout_s: float | None,
        proxy: str | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("a pool needs a limit of at least 1 connection")
        self.origin = Origin.parse(base_url)
        if proxy and "://" not in proxy:
            proxy = "http://" + proxy  # HTTP_PROXY=host:port, as curl reads it
        self.proxy = _parse_proxy(proxy) if proxy else None
        self._proxy_auth = _proxy_authorization(proxy) if proxy else None
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.pool_timeout_s = pool_timeout_s
        self.read_timeout_s = read_timeout_s
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []  # most recently used last
        self._open = 0  # connections open or opening, idle ones included
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closed = False
        # The request line's target and the headers every request carries.
        absolute = self.proxy is not None and self.origin.scheme == "http"
        self._target_prefix = (
            f"http://{self.origin.authority}{self.origin.path}" if absolute else self.origin.path
        ).encode()
        fixed = [b"Host: " + self.origin.authority.encode(), b"User-Agent: " + USER_AGENT]
        if absolute and self._proxy_auth:
            fixed.append(b"Proxy-Authorization: " + self._proxy_auth)
        self._fixed_headers = b"\r\n".join(fixed) + b"\r\n"

    @property
    def open_connections(self) -> int:
        """Connections open or being opened, idle ones included (not counting
        idle ones the server has closed, which are dropped when next reached)."""
        return self._open - sum(1 for conn in self._idle if conn.closed)

    @property
    def waiting_requests(self) -> int:
        """Requests waiting for a connection (all ``limit`` are busy)."""
        return sum(1 for w in self._waiters if not w.done())

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send a request; its answer once the status line and headers are in."""
        head = self._head(method, path, body, headers)
        conn = await self._acquire()
        try:
            return await self._exchange(conn, method, head, body)
        except ConnectionClosed:
            if not conn.reused or conn.answered:
                raise
            # The server closed the idle connection as we sent: it never saw the
            # request, so send it again on a new connection.
        retry = await self._acquire(fresh=True)
        return await self._exchange(retry, method, head, body)

    async def aclose(self) -> None:
        """Close idle connections and refuse new requests; answers in flight
        keep their connections until they are closed or released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectError("the HTTP client was closed"))

    # ---- requests -------------------------------------------------------------

    def _head(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None
    ) -> bytes:
        lines = [
            method.encode() + b" " + self._target_prefix + path.encode() + b" HTTP/1.1\r\n",
            self._fixed_headers,
        ]
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        for name, value in (headers or {}).items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _exchange(
        self, conn: _Connection, method: str, head: bytes, body: bytes | None
    ) -> Response:
        try:
            conn.answered = False
            if conn.closed or conn.transport is None:
                raise conn.closed_error()
            conn.busy = True
            conn.transport.write(head + body if body else head)
            return await self._read_head(conn, method)
        except BaseException:
            self._discard(conn)
            raise

    async def _read_head(self, conn: _Connection, method: str) -> Response:
        interim = 0
        while True:
            end = conn.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"the response head is longer than {MAX_HEAD_BYTES} bytes")
                await conn.receive(self.read_timeout_s)
                continue
            raw = conn.consume(end + 4)
            status, reason, version, headers = _parse_head(raw[:end])
            if 100 <= status < 200:
                interim += 1  # 100 Continue, 103 Early Hints: the answer follows
                if interim > MAX_INTERIM_HEADS:
                    raise ProtocolError(f"more than {MAX_INTERIM_HEADS} interim (1xx) answers")
                continue
            # Transfer-Encoding with Content-Length, or in HTTP/1.0, is framing
            # a proxy may read differently (RFC 9112 6.1, 6.3): never reused.
            suspect = "transfer-encoding" in headers and (
                "content-length" in headers or version == "HTTP/1.0"
            )
            return Response(
                self,
                conn,
                status,
                reason,
                headers,
                _body_of(method, status, headers),
                _keeps_alive(version, headers) and not suspect,
            )

    # ---- the pool ---------------------------------------------------------------

    async def _acquire(self, fresh: bool = False) -> _Connection:
        if self._closed:
            raise ConnectError("the HTTP client was closed")
        if not fresh:
            conn = self._reusable()
            if conn is not None:
                return conn
        if self._open < self.limit:
            self._open += 1
            return await self._connect()
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.pool_timeout_s):
                conn = await waiter
        except BaseException as e:
            self._abandon(waiter)
            if isinstance(e, TimeoutError):
                raise ConnectError(
                    f"all {self.limit} connections stayed busy for {self.pool_timeout_s:g} s"
                ) from None
            raise
        if conn is not None and not fresh and not conn.closed:
            return conn
        if conn is not None:
            # Closed meanwhile, or a resend, which must not risk a reused
            # connection: its slot serves a new one.
            conn.close()
        return await self._connect()  # a slot was handed over: open a connection in it

    def _abandon(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """A waiter gives up (timed out, cancelled): leave the line, or pass on
        what it was handed in the meantime so no connection or slot is lost."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            given = waiter.result()
            if given is not None:
                self._put_back(given)
            else:
                self._slot_freed()
        elif waiter in self._waiters:
            self._waiters.remove(waiter)

    def _reusable(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                conn.reused = True
                return conn
            self._open -= 1
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        """A new connection in a slot the caller has reserved (counted in ``_open``)."""
        loop = asyncio.get_running_loop()
        through = self.proxy or self.origin
        direct_tls = self.proxy is None and self.origin.scheme == "https"
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    through.host,
                    through.port,
                    ssl=self._ssl_context() if direct_tls else None,
                    server_hostname=self.origin.host if direct_tls else None,
                )
                if self.proxy is not None and self.origin.scheme == "https":
                    await self._tunnel(loop, conn)
        except BaseException as e:
            if conn is not None:
                conn.close()  # connected, but the tunnel failed or was cancelled
            self._slot_freed()
            if isinstance(e, TimeoutError):
                raise ConnectError(
                    f"connecting to {through.host}:{through.port} took over "
                    f"{self.connect_timeout_s:g} s"
                ) from None
            if isinstance(e, (OSError, ValueError)):  # ValueError: e.g. a bad IDNA host name
                raise ConnectError(f"{type(e).__name__}: {e}") from e
            raise
        return conn

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, conn: _Connection) -> None:
        """CONNECT through the proxy, then TLS to the origin inside the tunnel.
        On failure the caller closes ``conn``."""
        assert conn.transport is not None
        host = f"[{self.origin.host}]" if ":" in self.origin.host else self.origin.host
        target = f"{host}:{self.origin.port}".encode()
        head = [b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n"]
        if self._proxy_auth:
            head.append(b"Proxy-Authorization: " + self._proxy_auth + b"\r\n")
        conn.busy = True  # the proxy's answer is expected
        conn.transport.write(b"".join(head) + b"\r\n")
        while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
            if len(conn.buffer) > MAX_HEAD_BYTES:
                raise ProtocolError("the proxy's CONNECT answer is too long")
            try:
                await conn.receive(self.connect_timeout_s)
            except TransportError as e:
                raise ConnectError(f"the proxy did not answer CONNECT: {e}") from e
        status, reason, _, _ = _parse_head(conn.consume(end + 4)[:end])
        if status != 200:
            raise ConnectError(f"the proxy refused CONNECT {target.decode()}: {status} {reason}")
        tls = await loop.start_tls(
            conn.transport, conn, self._ssl_context(), server_hostname=self.origin.host
        )
        conn.transport = cast(asyncio.Transport, tls)
        conn.busy = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _put_back(self, conn: _Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                conn.reused = True
                waiter.set_result(conn)
                return
        if self._closed:
            self._open -= 1
            conn.close()
            return
        now = asyncio.get_running_loop().time()
        conn.idle_since = now
        self._idle.append(conn)
        oldest = self._idle[0]
        if now - oldest.idle_since >= self.keepalive_s or oldest.closed:
            del self._idle[0]  # expired while idle: close it now, not when reached
            self._open -= 1
            oldest.close()

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._slot_freed()

    def _slot_freed(self) -> None:
        """A connection is gone: its slot goes to the first waiter (who opens a
        new connection in it), else back to the pool's count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1


def _parse_head(raw: bytes) -> tuple[int, str, str, dict[str, str]]:
    """(status, reason, version, headers with lower-case names) of a response head."""
    lines = raw.split(b"\r\n")
    status_line = lines[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not _is_decimal(code):
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(code), reason, version, headers


def _body_of(method: str, status: int, headers: dict[str, str]) -> _Body:
    """How this response's body is delimited (RFC 9112 section 6.3)."""
    if method == "HEAD" or status in (204, 304):
        return _Body("none")
    encoding = headers.get("transfer-encoding")
    if encoding is not None:
        if encoding.lower().rsplit(",", 1)[-1].strip() == "chunked":
            return _Body("chunked")
        return _Body("close")
    length = headers.get("content-length")
    if length is not None:
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not _is_decimal(next(iter(values))):
            raise ProtocolError(f"bad Content-Length {length[:40]!r}")
        n = int(next(iter(values)))
        return _Body("length", left=n) if n else _Body("none")
    return _Body("close")


def _is_decimal(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes "²" and other digits int() refuses)."""
    return text.isascii() and text.isdigit()


def _keeps_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _parse_proxy(proxy: str) -> Origin:
    try:
        origin = Origin.parse(proxy)
    except ValueError as e:
        raise UnusableProxy(f"proxy {proxy!r}: {e}") from None
    if origin.scheme != "http":
        raise UnusableProxy(f"proxy {proxy!r}: only http:// proxies are supported")
    return origin


def _proxy_authorization(proxy: str) -> bytes | None:
    parts = urlsplit(proxy)
    if parts.username is None:
        return None
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return b"Basic " + base64.b64encode(credentials.encode())
