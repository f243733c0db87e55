"""Ollama backend: ``POST /api/chat`` with NDJSON streaming.

Always streams from Ollama (even for non-streaming ``complete``) so a cancel
closes the HTTP connection, which makes Ollama stop generating.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from .. import protocol
from ..errors import BackendError
from .base import Backend, ChatDone, ChatEvent, ChatRequest, TextDelta

log = logging.getLogger(__name__)

DEFAULT_HOST = "localhost:11434"
# Connecting to a local daemon is quick; a slow connect means it is down.
CONNECT_TIMEOUT_S = 10.0
# Between two NDJSON lines Ollama may be loading a model or evaluating a long
# prompt, which takes minutes on CPU: be generous but never infinite.
READ_TIMEOUT_S = 300.0
WRITE_TIMEOUT_S = 30.0
POOL_TIMEOUT_S = 30.0
# Cap on how much of an upstream error body we copy into a message.
MAX_ERROR_TEXT = 2000


def normalize_host(host: str | None) -> str:
    """``localhost:11434`` or ``http://h:p/`` -> ``http://h:p``."""
    host = (host or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    return host


def _error_text(body: bytes) -> str:
    """Ollama's ``{"error": "..."}`` text, or the raw body if it is not that."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:MAX_ERROR_TEXT]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])[:MAX_ERROR_TEXT]
    return text[:MAX_ERROR_TEXT]


class OllamaBackend(Backend):
    name = "ollama"

    def __init__(self, model: str, host: str | None, options: dict[str, Any]) -> None:
        super().__init__(model)
        self.base_url = normalize_host(host)
        self._init_options = options
        # Created here but connects lazily: init must not need a running Ollama.
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(
                connect=CONNECT_TIMEOUT_S,
                read=READ_TIMEOUT_S,
                write=WRITE_TIMEOUT_S,
                pool=POOL_TIMEOUT_S,
            ),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        options: dict[str, Any] = {**self._init_options, **request.options}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens > 0:
            options["num_predict"] = request.max_tokens
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [m.to_chat() for m in request.messages],
            "stream": True,
        }
        if options:
            body["options"] = options
        return body

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        model = request.model
        body = self.build_body(request)
        started = False  # whether Ollama answered 200 and streaming began
        try:
            async with self._client.stream("POST", "/api/chat", json=body) as resp:
                if resp.status_code != 200:
                    raise self._http_error(model, resp.status_code, await resp.aread())
                started = True
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    for event in self._parse_line(model, line):
                        yield event
                        if isinstance(event, ChatDone):
                            return
                raise BackendError(
                    protocol.STREAM_ERROR,
                    f"Ollama at {self.base_url} closed the stream for model {model!r} "
                    "before the final done line; check the Ollama server log",
                    self.error_data(model, http_status=200),
                )
        except httpx.TimeoutException as e:
            if not started:
                raise self._unreachable(model, e) from e
            raise BackendError(
                protocol.STREAM_ERROR,
                f"Ollama at {self.base_url} sent nothing for {READ_TIMEOUT_S:.0f} s "
                f"while generating with model {model!r}; is the machine overloaded?",
                self.error_data(model, http_status=200),
            ) from e
        except httpx.TransportError as e:
            if not started:
                raise self._unreachable(model, e) from e
            raise BackendError(
                protocol.STREAM_ERROR,
                f"connection to Ollama at {self.base_url} dropped mid-stream: {e}",
                self.error_data(model, http_status=200),
            ) from e

    def _unreachable(self, model: str, e: Exception) -> BackendError:
        return BackendError(
            protocol.CONNECTION_ERROR,
            f"cannot reach Ollama at {self.base_url}: is it running? "
            f"start it with 'ollama serve' ({type(e).__name__}: {e})",
            self.error_data(model),
        )

    def _http_error(self, model: str, status: int, body: bytes) -> BackendError:
        upstream = _error_text(body)
        data = self.error_data(model, http_status=status)
        if upstream:
            data["upstream_error"] = upstream
        if status == 404:
            return BackendError(
                protocol.MODEL_NOT_FOUND,
                f'model "{model}" not found at Ollama {self.base_url}: run \'ollama pull {model}\'',
                data,
            )
        return BackendError(
            protocol.BACKEND_ERROR,
            f"Ollama at {self.base_url} answered HTTP {status} for model {model!r}: "
            f"{upstream or '(empty body)'}",
            data,
        )

    def _parse_line(self, model: str, line: str) -> list[ChatEvent]:
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"Ollama at {self.base_url} sent a malformed stream line: {line[:200]!r}",
                self.error_data(model, http_status=200),
            ) from e
        if not isinstance(obj, dict):
            raise BackendError(
                protocol.STREAM_ERROR,
                f"Ollama at {self.base_url} sent a stream line that is not an object: "
                f"{line[:200]!r}",
                self.error_data(model, http_status=200),
            )
        if "error" in obj:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"Ollama at {self.base_url} reported an error mid-stream for model "
                f"{model!r}: {obj['error']}",
                self.error_data(model, http_status=200, upstream_error=str(obj["error"])),
            )
        events: list[ChatEvent] = []
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            events.append(TextDelta(content))
        if obj.get("done"):
            events.append(
                ChatDone(
                    usage=protocol.Usage(
                        input_tokens=int(obj.get("prompt_eval_count") or 0),
                        output_tokens=int(obj.get("eval_count") or 0),
                    ),
                    finish_reason=str(obj.get("done_reason") or "stop"),
                    model=str(obj.get("model") or model),
                )
            )
        return events
