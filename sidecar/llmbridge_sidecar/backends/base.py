"""The interface every model backend implements.

A backend turns one chat request into an async stream of events: any number
of ``TextDelta`` and exactly one final ``ChatDone``, which carries the tool
calls the model made (when the request offered ``tools``). The server owns the
iteration and closes the stream (``contextlib.aclosing``) when the request is
cancelled, so a backend must release its resources in ``finally``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..errors import BackendError
from ..protocol import Message, ResponseFormat, Sampling, ToolCall, Usage


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: a function name unique in the request."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    def to_openai(self) -> dict[str, Any]:
        """The ``{"type": "function", "function": ...}`` shape Ollama and OpenAI share."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Message]
    max_tokens: int = 0  # 0: the backend's default
    temperature: float | None = None  # None: the backend's default
    options: dict[str, Any] = field(default_factory=dict)
    tools: tuple[ToolSpec, ...] = ()  # only sent when the backend supports tools
    sampling: Sampling = field(default_factory=Sampling)
    response_format: ResponseFormat | None = None


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    inputs: tuple[str, ...]
    dimensions: int = 0  # 0: the model's own size


@dataclass(frozen=True)
class EmbedResult:
    embeddings: list[list[float]]  # one per input, in order
    model: str
    input_tokens: int = 0


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ChatDone:
    usage: Usage
    finish_reason: str  # the backend's own word; see normalize_finish_reason
    model: str
    tool_calls: tuple[ToolCall, ...] = ()


# What clients see as finish_reason, whatever the backend said: Ollama's
# done_reason ("stop", "length", "load", "unload"), OpenAI-compatible
# servers' finish_reason ("stop", "length", "tool_calls", "function_call",
# "content_filter", vLLM's "abort", "error"), llama-cpp-python's and ours.
# A reason not listed (a backend's new word) is "stop": the model ended.
FINISH_REASONS = {
    "stop": "stop",
    "eos": "stop",
    "load": "stop",
    "unload": "stop",
    "content_filter": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "abort": "cancelled",
    "cancelled": "cancelled",
    "error": "error",
}


def normalize_finish_reason(done: ChatDone) -> str:
    """``stop``, ``length``, ``tool_calls``, ``cancelled`` or ``error``."""
    if done.tool_calls:
        return "tool_calls"  # Ollama says "stop" after a turn of tool calls
    return FINISH_REASONS.get(done.finish_reason, "stop")


ChatEvent = TextDelta | ChatDone


@dataclass(frozen=True)
class ModelInfo:
    """One model in the ``models`` reply."""

    name: str
    # The engine's own fields for it (an Ollama tag, an OpenAI model object),
    # passed through as they came.
    upstream: dict[str, Any] = field(default_factory=dict)
    # What is known about it in one shape for every backend (model_details).
    details: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        passed = {k: v for k, v in self.upstream.items() if k not in ("name", "details")}
        return {"name": self.name, **passed, "details": self.details}


@dataclass(frozen=True)
class HealthReport:
    """The ``health`` reply: never an error, so a health check can always read it."""

    ok: bool
    message: str
    http_status: int | None = None


