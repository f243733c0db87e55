"""What every HTTP backend shares: the client, timeouts, and error translation.

The rule for errors, the same for Ollama and the OpenAI-compatible servers:
* the server cannot be reached (refused, DNS, connect timeout) -> -32003, with
  a message saying to start the server at its host;
* the server answered with an HTTP error -> the backend decides (404 on a
  model is -32001), otherwise -32000 carrying ``http_status``;
* the connection broke or went silent after streaming began -> -32002.

Each backend module keeps its own wire format; this module knows nothing of
NDJSON or SSE, only lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import httpx

from .. import protocol
from ..errors import BackendError
from ..protocol import InitParams
from .base import Backend

log = logging.getLogger(__name__)

# Connecting to a local daemon is quick; a slow connect means it is down.
CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
POOL_TIMEOUT_S = 30.0
# Probes (health, model lists) must answer fast or count as unreachable.
PROBE_TIMEOUT_S = 5.0
# Cap on how much of an upstream error body is copied into a message.
MAX_ERROR_TEXT = 2000


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
    text = body.decode("utf-8", errors="replace").strip()
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
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(
                connect=CONNECT_TIMEOUT_S,
                read=self.read_timeout_s,
                write=WRITE_TIMEOUT_S,
                pool=POOL_TIMEOUT_S,
            ),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

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

    def stream_object(self, model: str, text: str, what: str) -> dict[str, Any]:
        """One streamed JSON object (an NDJSON line, an SSE event's data); anything
        else is a -32002 stream error, since the stream can no longer be trusted."""
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{self.product} at {self.base_url} sent a {what} that is not JSON: {text[:200]!r}",
                self.error_data(model, http_status=200),
            ) from e
        if not isinstance(obj, dict):
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{self.product} at {self.base_url} sent a {what} that is not a JSON object: "
                f"{text[:200]!r}",
                self.error_data(model, http_status=200),
            )
        return obj

    async def get_json(self, path: str, model: str = "") -> tuple[int, Any]:
        """GET a probe endpoint: (status, parsed body or None). -32003 if unreachable."""
        try:
            resp = await self._client.get(path, timeout=PROBE_TIMEOUT_S)
        except httpx.TransportError as e:  # TimeoutException is a TransportError
            raise self.unreachable(model or self.model, e) from e
        try:
            body: Any = resp.json()
        except ValueError:
            body = None
        return resp.status_code, body

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

    async def stream_lines(
        self, model: str, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[str, None]:
        """POST ``body`` and yield the non-empty lines of a 200 streaming answer.

        The response is closed when the caller closes this generator, which is
        what makes the server stop generating on a cancel.
        """
        started = False
        try:
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    raise self.http_error(model, resp.status_code, await resp.aread())
                started = True
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield line
        except httpx.TimeoutException as e:
            if not started:
                raise self.unreachable(model, e) from e
            raise self.stream_broken(model, f"sent nothing for {self.read_timeout_s:g} s") from e
        except httpx.TransportError as e:
            if not started:
                raise self.unreachable(model, e) from e
            raise self.stream_broken(model, f"dropped the connection ({e})") from e
