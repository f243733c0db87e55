"""An MCP server for the tests, written with the SDK's server API (``MCPServer``,
mcp 2's name for v1's ``FastMCP``).

Tools (deterministic):

* ``add(a, b)``: the sum, as text ("5");
* ``echo(text)``: the text;
* ``slow(seconds)``: sleeps, then "slept"; it writes ``started`` to
  ``$MCP_TEST_MARKER`` (if set) when it starts, and ``cancelled`` when the
  call is cancelled;
* ``pid()``: this process's id (tells a reconnected server from the old one);
* ``crash()``: exits the process at once (code 3), like a crashing server;
* ``fail()``: raises ``ToolError``, which MCP reports as a result with ``isError``.

Run: ``python mcp_test_server.py`` (stdio).
"""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("llmbridge-test")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep for the given number of seconds."""
    _mark("started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _mark("cancelled")
        raise
    return "slept"


def _mark(what: str) -> None:
    marker = os.environ.get("MCP_TEST_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write(what)


@server.tool()
def pid() -> str:
    """This server's process id."""
    return str(os.getpid())


@server.tool()
def crash() -> str:
    """Exit the server process at once."""
    os._exit(3)


@server.tool()
def fail() -> str:
    """Always fails."""
    raise ToolError("the fail tool always fails")


if __name__ == "__main__":
    server.run()
