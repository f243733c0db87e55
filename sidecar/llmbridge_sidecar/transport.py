"""Async newline-delimited JSON transport over the process's stdio.

Reading: one line per message from fd 0; a line longer than ``max_line_bytes``
is discarded (and reported to the caller as ``LineTooLong``) instead of
growing memory without bound or killing the reader.

Writing: each message is serialised to one whole line and queued; the lines
queued during one event-loop iteration are written together, in order, by one
callback scheduled at the end of that iteration. So concurrent request tasks
never interleave bytes, a message waits at most until the current iteration
ends (no timer, no added latency beyond that), and 64 streams that each
produce a chunk in the same iteration cost one write(2) instead of 64 (the
syscall was the sidecar's largest per-chunk cost; see BENCHMARKS.md). ``send``
then waits while the pipe is over its high-water mark (backpressure).

Pipes (what the C++ bridge gives us) use the event loop directly; other fd
kinds (regular files, /dev/null) cannot be polled by epoll, so they fall back
to a thread (reading) or to synchronous writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import jsonio

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
        self._loop: asyncio.AbstractEventLoop | None = None
        # Lines waiting for this iteration's flush; a flush is scheduled iff non-empty.
        self._pending: list[bytes] = []
        self._write_lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> StdioTransport:
        loop = self._loop = asyncio.get_running_loop()
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
        """Queue one message as one line; it is written when this loop iteration ends."""
        await self.send_line(jsonio.dumps(message) + b"\n")

    async def send_line(self, data: bytes) -> None:
        """``send`` for a message already encoded as one line ending in a newline."""
        if self._closed:
            raise TransportClosed("transport is closed")
        writer = self._writer
        if writer is None:
            # Not pollable (a regular file): write synchronously, at once.
            assert self._out_file is not None
            async with self._write_lock:
                try:
                    self._out_file.write(data)
                except (BrokenPipeError, ConnectionResetError) as e:
                    self._closed = True
                    raise TransportClosed(str(e)) from e
            return
        if not self._pending:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        try:
            # Returns at once unless the pipe's buffer is over the high-water mark.
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError) as e:
            self._closed = True
            raise TransportClosed(str(e)) from e

    def _flush(self) -> None:
        """Hand every queued line to the pipe transport in one write."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if self._writer is not None:
            # Write errors (EPIPE) do not raise here: the pipe transport records
            # them and the next drain() raises ConnectionResetError.
            self._writer.write(data)

    async def close(self) -> None:
        async with self._write_lock:
            if self._closed and self._writer is None:
                return
            self._closed = True
            if self._writer is not None:
                self._flush()  # what was sent before close still goes out
                try:
                    # Flush first: the pipe transport's close() does not wait for
                    # its buffer, and FlowControlMixin has no close waiter.
                    await self._writer.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the peer is gone; nothing left to flush to
                self._writer.close()
                self._writer = None
