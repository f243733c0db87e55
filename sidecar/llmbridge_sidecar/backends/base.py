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

    def error_data(self, model: str | None = None, **extra: Any) -> dict[str, Any]:
        """The ``data`` object every error reply carries."""
        return {"backend": self.name, "model": model or self.model, **extra}
