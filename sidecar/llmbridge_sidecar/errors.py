"""The one exception type that turns into a JSON-RPC error reply.

Backends raise ``BackendError`` with the JSON-RPC code that tells the bridge
what happened (connection refused, unknown model, ...); the server converts it
to an ``error`` object without guessing.
"""

from __future__ import annotations

from typing import Any


class BackendError(Exception):
    """An error with a JSON-RPC code, a message that says what to do, and data."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = dict(data or {})

    def to_error_object(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}
