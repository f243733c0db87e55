"""MCP servers the sidecar connects to, with the official MCP Python SDK (``mcp``).

``init``'s ``mcp_servers`` is the seed's ``MCPServerConfig`` map::

    {name: {"type": "stdio" | "http" | "sse", "command", "args", "env",
            "url", "headers": ["Key: Value", ...]}}

``stdio`` runs ``command args`` (environment: the SDK's safe defaults, HOME,
PATH, ..., plus ``env``) and speaks over its stdin/stdout; ``http`` is
Streamable HTTP at ``url``; ``sse`` the deprecated HTTP+SSE transport.
The SDK's ``Client`` negotiates the protocol version: it probes
``server/discover`` (2026-07-28 and later) and falls back to the
``initialize`` handshake, which accepts servers speaking 2025-11-25 and every
older version the SDK knows (back to 2024-11-05).

Each server has one owner task that holds the SDK client open (the SDK's
anyio scopes must be entered and left by the same task); requests borrow the
session from any task. A server whose connection ends (a stdio process that
exits, an HTTP session that fails) is marked ``connected: false`` with the
reason, and reconnected on its next use (``tools``, or a completion that
offers tools); a server that failed to connect is retried at most once per
backoff interval (1 s, doubling up to 30 s), so a dead server costs a request
nothing most of the time.

Status of one server, as ``init``, ``tools`` and ``health`` report it::

    {"connected": bool, "tools": int, "error": str (when not connected),
     "protocol_version": str (when known)}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .errors import BackendError

log = logging.getLogger(__name__)

TRANSPORTS = ("stdio", "http", "sse")
# Pages of tools/list read at most (a server that never stops paginating).
MAX_TOOL_PAGES = 100
# Shutdown of one connection: the SDK's own stdio shutdown waits at most ~6 s.
CLOSE_TIMEOUT_S = 10.0
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0
CLIENT_NAME = "llmbridge-sidecar"


@dataclass(frozen=True)
class McpServerConfig:
    name: str
    type: str  # one of TRANSPORTS
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str
    description: str
    input_schema: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call gave: its text (content items joined) and whether it failed."""

    content: str
    is_error: bool


# ---- configuration --------------------------------------------------------


def _bad(field_name: str, why: str) -> BackendError:
    return protocol.invalid_params(f"mcp_servers.{field_name}", why)


