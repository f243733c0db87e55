"""What every HTTP backend shares: the client, timeouts, and error translation.

The rule for errors, the same for Ollama and the OpenAI-compatible servers:
* the server cannot be reached (refused, DNS, connect timeout) -> -32003, with
  a message saying to start the server at its host;
* the server answered with an HTTP error -> the backend decides (404 on a
  model is -32001), otherwise -32000 carrying ``http_status``;
* the connection broke or went silent after streaming began -> -32002.

The client: one ``http1.Pool`` per backend, alive as long as the backend,
with up to ``max_connections`` keep-alive connections (init option
``max_connections``, default 1024). ``http1`` is the sidecar's own small
HTTP/1.1 client, chosen over aiohttp, httpx and httpcore by
bench/http_clients.py (see BENCHMARKS.md): the least CPU per request and no
collapse at high concurrency. Connections are reused: a stream is read
to its end (``LineStream.finish``) before the answer completes, and error
bodies are read whole. A cancelled stream closes its connection instead:
HTTP/1.1 has no other way to tell the server to stop generating. Idle
connections are dropped after ``KEEPALIVE_S``, before the 5 s after which
uvicorn (vLLM) and llama.cpp's server close them, so a request never goes out
on a connection the server is closing.

Each backend module keeps its own wire format; this module knows nothing of
NDJSON or SSE, only lines (bytes, without the line ending).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .. import jsonio, protocol
from ..errors import BackendError
from ..protocol import InitParams
from . import http1
from .base import Backend

log = logging.getLogger(__name__)

# Connecting to a local daemon is quick; a slow connect means it is down.
CONNECT_TIMEOUT_S = 10.0
# Longest wait for a free connection when all max_connections are busy.
POOL_TIMEOUT_S = 30.0
# Probes (health, model lists) must answer fast or count as unreachable.
PROBE_TIMEOUT_S = 5.0
# Idle pooled connections are closed after this (servers close theirs after 5 s).
KEEPALIVE_S = 4.0
# After a stream's last line, how long and how much to read to reach the end of
# the response (normally nothing is left but the chunked terminator, already
# read): past either, the connection is closed instead of reused.
FINISH_TIMEOUT_S = 1.0
FINISH_MAX_BYTES = 64 * 1024
# Longest line a stream may send (the sidecar's own protocol line cap).
MAX_LINE_BYTES = 16 * 1024 * 1024
# Cap on how much of an upstream error body is copied into a message.
MAX_ERROR_TEXT = 2000
# How much of an error body is read (the rest is dropped with the connection).
MAX_ERROR_BODY_BYTES = 64 * 1024
# Largest whole answer read: probes (model lists) and POSTs (embeddings,
# token counts). Past it the answer is refused as broken.
MAX_BODY_BYTES = 256 * 1024 * 1024
JSON_HEADERS = {"Content-Type": "application/json"}
# Errors of the HTTP client that mean "the connection failed" (TimeoutError:
# a probe's overall deadline).
TRANSPORT_ERRORS = (http1.TransportError, TimeoutError)


def normalize_host(host: str | None, default: str) -> str:
    """``localhost:11434`` or ``http://h:p/`` -> ``http://h:p``."""
    host = (host or default).strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    return host


def error_text(body: bytes) -> str:
    """The message of an error body, whatever shape the server used.

    Shapes seen in the field: Ollama ``{"error": "..."}``; OpenAI, llama.cpp
    and vLLM >= 0.10.1 ``{"error": {"message", "type", "code"}}``; older vLLM
    ``{"object": "error", "message": ...}``; FastAPI ``{"detail": ...}``.
    Anything else is returned as raw text.
    """
    text = _text(body).strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:MAX_ERROR_TEXT]
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, str):
            return err[:MAX_ERROR_TEXT]
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:MAX_ERROR_TEXT]
        if isinstance(parsed.get("message"), str):
            return str(parsed["message"])[:MAX_ERROR_TEXT]
        if "detail" in parsed:
            return json.dumps(parsed["detail"])[:MAX_ERROR_TEXT]
    return text[:MAX_ERROR_TEXT]


