"""Async newline-delimited JSON transport over the process's stdio.

Reading: one line per message from fd 0; a line longer than ``max_line_bytes``
is discarded (and reported to the caller as ``LineTooLong``) instead of
growing memory without bound or killing the reader.

Writing: each message is serialised to one line and written to the private
protocol fd under a lock, then drained, so concurrent request tasks never
interleave bytes and every message is flushed as soon as it is sent.

Pipes (what the C++ bridge gives us) use the event loop directly; other fd
kinds (regular files, /dev/null) cannot be polled by epoll, so they fall back
to a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LineTooLong:
    """Marker for an input line that exceeded the size cap and was dropped."""

    size: int


class TransportClosed(Exception):
    """The peer stopped reading our output (broken pipe)."""


class StdioTransport:
    """Reads lines from ``in_fd``, writes JSON lines to ``out_fd``.

    Use as ``async with StdioTransport(...) as t``; ``send`` may be called from
    any task of the same loop.
    """

    def __init__(
        self, in_fd: int, out_fd: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> None:
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._max_line = max_line_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._out_file: BinaryIO | None = None
        self._write_lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> StdioTransport:
        loop = asyncio.get_running_loop()
        reader = self._reader = asyncio.StreamReader(limit=self._max_line)
        try:
            in_file = os.fdopen(self._in_fd, "rb", buffering=0, closefd=False)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), in_file)
        except (ValueError, OSError):
            # Not a pipe/socket/tty: feed the same StreamReader from a thread.
            log.debug("stdin is not pollable; reading it on a thread")
            self._start_reader_thread(loop)
        self._out_file = os.fdopen(self._out_fd, "wb", buffering=0, closefd=False)
        try:
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, self._out_file
            )
            self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        except (ValueError, OSError):
            log.debug("protocol fd is not pollable; writing it synchronously")
            self._writer = None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _start_reader_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        reader = self._reader
        assert reader is not None

        def pump() -> None:
            while True:
                try:
                    chunk = os.read(self._in_fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    loop.call_soon_threadsafe(reader.feed_eof)
                    return
                loop.call_soon_threadsafe(reader.feed_data, chunk)

        # Daemon: a blocked read must not keep the process alive after shutdown.
        threading.Thread(target=pump, name="stdin-reader", daemon=True).start()

    async def lines(self) -> AsyncIterator[bytes | LineTooLong]:
        """Yield each input line (without the newline) until EOF."""
        reader = self._reader
        assert reader is not None, "use the transport as an async context manager"
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                # EOF: a final line without a newline still counts.
                if e.partial.strip():
                    yield e.partial
                return
            except asyncio.LimitOverrunError as e:
                yield LineTooLong(await self._discard_long_line(e.consumed))
                continue
            yield line.rstrip(b"\r\n")

    async def _discard_long_line(self, consumed: int) -> int:
        """Drop bytes up to and including the next newline; return how many."""
        reader = self._reader
        assert reader is not None
        dropped = 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
                return dropped + len(line)
            except asyncio.LimitOverrunError as e:
                # No newline in the buffer yet: throw away what is there.
                chunk = await reader.read(max(e.consumed, 1))
                dropped += len(chunk)
            except asyncio.IncompleteReadError as e:
                return dropped + len(e.partial)

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message as one line and flush it."""
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        async with self._write_lock:
            if self._closed:
                raise TransportClosed("transport is closed")
            try:
                if self._writer is not None:
                    self._writer.write(data)
                    await self._writer.drain()
                else:
                    assert self._out_file is not None
                    self._out_file.write(data)
            except (BrokenPipeError, ConnectionResetError) as e:
                self._closed = True
                raise TransportClosed(str(e)) from e

    async def close(self) -> None:
        async with self._write_lock:
            if self._closed and self._writer is None:
                return
            self._closed = True
            if self._writer is not None:
                try:
                    # Flush first: the pipe transport's close() does not wait for
                    # its buffer, and FlowControlMixin has no close waiter.
                    await self._writer.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the peer is gone; nothing left to flush to
                self._writer.close()
                self._writer = None
