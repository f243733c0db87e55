"""JSON-RPC dispatch: one asyncio task per request, cancellable by id.

Invariants:
* Every request gets exactly one reply. A request leaves ``_requests`` (the
  only place a cancel can find it) before its reply is written, so a cancel
  that races the end of a request cannot produce a second reply.
* Bad input never stops the reader: it becomes an error reply.
* When input ends or ``shutdown`` is called, every pending request is
  cancelled and still answered (-32800), then backends are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import __version__, protocol
from .backends import create_backend
from .backends.base import Backend, ChatDone, ChatRequest, TextDelta
from .errors import BackendError
from .protocol import RequestId
from .transport import LineTooLong, StdioTransport, TransportClosed

log = logging.getLogger(__name__)

Handler = Callable[[RequestId, Any], Awaitable[Any]]


class Server:
    def __init__(self, transport: StdioTransport) -> None:
        self._transport = transport
        self._backend: Backend | None = None
        self._backend_name = ""
        self._init_lock = asyncio.Lock()
        # Requests that may still be cancelled, by id.
        self._requests: dict[RequestId, asyncio.Task[None]] = {}
        # Every task we started (requests and stream.start streams), for shutdown.
        self._tasks: set[asyncio.Task[None]] = set()
        # stream.start streams: no id, so only shutdown can cancel them.
        self._seed_streams: set[asyncio.Task[None]] = set()
        self._shutdown_requested = asyncio.Event()
        self._handlers: dict[str, Handler] = {
            "init": self._handle_init,
            "complete": self._handle_complete,
            "shutdown": self._handle_shutdown,
            "models": self._handle_models,
            "health": self._handle_health,
        }

    # ---- lifecycle -------------------------------------------------------

    async def run(self) -> int:
        """Serve until EOF on stdin or ``shutdown``; return the exit code."""
        reader = asyncio.create_task(self._read_loop(), name="reader")
        stop = asyncio.create_task(self._shutdown_requested.wait(), name="shutdown-wait")
        await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and reader.exception() is not None:
            log.error("reader failed", exc_info=reader.exception())
        log.info("stopping: %s", "shutdown requested" if stop.done() else "stdin closed")
        for task in (reader, stop):
            task.cancel()
        await asyncio.gather(reader, stop, return_exceptions=True)
        await self._stop_all()
        return 0

    async def _stop_all(self) -> None:
        for task in list(self._requests.values()):
            task.cancel()
        for task in self._seed_streams:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._backend is not None:
            await self._backend.aclose()
            self._backend = None

    # ---- input -----------------------------------------------------------

    async def _read_loop(self) -> None:
        async for line in self._transport.lines():
            if isinstance(line, LineTooLong):
                await self._send_error(
                    None,
                    BackendError(
                        protocol.INVALID_REQUEST,
                        f"message of {line.size} bytes exceeds the line size limit; "
                        "it was discarded",
                    ),
                )
                continue
            if not line.strip():
                continue  # blank lines between messages are harmless
            await self._dispatch(line)

    async def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            await self._send_error(
                None,
                BackendError(
                    protocol.PARSE_ERROR, f"parse error: {e}: send one JSON object per line"
                ),
            )
            return
        if not isinstance(msg, dict):
            await self._send_error(
                None,
                BackendError(
                    protocol.INVALID_REQUEST,
                    "invalid request: expected a JSON object (batches are not supported)",
                ),
            )
            return

        has_id = "id" in msg
        rid = msg.get("id")
        # bool is an int in Python but not a JSON-RPC id.
        if has_id and (isinstance(rid, bool) or not isinstance(rid, (int, str))):
            await self._send_error(
                None,
                BackendError(
                    protocol.INVALID_REQUEST, "invalid request: 'id' must be an integer or a string"
                ),
            )
            return
        reply_id: RequestId | None = rid if has_id else None

        method = msg.get("method")
        if msg.get("jsonrpc") != protocol.JSONRPC_VERSION or not isinstance(method, str):
            if not isinstance(method, str) and ("result" in msg or "error" in msg):
                log.warning("ignoring a response message; the sidecar sends no requests")
                return
            await self._send_error(
                reply_id,
                BackendError(
                    protocol.INVALID_REQUEST,
                    'invalid request: need "jsonrpc": "2.0" and a string "method"',
                ),
            )
            return
        params = msg.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            await self._send_error(
                reply_id,
                BackendError(
                    protocol.INVALID_REQUEST, "invalid request: 'params' must be an object or array"
                ),
            )
            return

        if not has_id:
            self._notification(method, params)
            return
        assert reply_id is not None
        handler = self._handlers.get(method)
        if handler is None:
            await self._send_error(
                reply_id,
                BackendError(
                    protocol.METHOD_NOT_FOUND,
                    f"method not found: {method!r}; methods: {', '.join(self._handlers)}",
                ),
            )
            return
        if reply_id in self._requests:
            await self._send_error(
                reply_id,
                BackendError(
                    protocol.INVALID_REQUEST,
                    f"invalid request: id {reply_id!r} is already in flight; use a fresh id",
                ),
            )
            return
        task = asyncio.create_task(
            self._run_request(reply_id, method, handler, params), name=f"request {reply_id!r}"
        )
        self._requests[reply_id] = task
        self._track(task)

    def _notification(self, method: str, params: Any) -> None:
        if method == "$/cancelRequest":
            target = params.get("id") if isinstance(params, dict) else None
            task = self._requests.get(target) if isinstance(target, (int, str)) else None
            if task is None:
                # Normal race: the request already finished and was answered.
                log.debug("cancel for unknown or finished request %r", target)
                return
            log.info("cancelling request %r", target)
            task.cancel()
        elif method == "stream.start":
            task = asyncio.create_task(self._run_stream_start(params), name="stream.start")
            self._track(task)
            self._seed_streams.add(task)
            task.add_done_callback(self._seed_streams.discard)
        else:
            # Notifications get no reply, even unknown ones (JSON-RPC 2.0 section 4.1).
            log.warning("ignoring unknown notification %r", method)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- output ----------------------------------------------------------

    def _error_object(self, err: BackendError) -> dict[str, Any]:
        data: dict[str, Any] = {
            "backend": self._backend_name,
            "model": self._backend.model if self._backend is not None else "",
        }
        data.update(err.data)
        return {"code": err.code, "message": err.message, "data": data}

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self._transport.send(message)
        except TransportClosed as e:
            # The bridge is gone; there is nobody left to tell.
            log.warning("dropping outgoing message, stdout closed: %s", e)

    async def _send_line(self, line: bytes) -> None:
        """``_send`` for a pre-encoded line (the stream.chunk hot path)."""
        try:
            await self._transport.send_line(line)
        except TransportClosed as e:
            log.warning("dropping outgoing message, stdout closed: %s", e)

    async def _send_error(self, rid: RequestId | None, err: BackendError) -> None:
        await self._send(protocol.error_response(rid, self._error_object(err)))

    # ---- requests --------------------------------------------------------

    async def _run_request(
        self, rid: RequestId, method: str, handler: Handler, params: Any
    ) -> None:
        reply: dict[str, Any]
        try:
            reply = protocol.response(rid, await handler(rid, params))
        except asyncio.CancelledError:
            reply = protocol.error_response(
                rid,
                self._error_object(BackendError(protocol.REQUEST_CANCELLED, "request cancelled")),
            )
        except BackendError as e:
            reply = protocol.error_response(rid, self._error_object(e))
        except Exception as e:  # the one per-request net: report, never crash the server
            log.exception("request %r (%s) failed", rid, method)
            reply = protocol.error_response(
                rid,
                self._error_object(
                    BackendError(
                        protocol.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}"
                    )
                ),
            )
        # No longer cancellable: the reply below is this request's only one.
        self._requests.pop(rid, None)
        await self._send(reply)

    async def _handle_init(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        params = protocol.parse_init(raw)
        async with self._init_lock:
            backend = create_backend(params)
            try:
                await backend.start()
            except BaseException:
                await backend.aclose()
                raise
            old, self._backend, self._backend_name = self._backend, backend, params.backend
            if old is not None:
                await old.aclose()
        notes = [f"{params.backend} backend ready with model {backend.model!r}"]
        if params.mcp_servers:
            notes.append(
                f"ignoring {len(params.mcp_servers)} MCP server(s): "
                "this sidecar does not support MCP"
            )
        return {
            "ready": True,
            "version": __version__,
            "message": "; ".join(notes),
            "stream_request_id": True,
            "capabilities": {
                "streaming": True,
                "tools": False,
                "mcp": False,
                "sessions": False,
                "images": False,
                "native_tools": [],
                "backend": params.backend,
                "cancel": True,
                "methods": sorted(self._handlers),
                **backend.capabilities(),
            },
        }

    async def _handle_complete(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        params = protocol.parse_complete(raw)
        return await self._complete(params, rid, stream=params.stream)

    async def _handle_models(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        protocol.parse_no_params(raw)
        backend = await self._ready_backend()
        models = await backend.list_models()
        return {"backend": backend.name, "models": [m.to_wire() for m in models]}

    async def _handle_health(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        protocol.parse_no_params(raw)
        backend = self._backend
        if backend is None:
            return {
                "ok": False,
                "backend": "",
                "model": "",
                "message": "sidecar not initialized: call init first",
            }
        report = await backend.health()
        result: dict[str, Any] = {
            "ok": report.ok,
            "backend": backend.name,
            "model": backend.model,
            "message": report.message,
        }
        if report.http_status is not None:
            result["http_status"] = report.http_status
        return result

    async def _ready_backend(self) -> Backend:
        if self._backend is None and self._init_lock.locked():
            # A pipelined client may send a request right behind init: let the
            # init that is loading finish instead of failing the request.
            async with self._init_lock:
                pass
        if self._backend is None:
            raise BackendError(protocol.INTERNAL_ERROR, "sidecar not initialized: call init first")
        return self._backend

    async def _handle_shutdown(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        # Stop after this reply is written: the event is only observed by run().
        self._shutdown_requested.set()
        return {"success": True}

    async def _run_stream_start(self, raw: Any) -> None:
        """The seed client's streaming: notifications without request_id."""
        err: BackendError
        try:
            await self._complete(protocol.parse_complete(raw), None, stream=True)
            return
        except asyncio.CancelledError:
            err = BackendError(protocol.REQUEST_CANCELLED, "stream cancelled: sidecar stopping")
        except BackendError as e:
            err = e
        except Exception as e:  # same net as _run_request, reported as stream.error
            log.exception("stream.start failed")
            err = BackendError(protocol.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}")
        await self._send(protocol.notification("stream.error", self._error_object(err)))

    # ---- completion ------------------------------------------------------

    async def _complete(
        self, params: protocol.CompleteParams, rid: RequestId | None, stream: bool
    ) -> dict[str, Any]:
        backend = await self._ready_backend()
        model = params.model or backend.model
        if not model:
            raise protocol.invalid_params(
                "model", "is empty here and in init: name the model to use"
            )
        request = ChatRequest(
            model=model,
            messages=params.chat_messages(),
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            options=params.options,
        )
        # Only the seed-style stream.start omits request_id.
        tag: dict[str, Any] = {"request_id": rid} if rid is not None else {}
        parts: list[str] = []
        done: ChatDone | None = None
        # aclosing: a cancel closes the backend stream (HTTP connection, llama.cpp loop).
        async with contextlib.aclosing(backend.chat(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                    if stream:
                        await self._send_line(protocol.stream_chunk_line(rid, event.text))
                else:
                    done = event
        if done is None:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{backend.name} stream ended without a final message",
                backend.error_data(model),
            )
        usage = done.usage.to_wire()
        if stream:
            await self._send(
                protocol.notification(
                    "stream.done",
                    {
                        **tag,
                        "usage": usage,
                        "finish_reason": done.finish_reason,
                        "model": done.model,
                    },
                )
            )
        return {
            "content": "".join(parts),
            "model": done.model,
            "finish_reason": done.finish_reason,
            "usage": usage,
        }