def _str_list(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise _bad(where, "must be an array of strings")
    return tuple(raw)


def parse_headers(raw: Any, where: str) -> dict[str, str]:
    """The seed's ``["Key: Value", ...]``; an object ``{Key: Value}`` is accepted too."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise _bad(where, "must map header names to strings")
        return dict(raw)
    headers: dict[str, str] = {}
    for line in _str_list(raw, where):
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise _bad(where, f'entries must look like "Key: Value", not {line!r}')
        headers[key.strip()] = value.strip()
    return headers


def parse_config(raw: dict[str, Any]) -> list[McpServerConfig]:
    """``init``'s ``mcp_servers``; a malformed entry is -32602 naming its field."""
    configs: list[McpServerConfig] = []
    for name, entry in raw.items():
        if not name:
            raise _bad("", "server names must be non-empty")
        if not isinstance(entry, dict):
            raise _bad(name, "must be an object with 'type' and 'command' or 'url'")
        kind = entry.get("type") or ("stdio" if entry.get("command") else None)
        if kind not in TRANSPORTS:
            raise _bad(f"{name}.type", f"must be one of {', '.join(TRANSPORTS)}, not {kind!r}")
        env = entry.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise _bad(f"{name}.env", "must map variable names to strings")
        command = entry.get("command") or ""
        url = entry.get("url") or ""
        if not isinstance(command, str) or not isinstance(url, str):
            raise _bad(name, "'command' and 'url' must be strings")
        if kind == "stdio" and not command:
            raise _bad(f"{name}.command", "is required for a stdio server")
        if kind != "stdio" and not url.startswith(("http://", "https://")):
            raise _bad(f"{name}.url", f"must be an http(s) URL for a {kind} server")
        configs.append(
            McpServerConfig(
                name=name,
                type=kind,
                command=command,
                args=_str_list(entry.get("args"), f"{name}.args"),
                env=dict(env),
                url=url,
                headers=parse_headers(entry.get("headers"), f"{name}.headers"),
            )
        )
    return configs


def describe_error(e: BaseException) -> str:
    """One line for an exception, the first leaf of an exception group."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}"[:1000]


def result_text(result: Any) -> str:
    """The text of a ``CallToolResult``: its content items, one per line."""
    parts: list[str] = []
    for item in result.content or []:
        kind = getattr(item, "type", "")
        if kind == "text":
            parts.append(item.text)
        elif kind == "resource":
            resource = item.resource
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource link {item.uri}]")
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {getattr(item, 'mime_type', '')}]")
        else:
            parts.append(f"[{kind or 'content'}]")
    if not parts and result.structured_content is not None:
        import json

        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


# ---- one server -----------------------------------------------------------


class McpConnection:
    """One configured server: its owner task, session, tools and status."""

    def __init__(self, config: McpServerConfig, connect_timeout_s: float) -> None:
        self.config = config
        self.name = config.name
        self.connect_timeout_s = connect_timeout_s
        self.tools: list[McpTool] = []
        self.connected = False
        self.error: str | None = None
        self.protocol_version: str | None = None
        self._client: Any = None
        self._owner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._retry_s = FIRST_RETRY_S
        self._closed = False

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connected": self.connected, "tools": len(self.tools)}
        if not self.connected:
            out["error"] = self.error or "not connected"
        if self.protocol_version:
            out["protocol_version"] = self.protocol_version
        return out

    async def ensure_connected(self, *, force: bool = False) -> bool:
        """Connect (or reconnect) unless connected, closed, or backing off."""
        if self.connected or self._closed:
            return self.connected
        async with self._lock:
            if self.connected or self._closed:
                return self.connected
            if not force and time.monotonic() < self._retry_at:
                return False
            await self._connect()
            return self.connected

    async def _connect(self) -> None:
        await self._stop_owner()
        self._stop = asyncio.Event()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._own(ready), name=f"mcp {self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout_s)
        except TimeoutError:
            self._fail(f"did not connect within {self.connect_timeout_s:g} s")
            await self._stop_owner()
        except Exception as e:
            why = describe_error(e)
            if self.config.type == "stdio" and self.config.command not in why:
                # Not every event loop's spawn error names the file.
                why += f" (command {self.config.command!r})"
            self._fail(why)
            await self._stop_owner()
        else:
            self._retry_s = FIRST_RETRY_S
            log.info(
                "MCP server %r connected (%s, protocol %s, %d tools)",
                self.name,
                self.config.type,
                self.protocol_version,
                len(self.tools),
            )

    def _fail(self, why: str) -> None:
        self.connected = False
        self.error = why
        self.tools = []
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, MAX_RETRY_S)
        log.warning("MCP server %r: %s", self.name, why)

    def _lost(self, why: str) -> None:
        """The connection ended under us: report it; the next use reconnects."""
        if self._stop.is_set() or not self.connected:
            return  # our own close, or a connect that failed (reported by _connect)
        self.connected = False
        self.error = why
        self.tools = []
        self._client = None
        self._retry_at = 0.0  # it worked before: reconnect at once on next use
        self._stop.set()  # lets the owner task leave the SDK client and reap the process
        log.warning("MCP server %r: %s", self.name, why)

    async def _own(self, ready: asyncio.Future[None]) -> None:
        """Holds the SDK client open until close() or the connection ends."""
        from mcp import Client

        lost_reason = "connection closed"
        try:
            async with contextlib.AsyncExitStack() as stack:
                transport = await stack.enter_async_context(self._transport())
                client = Client(
                    _Watched(transport, lambda: self._lost(lost_reason)),
                    mode="auto",
                    cache=None,
                    client_info=_client_info(),
                )
                await stack.enter_async_context(client)
                self.protocol_version = client.protocol_version
                self.tools = await self._list_tools(client)
                self._client = client
                self.connected = True
                self.error = None
                if self.config.type == "stdio":
                    lost_reason = "the server process exited"
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            elif not isinstance(e, asyncio.CancelledError):
                self._lost(f"connection failed: {describe_error(e)}")
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self._client = None
            self.connected = False

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        cfg = self.config
        if cfg.type == "stdio":
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=cfg.command, args=list(cfg.args), env=cfg.env or None
            )
            # The server's stderr joins ours (forwarded to the server's log).
            async with stdio_client(params, errlog=sys.stderr) as streams:
                yield streams
        elif cfg.type == "http":
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            timeout = httpx2.Timeout(self.connect_timeout_s, read=300.0)
            async with (
                httpx2.AsyncClient(headers=cfg.headers, timeout=timeout) as http,
                streamable_http_client(cfg.url, http_client=http) as streams,
            ):
                yield streams
        else:
            from mcp.client.sse import sse_client

            async with sse_client(
                cfg.url, headers=cfg.headers, timeout=self.connect_timeout_s
            ) as streams:
                yield streams

    async def _list_tools(self, client: Any) -> list[McpTool]:
        tools: list[McpTool] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            for tool in page.tools:
                schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
                tools.append(
                    McpTool(
                        server=self.name,
                        name=tool.name,
                        description=tool.description or tool.title or "",
                        input_schema=dict(schema) or {"type": "object", "properties": {}},
                    )
                )
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Run one tool; a failure of the server becomes an error outcome.

        The caller bounds the time; cancelling the caller cancels the call (the
        SDK then sends ``notifications/cancelled`` to the server).
        """
        from mcp.shared.exceptions import MCPError

        if not await self.ensure_connected(force=True):
            return ToolOutcome(f"MCP server {self.name!r} is not connected: {self.error}", True)
        client = self._client
        if client is None:  # lost between the check and here
            return ToolOutcome(f"MCP server {self.name!r} is not connected: {self.error}", True)
        try:
            result = await client.call_tool(name, arguments)
        except MCPError as e:
            if not self.connected:
                return ToolOutcome(f"MCP server {self.name!r} failed: {self.error}", True)
            return ToolOutcome(f"MCP error {e.code}: {e.message}", True)
        except (asyncio.CancelledError, TimeoutError):
            raise
        except Exception as e:
            why = describe_error(e)
            self._lost(f"tool call failed: {why}")
            return ToolOutcome(f"MCP server {self.name!r} failed: {why}", True)
        return ToolOutcome(result_text(result), bool(result.is_error))

    async def _stop_owner(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(owner), CLOSE_TIMEOUT_S)
        except TimeoutError:
            owner.cancel()
            await asyncio.gather(owner, return_exceptions=True)
        except BaseException:
            pass  # its failure is already recorded

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            await self._stop_owner()
        self.connected = False
        if not self.error:
            self.error = "closed"


def _client_info() -> Any:
    from mcp import Implementation

    from . import __version__

    return Implementation(name=CLIENT_NAME, version=__version__)


class _Watched:
    """A transport that calls ``on_lost`` when the server's stream ends.

    Wraps already-open streams: messages pass through one task that notices
    end of stream (a stdio server exiting, an HTTP stream closing).
    """

    def __init__(self, streams: Any, on_lost: Callable[[], None]) -> None:
        self._read, self._write = streams
        self._on_lost = on_lost
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Any:
        import anyio
        from mcp.shared.message import SessionMessage

        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def pump() -> None:
            try:
                async with send:
                    async for item in self._read:
                        await send.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                pass
            finally:
                self._on_lost()

        group = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(group.cancel_scope.cancel)
        group.start_soon(pump)
        await self._stack.enter_async_context(receive)
        return receive, self._write

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


# ---- all servers ----------------------------------------------------------


_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")


def function_name(text: str) -> str:
    """A name every backend accepts as a function name: [A-Za-z0-9_-]{1,64}."""
    return (_NAME_RE.sub("_", text) or "tool")[:64]


class McpManager:
    """Every configured server; what ``init``, ``tools`` and ``complete`` use."""

    def __init__(self, configs: list[McpServerConfig], connect_timeout_s: float) -> None:
        self.connections = [McpConnection(c, connect_timeout_s) for c in configs]

    @property
    def configured(self) -> bool:
        return bool(self.connections)

    async def connect_all(self, *, force: bool = False) -> None:
        """Connect every server that is down, concurrently; failures are recorded."""
        await asyncio.gather(*(c.ensure_connected(force=force) for c in self.connections))

    def status(self) -> dict[str, Any]:
        return {c.name: c.status() for c in self.connections}

    def failures(self) -> list[McpConnection]:
        return [c for c in self.connections if not c.connected]

    def tools(self) -> list[McpTool]:
        return [t for c in self.connections if c.connected for t in c.tools]

    def connection(self, server: str) -> McpConnection | None:
        return next((c for c in self.connections if c.name == server), None)

    def function_names(self, tools: list[McpTool]) -> dict[str, McpTool]:
        """Unique function names for the model, mapped back to the MCP tools.

        A tool keeps its own name (made safe for function names) unless
        another server has a tool of the same name: then both become
        ``server__name``. A clash left after that gets a number.
        """
        counts: dict[str, int] = {}
        for t in tools:
            counts[function_name(t.name)] = counts.get(function_name(t.name), 0) + 1
        names: dict[str, McpTool] = {}
        for t in tools:
            base = function_name(t.name)
            if counts[base] > 1:
                base = function_name(f"{t.server}__{t.name}")
            name, n = base, 1
            while name in names:
                n += 1
                name = f"{base[:60]}_{n}"
            names[name] = t
        return names

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)
