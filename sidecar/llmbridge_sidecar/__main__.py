"""Process entry point: argument parsing, stdout hygiene, logging, event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import stat
import sys
from collections.abc import Callable

from . import __version__
from .server import Server
from .transport import StdioTransport

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOOPS = ("auto", "uvloop", "asyncio")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sidecar.py",
        description=(
            "llmbridge sidecar: speaks JSON-RPC 2.0 on stdin/stdout (one JSON object per "
            "line) and forwards completions to a local model backend (ollama, llama.cpp, vllm, "
            "transformers, gguf). "
            "Started by the llmbridge server; logs go to stderr."
        ),
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LLMBRIDGE_SIDECAR_LOG_LEVEL", "INFO"),
        type=str.upper,
        choices=LOG_LEVELS,
        help="stderr log level (default: INFO, or $LLMBRIDGE_SIDECAR_LOG_LEVEL)",
    )
    parser.add_argument(
        "--loop",
        default=os.environ.get("LLMBRIDGE_SIDECAR_LOOP", "auto"),
        choices=LOOPS,
        help=(
            "event loop: uvloop (about 30%% less CPU per request, BENCHMARKS.md), "
            "asyncio (the standard library's), or auto: uvloop when stdin and stdout "
            "are pipes or sockets, as the server starts it, else asyncio "
            "(default: auto, or $LLMBRIDGE_SIDECAR_LOOP)"
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def claim_stdout() -> int:
    """Keep the real stdout for the protocol only; return its private fd.

    Anything else that writes to fd 1 (a stray print, llama.cpp's C code)
    would corrupt the JSON stream, so fd 1 becomes a copy of stderr.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)  # non-inheritable: child processes never get it
    os.dup2(2, 1)
    return protocol_fd


# Open files the sidecar wants: an HTTP backend's pool holds up to
# max_connections (default 1024) sockets, more than the usual soft limit.
WANTED_OPEN_FILES = 65536


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files towards the hard limit (no privilege needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def loop_factory(choice: str, in_fd: int, out_fd: int) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop to run on.

    uvloop only on pipes and sockets: its pipe transports abort the process
    on a regular file, where asyncio's raise and the transport falls back to
    a thread (transport.py), so ``auto`` keeps asyncio there.
    """
    if choice == "asyncio" or (choice == "auto" and not (_pollable(in_fd) and _pollable(out_fd))):
        return asyncio.new_event_loop
    import uvloop

    return uvloop.new_event_loop


async def serve(in_fd: int, out_fd: int) -> int:
    async with StdioTransport(in_fd, out_fd) as transport:
        return await Server(transport).run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s sidecar[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    protocol_fd = claim_stdout()
    raise_open_file_limit()
    logging.getLogger(__name__).info("llmbridge sidecar %s starting", __version__)
    try:
        factory = loop_factory(args.loop, 0, protocol_fd)
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(serve(0, protocol_fd))
    except KeyboardInterrupt:
        return 130
