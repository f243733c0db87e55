"""The sidecar's HTTP/1.1 client (backends/http1.py) against real sockets.

Each test runs a scripted server on 127.0.0.1 (asyncio streams): it reads
requests and writes exactly the bytes a test needs, including the malformed,
split, trickled and abruptly closed answers the client must survive.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from llmbridge_sidecar.backends import http1

# Every test on both loops: the sidecar runs uvloop on its pipes, asyncio
# elsewhere (conftest.py's pytest_asyncio_loop_factories).
pytestmark = pytest.mark.both_event_loops


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A TCP server whose every connection runs ``handler``; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []  # every request head, in order
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and Content-Length body); b"" when the client hung up."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        self.requests.append(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        return head


def pool(url: str, **kw: Any) -> http1.Pool:
    options: dict[str, Any] = {
        "limit": 8,
        "keepalive_s": 60.0,
        "connect_timeout_s": 5.0,
        "pool_timeout_s": 5.0,
        "read_timeout_s": 10.0,
    }
    return http1.Pool(url, **{**options, **kw})


async def get(p: http1.Pool, path: str = "/x", body: bytes | None = None) -> tuple[int, bytes]:
    async with await p.request("POST" if body else "GET", path, body) as resp:
        data = await resp.read()
        resp.release()
        return resp.status, data


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest.fixture
async def keep_alive_server() -> AsyncIterator[Server]:
    """Answers every request on a connection with its own path, keep-alive."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await server.read_request(reader):
            writer.write(ok(head.split(b" ")[1]))

    server = Server(handler)
    async with server:
        yield server


async def test_sequential_requests_share_one_connection(keep_alive_server: Server) -> None:
    p = pool(keep_alive_server.url)
    for i in range(5):
        assert await get(p, f"/n{i}", b'{"a":1}') == (200, f"/n{i}".encode())
    assert keep_alive_server.connections == 1
    head = keep_alive_server.requests[0]
    assert head.startswith(b"POST /n0 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in head and b"\r\nContent-Length: 7\r\n" in head
    await p.aclose()


async def test_base_url_path_prefixes_every_request(keep_alive_server: Server) -> None:
    p = pool(keep_alive_server.url + "/prefix/")
    assert await get(p, "/v1/models") == (200, b"/prefix/v1/models")
    await p.aclose()


async def test_chunked_body_trickled_byte_by_byte_with_extensions_and_trailer() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            for i in range(len(answer)):
                writer.write(answer[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)  # yield so the client sees each byte alone

    server = Server(handler)
    async with server:
        p = pool(server.url)
        assert await get(p) == (200, b"hello world")
        assert await get(p) == (200, b"hello world")
        assert server.connections == 1  # the chunked end was found: reused
        await p.aclose()


async def test_body_until_close_is_read_whole_and_the_connection_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nno length")
        await writer.drain()

    server = Server(handler)
    async with server:
        p = pool(server.url)
        assert await get(p) == (200, b"no length")
        assert await get(p) == (200, b"no length")
        assert server.connections == 2
        assert p.open_connections == 0
        await p.aclose()


async def test_connection_close_header_is_honoured() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(ok(b"x", b"Connection: close\r\n"))

    server = Server(handler)
    async with server:
        p = pool(server.url)
        await get(p)
        await get(p)
        assert server.connections == 2
        await p.aclose()


async def test_idle_connection_closed_by_the_server_is_not_used() -> None:
    """The server answers one request per connection, then closes it (no
    Connection header: the client only learns by the EOF)."""
    served = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"once"))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        served.set()

    server = Server(handler)
    async with server:
        p = pool(server.url)
        assert await get(p) == (200, b"once")
        await served.wait()
        assert await get(p) == (200, b"once")
        assert server.connections == 2
        await p.aclose()


