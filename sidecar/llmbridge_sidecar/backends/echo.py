"""Echo backend: a DEBUGGING AND BENCHMARK backend, not for production.

It runs no model. It answers at once, streaming back the words of the last
user message (one chunk per word; the chunks join to the words separated by
single spaces), or, with the request option ``{"chunks": N}``, N chunks of a
fixed short text. ``max_tokens`` caps the number of chunks (finish reason
``length``). Usage counts are words: ``input_tokens`` over every message,
``output_tokens`` the chunks sent.

Request options (all optional):

* ``chunks``: a non-negative integer; send this many copies of ``CHUNK_TEXT``
  instead of echoing.
* ``delay_ms``: a non-negative number; wait this long before each chunk
  (lets tests cancel a stream midway).

Between chunks it yields to the event loop, so concurrent streams interleave
and a ``$/cancelRequest`` stops a stream between two chunks. It exists so that
the bridge's own overhead (framing, JSON, dispatch) can be measured and
debugged without a model: ``bench/`` uses it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from typing import Any

from .. import protocol
from ..protocol import InitParams, Usage
from .base import Backend, ChatDone, ChatEvent, ChatRequest, TextDelta

DEFAULT_MODEL = "echo"
# What each chunk says with {"chunks": N}: short, like one token of a model.
CHUNK_TEXT = "tok "


def _chunk_count(options: dict[str, Any]) -> int | None:
    value = options.get("chunks")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise protocol.invalid_params("options.chunks", "must be a non-negative integer")
    return value


def _delay_s(options: dict[str, Any]) -> float:
    value = options.get("delay_ms")
    if value is None:
        return 0.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise protocol.invalid_params("options.delay_ms", "must be a non-negative number")
    return float(value) / 1000.0


class EchoBackend(Backend):
    """Echoes instantly; see the module docstring. Debugging/benchmarks only."""

    name = "echo"

    def __init__(self, params: InitParams) -> None:
        super().__init__(params.model or DEFAULT_MODEL)

    def capabilities(self) -> dict[str, Any]:
        return {"in_process": True, "debug": True}

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        count = _chunk_count(request.options)
        delay = _delay_s(request.options)
        input_tokens = sum(len(m.content.split()) for m in request.messages)
        if count is None:
            last_user = next(
                (m.content for m in reversed(request.messages) if m.role == "user"), ""
            )
            words = last_user.split()
            texts = [w if i == 0 else " " + w for i, w in enumerate(words)]
        else:
            texts = [CHUNK_TEXT] * count
        finish_reason = "stop"
        if 0 < request.max_tokens < len(texts):
            texts = texts[: request.max_tokens]
            finish_reason = "length"
        for text in texts:
            # Always a suspension point: streams interleave, cancels land here.
            await asyncio.sleep(delay)
            yield TextDelta(text)
        yield ChatDone(
            usage=Usage(input_tokens=input_tokens, output_tokens=len(texts)),
            finish_reason=finish_reason,
            model=request.model,
        )
