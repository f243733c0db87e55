"""Which event loop the sidecar runs on (``--loop``): uvloop on the server's
pipes, asyncio where uvloop's transports cannot go (regular files)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvloop

from conftest import start_sidecar
from llmbridge_sidecar.__main__ import loop_factory


def test_auto_picks_uvloop_on_pipes_and_asyncio_on_regular_files(tmp_path: Any) -> None:
    read_fd, write_fd = os.pipe()
    with open(tmp_path / "file", "wb") as regular:
        try:
            assert loop_factory("auto", read_fd, write_fd) is uvloop.new_event_loop
            assert loop_factory("auto", read_fd, regular.fileno()) is asyncio.new_event_loop
            assert loop_factory("auto", regular.fileno(), write_fd) is asyncio.new_event_loop
            assert loop_factory("asyncio", read_fd, write_fd) is asyncio.new_event_loop
            assert loop_factory("uvloop", read_fd, write_fd) is uvloop.new_event_loop
        finally:
            os.close(read_fd)
            os.close(write_fd)


async def test_asyncio_can_be_chosen_and_serves_the_same() -> None:
    for loop in ("asyncio", "uvloop"):
        sc = await start_sidecar("--loop", loop)
        try:
            reply = await sc.call("health")
            assert reply["result"]["ok"] is False, reply  # no backend yet
            await sc.close_stdin()
            assert await sc.wait() == 0
        finally:
            if sc.proc.returncode is None:
                sc.proc.kill()
                await sc.proc.wait()
