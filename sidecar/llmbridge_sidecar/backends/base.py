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

from ..protocol import Message, ToolCall, Usage


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


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ChatDone:
    usage: Usage
    finish_reason: str
    model: str
    tool_calls: tuple[ToolCall, ...] = ()


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
