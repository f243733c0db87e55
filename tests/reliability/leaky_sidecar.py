#!/usr/bin/env python3
"""The soak's control: the real sidecar, made to leak on purpose. Every
completion keeps 32 KiB of memory, and every tenth one an open file, that
are never released. `run soak --control-leak` starts the server with
`--sidecar=` this file to show that the soak's growth check can fail.
Test-only: nothing in the product refers to it."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sidecar"))

from llmbridge_sidecar.__main__ import main  # noqa: E402
from llmbridge_sidecar.backends import echo  # noqa: E402

LEAKED: list[Any] = []
_chat = echo.EchoBackend.chat


async def leaky_chat(self: echo.EchoBackend, request: Any) -> AsyncGenerator[Any, None]:
    LEAKED.append(b"\x01" * (32 * 1024))  # filled, so the pages are resident
    if len(LEAKED) % 10 == 0:
        LEAKED.append(os.open(os.devnull, os.O_RDONLY))
    async for event in _chat(self, request):
        yield event


echo.EchoBackend.chat = leaky_chat  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
