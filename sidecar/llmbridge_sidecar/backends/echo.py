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

The typed sampling controls: ``stop`` is honoured (the echo ends before the
first stop string, finish reason ``stop``); the others are accepted and do
nothing, as there is no sampler to steer. ``response_format`` is -32602 (an
echo is not JSON). ``embed`` returns deterministic 16-value vectors (each
word hashed into a bucket: texts sharing words point the same way);
``count_tokens`` counts words, as the usage does.

Between chunks it yields to the event loop, so concurrent streams interleave
and a ``$/cancelRequest`` stops a stream between two chunks. It exists so that
the bridge's own overhead (framing, JSON, dispatch) can be measured and
debugged without a model: ``bench/`` uses it.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import AsyncGenerator
from typing import Any

from .. import protocol
from ..protocol import InitParams, Usage
from .base import (
    Backend,
    ChatDone,
    ChatEvent,
    ChatRequest,
    EmbedRequest,
    EmbedResult,
    StopFilter,
    TextDelta,
)

DEFAULT_MODEL = "echo"
# What each chunk says with {"chunks": N}: short, like one token of a model.
CHUNK_TEXT = "tok "
# The size of the echo backend's embeddings.
EMBEDDING_SIZE = 16


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
        if request.response_format is not None:
            raise self.unsupported("response_format", "an echo is not JSON")
        finish_reason = "stop"
        if 0 < request.max_tokens < len(texts):
            texts = texts[: request.max_tokens]
            finish_reason = "length"
        stops = StopFilter(request.sampling.stop)
        sent = 0
        for text in texts:
            # Always a suspension point: streams interleave, cancels land here.
            await asyncio.sleep(delay)
            sent += 1
            piece = stops.feed(text)
            if piece:
                yield TextDelta(piece)
            if stops.stopped:
                finish_reason = "stop"
                break
        if tail := stops.flush():
            yield TextDelta(tail)
        yield ChatDone(
            usage=Usage(input_tokens=input_tokens, output_tokens=sent),
            finish_reason=finish_reason,
            model=request.model,
        )

    async def count_tokens(self, model: str, messages: list[protocol.Message]) -> int:
        return sum(len(m.content.split()) for m in messages)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self.refuse_dimensions(request, EMBEDDING_SIZE)
        return EmbedResult(
            embeddings=[_word_vector(text) for text in request.inputs],
            model=request.model,
            input_tokens=sum(len(text.split()) for text in request.inputs),
        )


def _word_vector(text: str) -> list[float]:
    """Counts of the words hashed into EMBEDDING_SIZE buckets (stable across runs:
    CRC32, not Python's salted hash)."""
    vector = [0.0] * EMBEDDING_SIZE
    for word in text.lower().split():
        vector[zlib.crc32(word.encode()) % EMBEDDING_SIZE] += 1.0
    return vector