async def test_request_lost_on_a_reused_connection_is_sent_again() -> None:
    """The server takes the second request on a kept-alive connection and
    closes without a byte (as a server closing an idle connection does): the
    client resends it on a new connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"first"))
        if await server.read_request(reader):
            writer.transport.abort()  # reset, no answer

    server = Server(handler)
    async with server:
        p = pool(server.url)
        assert await get(p) == (200, b"first")
        assert await get(p) == (200, b"first")
        assert server.connections == 2
        await p.aclose()


async def test_new_connection_closed_without_an_answer_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    server = Server(handler)
    async with server:
        p = pool(server.url)
        with pytest.raises(http1.ConnectionClosed):
            await get(p)
        assert server.connections == 1  # not resent: it was not a reused connection
        assert p.open_connections == 0
        await p.aclose()


async def test_body_cut_short_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    server = Server(handler)
    async with server:
        p = pool(server.url)
        with pytest.raises(http1.ConnectionClosed):
            await get(p)
        await p.aclose()


async def test_silent_server_is_a_read_timeout() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await release.wait()

    server = Server(handler)
    async with server:
        p = pool(server.url, read_timeout_s=0.05)
        with pytest.raises(http1.ReadTimeout, match=r"no data for 0\.05 s"):
            await get(p)
        release.set()
        await p.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    async with Server(lambda r, w: asyncio.sleep(0)) as server:
        url = server.url
    p = pool(url)  # the server is gone: nothing listens on its port
    with pytest.raises(http1.ConnectError, match="ConnectionRefused"):
        await get(p)
    assert p.open_connections == 0
    await p.aclose()


@pytest.mark.parametrize(
    "answer, match",
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab", "not followed by CRLF"),
    ],
)
async def test_malformed_answers_are_protocol_errors(answer: bytes, match: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer)
        await reader.read()  # keep the connection open: the client must not hang

    server = Server(handler)
    async with server:
        p = pool(server.url)
        with pytest.raises(http1.ProtocolError, match=match):
            await get(p)
        assert p.open_connections == 0
        await p.aclose()


async def test_interim_100_continue_is_skipped(keep_alive_server: Server) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))
        await reader.read()

    server = Server(handler)
    async with server:
        p = pool(server.url)
        assert await get(p) == (200, b"final")
        await p.aclose()


async def test_a_large_body_arrives_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Far more than the buffer's high-water mark: reading pauses and resumes."""
    monkeypatch.setattr(http1, "HIGH_WATER", 4096)
    monkeypatch.setattr(http1, "LOW_WATER", 1024)
    payload = bytes(range(256)) * (4 * 4096 + 7)  # ~4 MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(payload))
        await writer.drain()
        await reader.read()

    server = Server(handler)
    async with server:
        p = pool(server.url)
        async with await p.request("GET", "/big") as resp:
            assert await resp.read() == payload
        await p.aclose()


async def test_pool_limit_queues_requests_and_times_out() -> None:
    release, both_arrived = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            if len(server.requests) == 2:
                both_arrived.set()
            await release.wait()
            writer.write(ok(b"done"))

    server = Server(handler)
    async with server:
        p = pool(server.url, limit=2, pool_timeout_s=0.1)
        busy = [asyncio.create_task(get(p)) for _ in range(2)]
        await both_arrived.wait()
        with pytest.raises(http1.ConnectError, match="all 2 connections stayed busy"):
            await get(p)
        # A waiter gets the first connection given back.
        waiting = asyncio.create_task(get(p))
        await asyncio.sleep(0)  # one step: the request is queued for a connection
        assert p.waiting_requests == 1
        release.set()
        assert await asyncio.gather(*busy, waiting) == [(200, b"done")] * 3
        assert server.connections == 2
        await p.aclose()


async def test_cancelled_waiter_does_not_lose_the_slot() -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            arrived.set()
            await release.wait()
            writer.write(ok(b"done"))

    server = Server(handler)
    async with server:
        p = pool(server.url, limit=1)
        busy = asyncio.create_task(get(p))
        await arrived.wait()
        waiter = asyncio.create_task(get(p))
        await asyncio.sleep(0)  # one step: the request is queued for the connection
        assert p.waiting_requests == 1
        waiter.cancel()
        release.set()
        assert await busy == (200, b"done")
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await get(p) == (200, b"done")  # the one slot is still usable
        assert p.open_connections == 1 and p.waiting_requests == 0
        await p.aclose()
        assert p.open_connections == 0


async def test_cancelled_stream_closes_its_connection() -> None:
    """Leaving a response unread closes the connection: how a client tells a
    streaming server to stop generating."""
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await reader.read()  # EOF: the client closed
        hung_up.set()

    server = Server(handler)
    async with server:
        p = pool(server.url)
        async with await p.request("GET", "/stream") as resp:
            assert await resp.read_some() == b"abc"
        await hung_up.wait()
        assert p.open_connections == 0
        await p.aclose()


async def test_keepalive_zero_never_reuses(keep_alive_server: Server) -> None:
    p = pool(keep_alive_server.url, keepalive_s=0.0)
    await get(p)
    await get(p)
    assert keep_alive_server.connections == 2
    assert p.open_connections == 0
    await p.aclose()


async def test_http_proxy_gets_absolute_targets_and_credentials(
    keep_alive_server: Server,
) -> None:
    p = pool(
        "http://backend.invalid:8000/base", proxy=keep_alive_server.url.replace("//", "//u:p%40ss@")
    )
    assert await get(p, "/v1/models") == (200, b"http://backend.invalid:8000/base/v1/models")
    head = keep_alive_server.requests[0]
    assert b"\r\nHost: backend.invalid:8000\r\n" in head
    assert b"\r\nProxy-Authorization: Basic dTpwQHNz\r\n" in head  # base64("u:p@ss")
    await p.aclose()


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