def environment_proxy(base_url: str) -> str | None:
    """The proxy HTTP_PROXY / NO_PROXY name for ``base_url``, looked up once.

    (The client does not read the environment per request: that costs a scan
    of os.environ on every request.)
    """
    parts = urlsplit(base_url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy is None or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


class LineStream:
    """A 200 streaming answer, read as batches of lines (``async for lines in stream``).

    Each batch is every complete, non-blank line received so far (at least
    one), without line endings: a server that is ahead of the sidecar (a
    fast engine, a burst after a stall) is relayed as fewer, larger pieces,
    and a server that sends one line at a time as one line per batch.

    Use as ``async with backend.stream(...) as stream``. After the last line
    the backend expects, ``await stream.finish()`` reads the response to its
    end so the connection goes back to the pool; leaving the block without it
    (an error, a cancel) closes the connection, which tells the server to stop.
    """

    def __init__(self, backend: HttpBackend, model: str, resp: http1.Response) -> None:
        self._backend = backend
        self._model = model
        self._resp = resp
        self._partial = bytearray()  # the start of a line whose end has not arrived
        self._eof = False

    async def __aenter__(self) -> LineStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # No-op when finish() already gave the connection back.
        self._resp.close()

    def __aiter__(self) -> LineStream:
        return self

    async def __anext__(self) -> list[bytes]:
        """The next batch of non-blank lines."""
        partial = self._partial
        while not self._eof:
            data = await self._read()
            if not data:
                self._eof = True
                last = bytes(partial).rstrip(b"\r")
                partial.clear()
                if last.strip():
                    return [last]
                break
            searched = len(partial)  # what is already buffered holds no line end
            partial += data
            end = partial.rfind(b"\n", searched)
            if end < 0:
                if len(partial) > MAX_LINE_BYTES:
                    raise self._backend.stream_broken(
                        self._model, f"sent a line longer than {MAX_LINE_BYTES} bytes"
                    )
                continue
            complete = bytes(partial[:end])
            del partial[: end + 1]
            if len(partial) > MAX_LINE_BYTES or (
                len(complete) > MAX_LINE_BYTES
                and max(map(len, complete.split(b"\n"))) > MAX_LINE_BYTES
            ):
                raise self._backend.stream_broken(
                    self._model, f"sent a line longer than {MAX_LINE_BYTES} bytes"
                )
            lines = [
                line[:-1] if line.endswith(b"\r") else line
                for line in complete.split(b"\n")
                if line.strip()
            ]
            if lines:
                return lines
        raise StopAsyncIteration

    async def texts(self, read_line: Callable[[bytes, list[str]], bool]) -> AsyncIterator[str]:
        """The answer's text, one piece per batch of lines.

        ``read_line(line, texts)`` reads one line, appends the text it
        carries to ``texts`` and returns True at the last line the backend
        sends (the batch's remaining lines are not read). Text read before a
        line that raises ``BackendError`` is yielded before the error.
        """
        async for batch in self:
            texts: list[str] = []
            last = False
            try:
                for line in batch:
                    if read_line(line, texts):
                        last = True
                        break
            except BackendError:
                if texts:
                    yield "".join(texts)
                raise
            if texts:
                yield "".join(texts)
            if last:
                return

    async def _read(self) -> bytes:
        try:
            return await self._resp.read_some()
        except http1.ReadTimeout as e:  # the server went silent
            raise self._backend.stream_broken(
                self._model, f"sent nothing for {self._backend.read_timeout_s:g} s"
            ) from e
        except http1.TransportError as e:
            raise self._backend.stream_broken(
                self._model, f"dropped the connection ({type(e).__name__}: {e})"
            ) from e

    async def finish(self) -> None:
        """Read what is left of the response (normally nothing), releasing the connection."""
        if self._resp.at_end:  # the usual case: the end arrived with the last event
            self._resp.release()
            return
        if not self._resp.reusable:
            return  # ends only when the server closes: __aexit__ closes it now
        left = FINISH_MAX_BYTES
        try:
            async with asyncio.timeout(FINISH_TIMEOUT_S):
                while left >= 0 and (data := await self._resp.read_some()):
                    left -= len(data)
        except TRANSPORT_ERRORS:
            return  # __aexit__ closes the connection
        if left >= 0:
            self._resp.release()


class HttpBackend(Backend):
    """A backend reached over HTTP at ``base_url``; subclasses add the wire format."""

    # What the user must start, for messages ("Ollama", "llama.cpp server", ...).
    product: str
    # How to start it, for the unreachable message.
    start_hint: str

    def __init__(self, model: str, host: str | None, default_host: str, params: InitParams) -> None:
        super().__init__(model)
        self.base_url = normalize_host(host, default_host)
        self.host = self.base_url.split("://", 1)[1]
        self.startup_timeout_s = params.startup_timeout_s
        # Between two stream lines a server may be loading a model or
        # evaluating a long prompt, which takes minutes on CPU.
        self.read_timeout_s = params.read_timeout_s
        self.max_connections = params.max_connections
        try:
            self._pool = http1.Pool(
                self.base_url,
                limit=self.max_connections,
                keepalive_s=KEEPALIVE_S,
                connect_timeout_s=CONNECT_TIMEOUT_S,
                pool_timeout_s=POOL_TIMEOUT_S,
                read_timeout_s=self.read_timeout_s,
                proxy=environment_proxy(self.base_url),
            )
        except http1.UnusableProxy as e:
            raise BackendError(
                protocol.CONNECTION_ERROR,
                f"cannot reach {self.base_url} through the environment's proxy: {e}; "
                "fix HTTP_PROXY/HTTPS_PROXY, or name the host in NO_PROXY",
            ) from e
        except ValueError as e:
            raise protocol.invalid_params("host", f"is not a usable server address: {e}") from e

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> http1.Response:
        return await self._pool.request(
            method,
            path,
            jsonio.dumps(body) if body is not None else None,
            JSON_HEADERS if body is not None else None,
        )

    @abstractmethod
    def http_error(self, model: str, status: int, body: bytes) -> BackendError:
        """The error for a non-200 answer to a chat request."""

    def unreachable(self, model: str, e: Exception) -> BackendError:
        return BackendError(
            protocol.CONNECTION_ERROR,
            f"cannot reach {self.product} at {self.base_url}: start {self.product} at host "
            f"{self.host} ({self.start_hint}) ({type(e).__name__}: {e})",
            self.error_data(model),
        )

    def stream_broken(self, model: str, why: str) -> BackendError:
        return BackendError(
            protocol.STREAM_ERROR,
            f"{self.product} at {self.base_url} {why} while generating with model {model!r}; "
            f"check the {self.product} log",
            self.error_data(model, http_status=200),
        )

    def stream_object(self, model: str, raw: bytes, what: str) -> dict[str, Any]:
        """One streamed JSON object (an NDJSON line, an SSE event's data); anything
        else is a -32002 stream error, since the stream can no longer be trusted."""
        try:
            obj = jsonio.loads_event(raw)
        except (ValueError, RecursionError) as e:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{self.product} at {self.base_url} sent a {what} that is not JSON: "
                f"{_text(raw[:200])!r}",
                self.error_data(model, http_status=200),
            ) from e
        if not isinstance(obj, dict):
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{self.product} at {self.base_url} sent a {what} that is not a JSON object: "
                f"{_text(raw[:200])!r}",
                self.error_data(model, http_status=200),
            )
        return obj

    async def get_json(self, path: str, model: str = "") -> tuple[int, Any]:
        """GET a probe endpoint: (status, parsed body or None). -32003 if unreachable."""
        return await self._probe("GET", path, None, model)

    async def optional_json(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        """A best-effort metadata call (model details): the parsed 200 answer,
        or None, logged, when the server cannot be reached or answers otherwise."""
        try:
            status, parsed = await self._probe(method, path, body, "")
        except BackendError as e:
            log.warning("model details: %s", e.message)
            return None
        if status != 200:
            log.warning(
                "model details: %s at %s answered %s %s with HTTP %d",
                self.product,
                self.base_url,
                method,
                path,
                status,
            )
            return None
        return parsed

    async def _probe(
        self, method: str, path: str, body: dict[str, Any] | None, model: str
    ) -> tuple[int, Any]:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                status, raw = await self._whole(method, path, body)
        except TRANSPORT_ERRORS as e:
            raise self.unreachable(model or self.model, e) from e
        try:
            parsed: Any = jsonio.loads(raw)
        except ValueError:
            parsed = None
        return status, parsed

    async def wait_until(self, probe_name: str, ready: Callable[[], Awaitable[bool]]) -> None:
        """Poll ``ready()`` (async, True when ready) until ``startup_timeout_s``.

        Used for servers that answer "loading" for a while after they start.
        """
        deadline = time.monotonic() + self.startup_timeout_s
        delay = 0.05
        while not await ready():
            if time.monotonic() >= deadline:
                raise BackendError(
                    protocol.CONNECTION_ERROR,
                    f"{self.product} at {self.base_url} was still {probe_name} after "
                    f"{self.startup_timeout_s:g} s: wait for it to finish, or raise the "
                    "startup timeout (init options.startup_timeout_s)",
                    self.error_data(http_status=503),
                )
            # Polling a condition with a deadline, backing off to 1 s.
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    async def post(self, model: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """POST ``body`` and read the whole answer: (status, body). -32003 when
        the server cannot be reached."""
        try:
            return await self._whole("POST", path, body)
        except TRANSPORT_ERRORS as e:
            raise self.unreachable(model, e) from e

    async def _whole(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, bytes]:
        """(status, body) of an answer read whole, so its connection is reused."""
        async with await self._request(method, path, body) as resp:
            if resp.status != 200:
                raw = await resp.read_up_to(MAX_ERROR_BODY_BYTES)
            else:
                raw = await resp.read(MAX_BODY_BYTES)
            resp.release()  # closes it instead when the error body was cut short
            return resp.status, raw

    async def post_json(
        self, model: str, path: str, body: dict[str, Any], missing: BackendError | None = None
    ) -> dict[str, Any]:
        """POST ``body``: the JSON object of a 200 answer; ``missing`` for a 404
        when given (the server lacks the endpoint), else ``http_error`` for any
        other status; -32000 for a 200 that is not a JSON object."""
        status, raw = await self.post(model, path, body)
        if status == 404 and missing is not None:
            raise missing
        if status != 200:
            raise self.http_error(model, status, raw)
        try:
            answer = jsonio.loads(raw)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise BackendError(
                protocol.BACKEND_ERROR,
                f"{self.product} at {self.base_url} answered POST {path} with a body that is "
                f"not a JSON object: {_text(raw[:200])!r}",
                self.error_data(model, http_status=status),
            )
        return answer

    async def stream(self, model: str, path: str, body: dict[str, Any]) -> LineStream:
        """POST ``body``; the 200 streaming answer as a ``LineStream``.

        -32003 when the server cannot be reached (or fails before answering),
        ``http_error`` for any other status (its body read whole, so the
        connection is reused).
        """
        try:
            resp = await self._request("POST", path, body)
        except TRANSPORT_ERRORS as e:
            raise self.unreachable(model, e) from e
        if resp.status != 200:
            try:
                raw = await resp.read_up_to(MAX_ERROR_BODY_BYTES)
                resp.release()
            except TRANSPORT_ERRORS as e:
                raise self.unreachable(model, e) from e
            finally:
                resp.close()  # no-op once released
            raise self.http_error(model, resp.status, raw)
        return LineStream(self, model, resp)
