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
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import __version__, jsonio, protocol
from .backends import create_backend
from .backends.base import (
    Backend,
    ChatDone,
    ChatRequest,
    EmbedRequest,
    TextDelta,
    normalize_finish_reason,
)
from .errors import BackendError
from .mcp_client import McpManager, parse_config
from .protocol import RequestId
from .tool_loop import (
    FINISH_MAX_TOOL_ITERATIONS,
    ExecutedCall,
    Toolbox,
    assistant_turn,
    tool_message,
)
from .transport import LineTooLong, StdioTransport, TransportClosed

log = logging.getLogger(__name__)

Handler = Callable[[RequestId, Any], Awaitable[Any]]
T = TypeVar("T")


class Server:
    def __init__(self, transport: StdioTransport) -> None:
        self._transport = transport
        self._backend: Backend | None = None
        self._backend_name = ""
        self._mcp = McpManager([], 0.0)
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
            "tools": self._handle_tools,
            "embed": self._handle_embed,
            "count_tokens": self._handle_count_tokens,
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
        # Stops every MCP server process (stdin closed, then SIGTERM, SIGKILL).
        await self._mcp.close()

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
            try:
                await self._dispatch(line)
            except Exception as e:
                # The last line of defence: a line the checks in _dispatch did not
                # foresee still gets an answer, and the reader keeps reading.
                log.exception("could not handle the message %r", line[:200])
                await self._send_error(
                    None,
                    BackendError(
                        protocol.INTERNAL_ERROR,
                        f"internal error handling a message: {type(e).__name__}: {e}",
                    ),
                )

    async def _dispatch(self, line: bytes) -> None:
        try:
            msg = jsonio.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            await self._send_error(
                None,
                BackendError(
                    protocol.PARSE_ERROR, f"parse error: {e}: send one JSON object per line"
                ),
            )
            return
        except RecursionError:
            await self._send_error(
                None,
                BackendError(
                    protocol.PARSE_ERROR,
                    "parse error: the message is nested too deeply; send flatter JSON",
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
            task = None
            # bool is an int in Python but never a request id (true is not 1 here).
            if isinstance(target, (int, str)) and not isinstance(target, bool):
                task = self._requests.get(target)
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
        configs = parse_config(params.mcp_servers)
        async with self._init_lock:
            backend = create_backend(params)
            mcp = McpManager(configs, params.startup_timeout_s)
            try:
                await backend.start()
                await mcp.connect_all(force=True)
                failed = mcp.failures()
                if params.mcp_strict and failed:
                    raise BackendError(
                        protocol.CONNECTION_ERROR,
                        f"MCP server {failed[0].name!r} failed to connect: {failed[0].error} "
                        "(init options.mcp_strict is true; set it to false to start without it)",
                        {
                            "backend": params.backend,
                            "model": params.model,
                            "mcp_server": failed[0].name,
                            "mcp": {"servers": mcp.status()},
                        },
                    )
            except BaseException:
                await mcp.close()
                await backend.aclose()
                raise
            old, self._backend, self._backend_name = self._backend, backend, params.backend
            old_mcp, self._mcp = self._mcp, mcp
            if old is not None:
                await old.aclose()
            await old_mcp.close()
        notes = [f"{params.backend} backend ready with model {backend.model!r}"]
        if mcp.configured:
            up = len(mcp.connections) - len(failed)
            notes.append(
                f"MCP: {up} of {len(mcp.connections)} server(s) connected, "
                f"{len(mcp.tools())} tool(s)"
                + "".join(f"; MCP server {c.name!r} failed: {c.error}" for c in failed)
            )
        result: dict[str, Any] = {
            "ready": True,
            "version": __version__,
            "message": "; ".join(notes),
            "stream_request_id": True,
            "capabilities": {
                "streaming": True,
                "tools": bool(mcp.tools()) and backend.tools_unsupported() is None,
                "mcp": mcp.configured,
                "sessions": False,
                "images": False,
                "native_tools": [],
                "backend": params.backend,
                "cancel": True,
                "methods": sorted(self._handlers),
                **backend.capabilities(),
            },
        }
        if mcp.configured:
            result["mcp"] = {"servers": mcp.status()}
        return result

    async def _handle_tools(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        protocol.parse_no_params(raw)
        await self._ready_backend()
        mcp = self._mcp
        await mcp.connect_all()  # a server that is down is retried (with backoff)
        return {
            "tools": [t.to_wire() for t in mcp.tools()],
            "servers": mcp.status(),
        }

    async def _handle_complete(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        params = protocol.parse_complete(raw)
        return await _within(
            params.timeout_s,
            self._complete(params, rid, stream=params.stream),
            "allow more time or ask for fewer tokens",
        )

    async def _handle_embed(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        params = protocol.parse_embed(raw)
        backend = await self._ready_backend()
        model = params.model or backend.model
        request = EmbedRequest(model=model, inputs=params.inputs, dimensions=params.dimensions)
        result = await _within(
            params.timeout_s, backend.embed(request), "allow more time or send fewer inputs"
        )
        if len(result.embeddings) != len(params.inputs):
            raise BackendError(
                protocol.BACKEND_ERROR,
                f"{backend.name} returned {len(result.embeddings)} embeddings for "
                f"{len(params.inputs)} inputs",
                backend.error_data(model),
            )
        vectors = result.embeddings
        if params.normalize:
            vectors = [_unit_length(v) for v in vectors]
        return {
            "embeddings": vectors,
            "model": result.model,
            "usage": protocol.Usage(result.input_tokens, 0).to_wire(),
        }

    async def _handle_count_tokens(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        params = protocol.parse_count_tokens(raw)
        backend = await self._ready_backend()
        count = await backend.count_tokens(params.model or backend.model, params.chat_messages())
        return {"input_tokens": count}

    async def _handle_models(self, rid: RequestId, raw: Any) -> dict[str, Any]:
        protocol.parse_no_params(raw)
        backend = await self._ready_backend()
        models = await backend.list_models()
        configured = await backend.describe_model(models)
        return {
            "backend": backend.name,
            "model": configured.to_wire() if configured is not None else None,
            "models": [m.to_wire() for m in models],
        }

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
        if self._mcp.configured:
            result["mcp"] = {"servers": self._mcp.status()}
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

    async def _toolbox(self, params: protocol.CompleteParams, backend: Backend) -> Toolbox | None:
        """The tools this request offers, or None (no use_tools, or no MCP tools)."""
        if not params.use_tools or not self._mcp.configured:
            return None
        await self._mcp.connect_all()
        tools = self._mcp.tools()
        if not tools:
            return None  # nothing to offer: an ordinary completion
        why = backend.tools_unsupported()
        if why is not None:
            raise protocol.invalid_params("use_tools", f"cannot be true here: {why}")
        return Toolbox(self._mcp, tools, params.tool_timeout_s)

    async def _complete(
        self, params: protocol.CompleteParams, rid: RequestId | None, stream: bool
    ) -> dict[str, Any]:
        backend = await self._ready_backend()
        model = params.model or backend.model
        if not model:
            raise protocol.invalid_params(
                "model", "is empty here and in init: name the model to use"
            )
        toolbox = await self._toolbox(params, backend)
        messages = params.chat_messages()
        request = ChatRequest(
            model=model,
            messages=messages,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            options=params.options,
            tools=toolbox.specs() if toolbox else (),
            sampling=params.sampling,
            response_format=params.response_format,
        )
        # Only the seed-style stream.start omits request_id.
        tag: dict[str, Any] = {"request_id": rid} if rid is not None else {}
        parts: list[str] = []
        executed: list[ExecutedCall] = []
        input_tokens = output_tokens = 0
        cached_tokens: int | None = None
        rounds = 0
        while True:
            done, text = await self._model_turn(backend, request, rid, stream, parts)
            input_tokens += done.usage.input_tokens
            output_tokens += done.usage.output_tokens
            if done.usage.cached_tokens is not None:
                cached_tokens = (cached_tokens or 0) + done.usage.cached_tokens
            finish_reason = normalize_finish_reason(done)
            raw_finish_reason = done.finish_reason
            if toolbox is None or not done.tool_calls:
                break
            if rounds >= params.max_tool_iterations:
                # The last turn asked for tools that were not run.
                raw_finish_reason = FINISH_MAX_TOOL_ITERATIONS
                break
            rounds += 1
            messages = [*messages, assistant_turn(text, done.tool_calls)]
            for call in done.tool_calls:
                tool = toolbox.resolve(call)
                pending = ExecutedCall(call, tool)
                if stream:
                    await self._send(
                        protocol.notification("stream.tool_call", {**tag, **pending.announcement()})
                    )
                outcome = await toolbox.run(call, tool)
                ran = ExecutedCall(call, tool, outcome)
                executed.append(ran)
                if stream:
                    await self._send(
                        protocol.notification("stream.tool_result", {**tag, **ran.report()})
                    )
                messages.append(tool_message(call, outcome))
            request = dataclasses.replace(request, messages=messages)
        usage = protocol.Usage(input_tokens, output_tokens, cached_tokens).to_wire()
        if stream:
            await self._send(
                protocol.notification(
                    "stream.done",
                    {
                        **tag,
                        "usage": usage,
                        "finish_reason": finish_reason,
                        "raw_finish_reason": raw_finish_reason,
                        "model": done.model,
                    },
                )
            )
        result: dict[str, Any] = {
            "content": "".join(parts) if params.result_content or not stream else "",
            "model": done.model,
            "finish_reason": finish_reason,
            "raw_finish_reason": raw_finish_reason,
            "usage": usage,
        }
        if executed:
            result["tool_calls"] = [e.to_wire() for e in executed]
        return result

    async def _model_turn(
        self,
        backend: Backend,
        request: ChatRequest,
        rid: RequestId | None,
        stream: bool,
        parts: list[str],
    ) -> tuple[ChatDone, str]:
        """One call of the backend: its final event and this turn's text."""
        done: ChatDone | None = None
        turn: list[str] = []
        # aclosing: a cancel closes the backend stream (HTTP connection, llama.cpp loop).
        async with contextlib.aclosing(backend.chat(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    turn.append(event.text)
                    if stream:
                        await self._send_line(protocol.stream_chunk_line(rid, event.text))
                else:
                    done = event
        if done is None:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{backend.name} stream ended without a final message",
                backend.error_data(request.model),
            )
        parts.extend(turn)
        return done, "".join(turn)


async def _within(timeout_s: float | None, work: Awaitable[T], hint: str) -> T:
    """``work``, stopped when the caller's time runs out (-32000, http_status 504).

    Leaving the block cancels the work: HTTP streams are closed and in-process
    engines stop between tokens, as for $/cancelRequest.
    """
    if timeout_s is None:
        return await work
    try:
        async with asyncio.timeout(timeout_s):
            return await work
    except TimeoutError:
        raise BackendError(
            protocol.BACKEND_ERROR,
            f"the request's time limit ({timeout_s:g} s) passed before the model finished: {hint}",
            {"http_status": 504},
        ) from None


def _unit_length(vector: list[float]) -> list[float]:
    """``vector`` scaled to L2 norm 1 (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)