async def test_https_directly_and_through_a_connect_proxy(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the client trusts the test's CA
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await read_head(reader):
            writer.write(ok(b"secure " + head.split(b" ")[1]))

    async def read_head(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""

    tls_server = await asyncio.start_server(backend, "127.0.0.1", 0, ssl=tls)
    port = tls_server.sockets[0].getsockname()[1]
    tunnels: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        tunnels.append(head.split(b"\r\n")[0])
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    try:
        direct = pool(f"https://localhost:{port}")
        assert await get(direct, "/d") == (200, b"secure /d")
        await direct.aclose()
        tunnelled = pool(f"https://localhost:{port}", proxy=f"http://127.0.0.1:{proxy_port}")
        assert await get(tunnelled, "/t") == (200, b"secure /t")
        assert await get(tunnelled, "/t2") == (200, b"secure /t2")
        assert tunnels == [f"CONNECT localhost:{port} HTTP/1.1".encode()]  # one tunnel, reused
        await tunnelled.aclose()
    finally:
        tls_server.close()
        proxy_server.close()


async def test_proxy_refusing_the_tunnel_is_a_connect_error_and_closes_it() -> None:
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        await reader.read()  # EOF: the client closed the connection
        hung_up.set()

    server = Server(handler)
    async with server:
        p = pool("https://backend.invalid:8443", proxy=server.url)
        with pytest.raises(http1.ConnectError, match=r"refused CONNECT backend\.invalid:8443: 407"):
            await get(p)
        await hung_up.wait()
        assert p.open_connections == 0
        assert server.requests[0].startswith(b"CONNECT backend.invalid:8443 HTTP/1.1\r\n")
        await p.aclose()


async def test_bytes_sent_to_an_idle_connection_are_never_read_as_an_answer() -> None:
    """A server that sends more than its answer (here a whole second
    response, after the client has read the first): the connection is
    dropped, not reused, so every request still gets its own answer."""
    stray_sent = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections == 1:
            head = await server.read_request(reader)
            writer.write(ok(head.split(b" ")[1]))
            await writer.drain()
            await first_read.wait()
            writer.write(ok(b"STRAY"))
            await writer.drain()
            stray_sent.set()
        while head := await server.read_request(reader):
            writer.write(ok(head.split(b" ")[1]))

    first_read = asyncio.Event()
    server = Server(handler)
    async with server:
        p = pool(server.url)
        assert await get(p, "/a") == (200, b"/a")
        first_read.set()
        await stray_sent.wait()
        for _ in range(10_000):  # let the loop deliver the stray bytes (no timing involved)
            if p.open_connections == 0:
                break
            await asyncio.sleep(0)
        assert p.open_connections == 0  # the idle connection that got them was dropped
        assert await get(p, "/b") == (200, b"/b")
        assert await get(p, "/c") == (200, b"/c")
        assert server.connections == 2
        await p.aclose()


async def test_connections_closed_right_after_each_answer_lose_no_request() -> None:
    """The server closes every connection just after answering (no
    Connection: close); with one connection for three callers, a caller is
    often handed a connection that is already closing. Each request is sent
    again on a new connection, never failed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await server.read_request(reader)
        writer.write(ok(head.split(b" ")[1]))
        await writer.drain()

    server = Server(handler)
    async with server:
        p = pool(server.url, limit=1)
        for round_ in range(5):
            paths = [f"/r{round_}-{i}" for i in range(3)]
            answers = await asyncio.gather(*(get(p, path) for path in paths))
            assert answers == [(200, path.encode()) for path in paths]
        assert p.open_connections <= 1 and p.waiting_requests == 0
        await p.aclose()


async def test_both_transfer_encoding_and_content_length_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            )

    server = Server(handler)
    async with server:
        p = pool(server.url)
        assert await get(p) == (200, b"abc")  # framed by Transfer-Encoding
        assert await get(p) == (200, b"abc")
        assert server.connections == 2
        await p.aclose()


async def test_endless_interim_answers_are_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 50)
        await reader.read()

    server = Server(handler)
    async with server:
        p = pool(server.url)
        with pytest.raises(http1.ProtocolError, match="interim"):
            await get(p)
        await p.aclose()


async def test_a_host_name_that_cannot_be_encoded_is_a_connect_error() -> None:
    p = pool("http://" + "x" * 64 + ".invalid")  # a DNS label is at most 63 bytes
    with pytest.raises(http1.ConnectError):
        await get(p)
    assert p.open_connections == 0
    await p.aclose()


def test_unusable_proxies_are_refused() -> None:
    with pytest.raises(http1.UnusableProxy, match="proxy 'socks5://proxy:1080'"):
        pool("http://backend:8000", proxy="socks5://proxy:1080")
    with pytest.raises(http1.UnusableProxy, match="only http:// proxies"):
        pool("http://backend:8000", proxy="https://proxy:3128")
    assert pool("http://backend:8000", proxy="proxy:3128").proxy == http1.Origin(
        "http", "proxy", 3128, ""
    )


def test_unusable_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="only http:// and https://"):
        pool("ftp://host")
    with pytest.raises(ValueError, match="names no host"):
        pool("http://")
