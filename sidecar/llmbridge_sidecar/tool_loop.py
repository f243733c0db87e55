"""The tool-calling loop of ``complete`` with ``use_tools: true``.

1. The MCP tools of every connected server are offered to the backend in its
   native format, under function names unique in the request (see
   ``McpManager.function_names``).
2. When the model's answer carries tool calls, each call runs through MCP,
   one after the other, each bounded by ``tool_timeout_s``; the assistant
   turn and one ``role: "tool"`` message per call are appended, and the model
   is asked again.
3. The loop ends when the model answers without tool calls. After
   ``max_tool_iterations`` rounds of tool calls, an answer that still asks for
   tools ends the request normally with ``finish_reason:
   "max_tool_iterations"`` (its calls are not run); the text so far is the
   content.

A tool that fails (MCP error, ``isError``, timeout, unknown name, arguments
that are not a JSON object, a server that is down) does not fail the request:
the model gets the error text as the tool's result, and ``is_error`` is true.
Cancelling the request cancels the running tool call.

While streaming, each call is announced by ``stream.tool_call {request_id, id,
server, name, arguments}`` before it runs and ``stream.tool_result
{request_id, id, server, name, content, is_error}`` after; text keeps coming
as ``stream.chunk``. The result of ``complete`` lists the calls run, in
order, in ``tool_calls``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .backends.base import ToolSpec
from .mcp_client import McpManager, McpTool, ToolOutcome
from .protocol import Message, ToolCall

FINISH_MAX_TOOL_ITERATIONS = "max_tool_iterations"


@dataclass(frozen=True)
class ExecutedCall:
    call: ToolCall
    tool: McpTool | None
    outcome: ToolOutcome | None = None  # None: announced, not run yet

    def server(self) -> str:
        return self.tool.server if self.tool is not None else ""

    def name(self) -> str:
        return self.tool.name if self.tool is not None else self.call.name

    def announcement(self) -> dict[str, Any]:
        """The ``stream.tool_call`` params, less ``request_id``."""
        return {
            "id": self.call.id,
            "server": self.server(),
            "name": self.name(),
            "arguments": self.call.arguments,
        }

    def report(self) -> dict[str, Any]:
        """The ``stream.tool_result`` params, less ``request_id``."""
        assert self.outcome is not None
        return {
            "id": self.call.id,
            "server": self.server(),
            "name": self.name(),
            "content": self.outcome.content,
            "is_error": self.outcome.is_error,
        }

    def to_wire(self) -> dict[str, Any]:
        """One entry of the ``complete`` result's ``tool_calls``."""
        return {**self.announcement(), **self.report()}


class Toolbox:
    """The tools one request offers, and how to run the model's calls to them."""

    def __init__(self, manager: McpManager, tools: list[McpTool], timeout_s: float) -> None:
        self._manager = manager
        self._by_function = manager.function_names(tools)
        self._timeout_s = timeout_s

    def __bool__(self) -> bool:
        return bool(self._by_function)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(
            ToolSpec(name=fn, description=t.description, parameters=t.input_schema)
            for fn, t in self._by_function.items()
        )

    def resolve(self, call: ToolCall) -> McpTool | None:
        return self._by_function.get(call.name)

    async def run(self, call: ToolCall, tool: McpTool | None) -> ToolOutcome:
        if tool is None:
            offered = ", ".join(self._by_function) or "none"
            return ToolOutcome(f"unknown tool {call.name!r}; the tools are: {offered}", True)
        if call.arguments_error is not None:
            return ToolOutcome(f"tool {tool.name!r} was not called: {call.arguments_error}", True)
        connection = self._manager.connection(tool.server)
        if connection is None:
            return ToolOutcome(f"MCP server {tool.server!r} is not configured", True)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await connection.call_tool(tool.name, call.arguments)
        except TimeoutError:
            return ToolOutcome(
                f"tool {tool.name!r} of MCP server {tool.server!r} timed out after "
                f"{self._timeout_s:g} s (raise the request's tool_timeout_s)",
                True,
            )


def assistant_turn(text: str, calls: tuple[ToolCall, ...]) -> Message:
    return Message(role="assistant", content=text, tool_calls=calls)


def tool_message(call: ToolCall, outcome: ToolOutcome) -> Message:
    # ``name`` is the function name the model called (Ollama's tool_name).
    return Message(role="tool", content=outcome.content, name=call.name, tool_call_id=call.id)