class Backend(ABC):
    name: str

    def __init__(self, model: str) -> None:
        self.model = model
        # In-process backends: the loaded model's normalised details
        # (model_details), read once at load; a loaded model does not change.
        self.details: dict[str, Any] = {}

    async def start(self) -> None:
        """Prepare for requests; errors here surface as the ``init`` reply."""

    @abstractmethod
    def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        """Stream the reply to ``request``."""

    async def aclose(self) -> None:
        """Release clients, models, threads."""

    async def list_models(self) -> list[ModelInfo]:
        """The models this backend can serve; in-process backends serve one."""
        return [ModelInfo(self.model, details=self.details)]

    async def describe_model(self, listed: list[ModelInfo]) -> ModelInfo | None:
        """The model ``init`` configured (None if it named none), with what the
        backend knows about it; ``listed`` is ``list_models``' answer. Details
        are best effort: a source that fails leaves its keys out, never raises.
        Must stay cheap (no generation): ``models`` may be polled."""
        if not self.model:
            return None
        match = next((m for m in listed if m.name == self.model), None)
        return ModelInfo(self.model, details=match.details if match else {})

    async def health(self) -> HealthReport:
        """Whether requests can be served now. In-process: loaded means healthy."""
        return HealthReport(ok=True, message=f"{self.name} model {self.model!r} is loaded")

    def capabilities(self) -> dict[str, Any]:
        """Added to the ``init`` result's ``capabilities``."""
        return {"in_process": True}

    def tools_unsupported(self) -> str | None:
        """Why this backend cannot call tools, or None when it can."""
        return f"the {self.name} backend does not support tools"

    def error_data(self, model: str | None = None, **extra: Any) -> dict[str, Any]:
        """The ``data`` object every error reply carries."""
        return {"backend": self.name, "model": model or self.model, **extra}

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """One vector per input; -32601 where the backend cannot embed."""
        raise BackendError(
            protocol.METHOD_NOT_FOUND,
            f"embed is not supported by the {self.name} backend",
            self.error_data(request.model),
        )

    async def count_tokens(self, model: str, messages: list[Message]) -> int:
        """The prompt's tokens with the model's chat template, as ``chat`` would
        send it; -32601 where the backend cannot tell."""
        raise BackendError(
            protocol.METHOD_NOT_FOUND,
            f"count_tokens is not supported by the {self.name} backend",
            self.error_data(model),
        )

    def unsupported(self, field: str, why: str) -> BackendError:
        """-32602 for a request field this backend cannot honour (never ignored)."""
        return BackendError(
            protocol.INVALID_PARAMS,
            f"invalid params: '{field}' is not supported by the {self.name} backend: {why}",
            self.error_data(field=field),
        )

    def native_sampling(
        self, sampling: Sampling, names: dict[str, str], why_not: dict[str, str]
    ) -> dict[str, Any]:
        """The sampling controls the request set, under the backend's own names
        (``names``: wire name -> native name); -32602 for the first one the
        backend has no name for, saying ``why_not`` it."""
        native: dict[str, Any] = {}
        for control, value in sampling.given().items():
            if control not in names:
                raise self.unsupported(
                    control, why_not.get(control, "it has no such sampling control")
                )
            native[names[control]] = value
        return native

    def refuse_dimensions(self, request: EmbedRequest, size: int) -> None:
        """In-process models have one embedding size: ``dimensions`` may only repeat it."""
        if request.dimensions not in (0, size):
            raise self.unsupported(
                "dimensions",
                f"model {self.model!r} makes embeddings of {size} values and cannot "
                "shorten them; leave dimensions at 0",
            )


class StopFilter:
    """Streamed text cut before the first stop string, for engines that stop
    only after one (transformers' ``stop_strings``) or not at all (echo).

    ``feed`` returns what may go out now: a tail that could be the start of
    a stop string is held back until the next piece tells. Once a stop
    string appeared, ``stopped`` is set and nothing more goes out.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        held = self._held + text
        cut = min((i for i in (held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return held[:cut]
        keep = max(
            (n for s in self._stops for n in range(1, len(s)) if held.endswith(s[:n])),
            default=0,
        )
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep]

    def flush(self) -> str:
        """The held-back tail, at the end of the stream (no stop string came)."""
        tail, self._held = self._held, ""
        return tail


def token_count(value: Any) -> int:
    """A count a backend reported (usage fields): a non-negative integer, or 0
    for anything else (a count is informational; a wrong type never fails a call)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if value != value or value in (float("inf"), float("-inf")):
        return 0
    return max(0, int(value))


def is_vector(value: Any) -> bool:
    """A list of numbers (an embedding, as a backend sent it)."""
    return isinstance(value, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    )


def make_tool_call(call_id: str, name: str, arguments: Any) -> ToolCall:
    """A ``ToolCall`` from a backend's arguments: an object, or JSON text of one."""
    if isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, arguments=arguments)
    raw = arguments if isinstance(arguments, str) else None
    if raw is None and arguments is not None:
        return ToolCall(
            call_id, name, {}, None, f"arguments must be a JSON object, not {arguments!r:.200}"
        )
    if raw is None or not raw.strip():
        return ToolCall(call_id, name, {}, raw)
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        return ToolCall(call_id, name, {}, raw, f"arguments are not valid JSON ({e}): {raw:.200}")
    if not isinstance(parsed, dict):
        return ToolCall(call_id, name, {}, raw, f"arguments must be a JSON object: {raw:.200}")
    return ToolCall(call_id, name, parsed, raw)
