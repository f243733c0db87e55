"""The interface every model backend implements.

A backend turns one chat request into an async stream of events: any number
of ``TextDelta`` and exactly one final ``ChatDone``. The server owns the
iteration and closes the stream (``contextlib.aclosing``) when the request is
cancelled, so a backend must release its resources in ``finally``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from ..protocol import Message, Usage


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Message]
    max_tokens: int = 0  # 0: the backend's default
    temperature: float | None = None  # None: the backend's default
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ChatDone:
    usage: Usage
    finish_reason: str
    model: str


ChatEvent = TextDelta | ChatDone


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the ``models`` reply."""

    name: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, **self.details}


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

    async def start(self) -> None:
        """Prepare for requests; errors here surface as the ``init`` reply."""

    @abstractmethod
    def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        """Stream the reply to ``request``."""

    async def aclose(self) -> None:
        """Release clients, models, threads."""

    async def list_models(self) -> list[ModelInfo]:
        """The models this backend can serve; in-process backends serve one."""
        return [ModelInfo(self.model)]

    async def health(self) -> HealthReport:
        """Whether requests can be served now. In-process: loaded means healthy."""
        return HealthReport(ok=True, message=f"{self.name} model {self.model!r} is loaded")

    def capabilities(self) -> dict[str, Any]:
        """Added to the ``init`` result's ``capabilities``."""
        return {"in_process": True}

    def error_data(self, model: str | None = None, **extra: Any) -> dict[str, Any]:
        """The ``data`` object every error reply carries."""
        return {"backend": self.name, "model": model or self.model, **extra}
