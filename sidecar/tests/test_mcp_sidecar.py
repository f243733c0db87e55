"""MCP through the real sidecar: real MCP servers, the tool loop with both fakes.

Servers: ``@modelcontextprotocol/server-everything`` from npm (nobody here
wrote it; installed by ``tests/mcp/setup``) over stdio, Streamable HTTP and
SSE; ``mcp_test_server.py`` (the SDK's server API) over stdio; and
``legacy_mcp_server.py``, which speaks only 2024-11-05.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import TESTS_DIR, SidecarProcess, assert_relayed_in_order, mcp_test_server
from fake_ollama import PROMPT_EVAL_COUNT, FakeOllama
from fake_openai import FakeOpenAI

SETUP = os.path.join(TESTS_DIR, "mcp", "setup")
LEGACY_SERVER = os.path.join(TESTS_DIR, "legacy_mcp_server.py")
EVERYTHING_ENTRY = "node_modules/@modelcontextprotocol/server-everything/dist/index.js"
EVERYTHING_TOOLS = 13  # what server-everything 2026.8.31 lists to a client without callbacks


def call_marker(name: str, args: dict[str, Any]) -> str:
    return f"[[call:{name} {json.dumps(args)}]]"


@pytest.fixture(scope="session")
def everything() -> str:
    """The path of server-everything's entry script (installed once, cached)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"server-everything needs {' and '.join(missing)} (Debian: nodejs, npm)")
    out = subprocess.run([SETUP], check=True, capture_output=True, text=True, timeout=600)
    return os.path.join(out.stdout.strip().splitlines()[-1], EVERYTHING_ENTRY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_everything(entry: str, transport: str, ready_line: str) -> tuple[Any, int]:
    """server-everything over HTTP on a free port, once its log says it listens."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "node",
        entry,
        transport,
        env={**os.environ, "PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, f"server-everything {transport} exited before listening"
        if ready_line.encode() in line:
            return proc, port


@pytest.fixture
async def everything_http(everything: str) -> AsyncIterator[str]:
    proc, port = await start_everything(everything, "streamableHttp", "listening on port")
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        await proc.wait()


@pytest.fixture
async def everything_sse(everything: str) -> AsyncIterator[str]:
    proc, port = await start_everything(everything, "sse", "running on port")
    try:
        yield f"http://127.0.0.1:{port}/sse"
    finally:
        proc.kill()
        await proc.wait()


async def init(
    sc: SidecarProcess, servers: dict[str, Any], backend: str = "echo", **params: Any
) -> dict[str, Any]:
    reply = await sc.call("init", {"backend": backend, "mcp_servers": servers, **params})
    assert "result" in reply, reply
    return reply["result"]  # type: ignore[no-any-return]


async def stream(
    sc: SidecarProcess, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A streamed complete: its notifications (method, params less request_id) and reply."""
    rid = await sc.request("complete", {"stream": True, "use_tools": True, **params})
    notes, reply = await sc.read_until_reply(rid)
    out = []
    for n in notes:
        assert n["params"].pop("request_id") == rid
        out.append({"method": n["method"], **n["params"]})
    return out, reply


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


# ---- connecting and listing -------------------------------------------------


async def test_init_connects_each_server_and_reports_failures(
    sidecar: SidecarProcess, everything: str
) -> None:
    refused = f"http://127.0.0.1:{free_port()}/mcp"
    result = await init(
        sidecar,
        {
            "everything": {"type": "stdio", "command": "node", "args": [everything, "stdio"]},
            "test": mcp_test_server(),
            "legacy": {"type": "stdio", "command": sys.executable, "args": [LEGACY_SERVER]},
            "missing": {"type": "stdio", "command": "/nonexistent/mcp-server"},
            "refused": {"type": "http", "url": refused, "headers": ["Authorization: Bearer x"]},
        },
    )
    servers = result["mcp"]["servers"]
    # Three eras of the protocol, negotiated by the SDK's client.
    assert servers["everything"] == {
        "connected": True,
        "tools": EVERYTHING_TOOLS,
        "protocol_version": "2025-11-25",
    }
    assert servers["test"] == {"connected": True, "tools": 6, "protocol_version": "2026-07-28"}
    assert servers["legacy"] == {"connected": True, "tools": 1, "protocol_version": "2024-11-05"}
    assert servers["missing"]["connected"] is False and servers["missing"]["tools"] == 0
    assert "/nonexistent/mcp-server" in servers["missing"]["error"]
    assert servers["refused"]["connected"] is False
    assert "ConnectError" in servers["refused"]["error"]
    assert "MCP: 3 of 5 server(s) connected" in result["message"]
    # echo cannot call tools, so tools are not usable.
    assert result["capabilities"]["mcp"] is True
    assert result["capabilities"]["tools"] is False
    assert "tools" in result["capabilities"]["methods"]

    listed = (await sidecar.call("tools"))["result"]
    assert listed["servers"]["test"]["connected"] is True
    assert listed["servers"]["missing"]["connected"] is False
    by_name = {(t["server"], t["name"]): t for t in listed["tools"]}
    assert len(by_name) == EVERYTHING_TOOLS + 6 + 1
    assert by_name["everything", "get-sum"]["description"] == "Returns the sum of two numbers"
    schema = by_name["everything", "get-sum"]["input_schema"]
    assert schema["type"] == "object" and schema["required"] == ["a", "b"]
    assert by_name["legacy", "shout"]["input_schema"]["properties"] == {"text": {"type": "string"}}
    assert by_name["test", "add"]["description"] == "Add two integers."

    # Plain completions do not care about MCP.
    plain = await sidecar.call("complete", {"messages": [{"role": "user", "content": "hi there"}]})
    assert plain["result"]["content"] == "hi there"
    health = (await sidecar.call("health"))["result"]
    assert health["ok"] is True
    assert health["mcp"]["servers"]["legacy"]["connected"] is True


async def test_use_tools_on_a_backend_without_tools(sidecar: SidecarProcess) -> None:
    await init(sidecar, {"test": mcp_test_server()})
    reply = await sidecar.call(
        "complete", {"messages": [{"role": "user", "content": "hi"}], "use_tools": True}
    )
    err = reply["error"]
    assert err["code"] == -32602
    assert err["data"]["field"] == "use_tools"
    assert "the echo backend does not support tools" in err["message"]


async def test_use_tools_without_mcp_tools_is_a_plain_completion(
    sidecar: SidecarProcess,
) -> None:
    await init(sidecar, {})
    reply = await sidecar.call(
        "complete", {"messages": [{"role": "user", "content": "hi"}], "use_tools": True}
    )
    assert reply["result"]["content"] == "hi"
    assert "tool_calls" not in reply["result"]


async def test_strict_mode_fails_init_naming_the_server(sidecar: SidecarProcess) -> None:
    reply = await sidecar.call(
        "init",
        {
            "backend": "echo",
            "mcp_servers": {
                "test": mcp_test_server(),
                "missing": {"type": "stdio", "command": "/nonexistent/mcp-server"},
            },
            "options": {"mcp_strict": True},
        },
    )
    err = reply["error"]
    assert err["code"] == -32003
    assert "MCP server 'missing' failed to connect" in err["message"]
    assert err["data"]["mcp_server"] == "missing"
    assert err["data"]["mcp"]["servers"]["test"]["connected"] is True
    # Not initialized: the failed init left nothing behind.
    health = (await sidecar.call("health"))["result"]
    assert health["ok"] is False and "mcp" not in health


async def test_bad_server_config_is_invalid_params(sidecar: SidecarProcess) -> None:
    reply = await sidecar.call(
        "init", {"backend": "echo", "mcp_servers": {"x": {"type": "websocket", "url": "ws://h"}}}
    )
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"]["field"] == "mcp_servers.x.type"
    reply = await sidecar.call(
        "init", {"backend": "echo", "mcp_servers": {"x": {"type": "http", "headers": ["x"]}}}
    )
    assert reply["error"]["data"]["field"] == "mcp_servers.x.url"
    reply = await sidecar.call(
        "init", {"backend": "echo", "options": {"mcp_strict": "yes"}, "mcp_servers": {}}
    )
    assert reply["error"]["data"]["field"] == "options.mcp_strict"


# ---- the loop: Ollama -------------------------------------------------------


async def test_ollama_loop_runs_the_tool_and_feeds_the_result_back(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    result = await init(
        sidecar,
        {"test": mcp_test_server()},
        backend="ollama",
        model="llama3.2:latest",
        host=fake_ollama.host,
    )
    assert result["capabilities"]["tools"] is True
    tools = (await sidecar.call("tools"))["result"]["tools"]
    user = {"role": "user", "content": "Add them " + call_marker("add", {"a": 2, "b": 3})}
    notes, reply = await stream(sidecar, {"messages": [user], "options": {"seed": 1}})

    offered = [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t["description"],
                "parameters": t["input_schema"],
            },
        }
        for t in tools
    ]
    first, second = fake_ollama.requests
    assert first == {
        "model": "llama3.2:latest",
        "messages": [user],
        "stream": True,
        "tools": offered,
        "options": {"seed": 1},
    }
    # The follow-up: the assistant's call as Ollama sent it, then the result.
    assert second == {
        **first,
        "messages": [
            user,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "add", "arguments": {"a": 2, "b": 3}}}],
            },
            {"role": "tool", "content": "5", "tool_name": "add"},
        ],
    }
    call = {"id": "call_1", "server": "test", "name": "add"}
    chunks = [n for n in notes if n["method"] == "stream.chunk"]
    assert_relayed_in_order([n["content"] for n in chunks], ["Tool results: ", "5"])
    assert [n for n in notes if n["method"] != "stream.chunk"] == [
        {"method": "stream.tool_call", **call, "arguments": {"a": 2, "b": 3}},
        {"method": "stream.tool_result", **call, "content": "5", "is_error": False},
        {
            "method": "stream.done",
            "usage": {
                "input_tokens": 2 * PROMPT_EVAL_COUNT,
                "output_tokens": 3,
                "total_tokens": 2 * PROMPT_EVAL_COUNT + 3,
            },
            "finish_reason": "stop",
            "raw_finish_reason": "stop",
            "model": "llama3.2:latest",
        },
    ]
    assert reply["result"] == {
        "content": "Tool results: 5",
        "model": "llama3.2:latest",
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "usage": notes[-1]["usage"],
        "tool_calls": [{**call, "arguments": {"a": 2, "b": 3}, "content": "5", "is_error": False}],
    }


async def test_tool_loop_over_streamable_http_and_sse(
    sidecar: SidecarProcess, fake_ollama: FakeOllama, everything_http: str, everything_sse: str
) -> None:
    result = await init(
        sidecar,
        {
            "http": {"type": "http", "url": everything_http},
            "sse": {"type": "sse", "url": everything_sse},
        },
        backend="ollama",
        host=fake_ollama.host,
    )
    assert result["mcp"]["servers"] == {
        "http": {"connected": True, "tools": EVERYTHING_TOOLS, "protocol_version": "2025-11-25"},
        "sse": {"connected": True, "tools": EVERYTHING_TOOLS, "protocol_version": "2025-11-25"},
    }
    # Same tool names on both servers: each gets its server's prefix.
    user = {
        "role": "user",
        "content": call_marker("http__get-sum", {"a": 2, "b": 3})
        + call_marker("sse__echo", {"message": "over sse"}),
    }
    notes, reply = await stream(sidecar, {"messages": [user], "model": "tiny"})
    offered = {t["function"]["name"] for t in fake_ollama.requests[0]["tools"]}
    assert {"http__get-sum", "sse__get-sum", "http__echo", "sse__echo"} <= offered
    results = [n for n in notes if n["method"] == "stream.tool_result"]
    assert results == [
        {
            "method": "stream.tool_result",
            "id": "call_1",
            "server": "http",
            "name": "get-sum",
            "content": "The sum of 2 and 3 is 5.",
            "is_error": False,
        },
        {
            "method": "stream.tool_result",
            "id": "call_2",
            "server": "sse",
            "name": "echo",
            "content": "Echo: over sse",
            "is_error": False,
        },
    ]
    assert reply["result"]["content"] == "Tool results: The sum of 2 and 3 is 5. | Echo: over sse"


async def test_max_tool_iterations_ends_the_loop(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init(sidecar, {"test": mcp_test_server()}, backend="ollama", host=fake_ollama.host)
    user = {"role": "user", "content": "[[loop]] " + call_marker("echo", {"text": "again"})}
    notes, reply = await stream(
        sidecar, {"messages": [user], "model": "tiny", "max_tool_iterations": 2}
    )
    # Two rounds run, the third answer still asks for the tool: not run.
    assert len(fake_ollama.requests) == 3
    assert [n["method"] for n in notes] == [
        "stream.tool_call",
        "stream.tool_result",
        "stream.tool_call",
        "stream.tool_result",
        "stream.done",
    ]
    # The last turn asked for tools that were not run.
    assert reply["result"]["finish_reason"] == "tool_calls"
    assert reply["result"]["raw_finish_reason"] == "max_tool_iterations"
    assert notes[-1]["finish_reason"] == "tool_calls"
    assert notes[-1]["raw_finish_reason"] == "max_tool_iterations"
    assert len(reply["result"]["tool_calls"]) == 2
    assert len(fake_ollama.requests[-1]["messages"]) == 5


async def test_failing_tools_are_results_not_errors(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init(sidecar, {"test": mcp_test_server()}, backend="ollama", host=fake_ollama.host)
    user = {
        "role": "user",
        "content": call_marker("fail", {})
        + call_marker("nope", {})
        + call_marker("slow", {"seconds": 30})
        + call_marker("add", {"a": "two"}),
    }
    reply = await sidecar.call(
        "complete",
        {"messages": [user], "model": "tiny", "use_tools": True, "tool_timeout_s": 2},
    )
    calls = reply["result"]["tool_calls"]
    assert [(c["name"], c["is_error"]) for c in calls] == [
        ("fail", True),
        ("nope", True),
        ("slow", True),
        ("add", True),
    ]
    assert "the fail tool always fails" in calls[0]["content"]
    assert calls[1]["server"] == ""
    assert calls[1]["content"].startswith("unknown tool 'nope'; the tools are: add, echo, slow")
    assert calls[2]["content"] == (
        "tool 'slow' of MCP server 'test' timed out after 2 s (raise the request's tool_timeout_s)"
    )
    assert "validation error" in calls[3]["content"].lower()
    # Every error went back to the model, which answered.
    assert reply["result"]["content"].startswith("Tool results: ")
    assert reply["result"]["finish_reason"] == "stop"


# ---- the loop: OpenAI-compatible ---------------------------------------------


async def test_openai_loop_with_colliding_names_and_streamed_arguments(
    sidecar: SidecarProcess, everything: str
) -> None:
    with FakeOpenAI() as fake:
        await init(
            sidecar,
            {
                "everything": {"type": "stdio", "command": "node", "args": [everything]},
                "test": mcp_test_server(),
            },
            backend="vllm",
            model="fake-model",
            host=fake.host,
        )
        user = {
            "role": "user",
            "content": call_marker("test__echo", {"text": "hi"})
            + call_marker("get-sum", {"a": 1, "b": 2}),
        }
        notes, reply = await stream(sidecar, {"messages": [user], "max_tokens": 50})
        first, second = fake.requests

    names = [t["function"]["name"] for t in first["tools"]]
    # "echo" is on both servers; everything else keeps its own name.
    assert "everything__echo" in names and "test__echo" in names and "echo" not in names
    assert "get-sum" in names and "add" in names
    assert first["stream_options"] == {"include_usage": True} and first["max_tokens"] == 50
    assert second["messages"] == [
        user,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_fake_0",
                    "type": "function",
                    "function": {"name": "test__echo", "arguments": '{"text": "hi"}'},
                },
                {
                    "id": "call_fake_1",
                    "type": "function",
                    "function": {"name": "get-sum", "arguments": '{"a": 1, "b": 2}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_fake_0", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "The sum of 1 and 2 is 3."},
    ]
    assert second["tools"] == first["tools"]
    assert notes[:4] == [
        {
            "method": "stream.tool_call",
            "id": "call_fake_0",
            "server": "test",
            "name": "echo",
            "arguments": {"text": "hi"},
        },
        {
            "method": "stream.tool_result",
            "id": "call_fake_0",
            "server": "test",
            "name": "echo",
            "content": "hi",
            "is_error": False,
        },
        {
            "method": "stream.tool_call",
            "id": "call_fake_1",
            "server": "everything",
            "name": "get-sum",
            "arguments": {"a": 1, "b": 2},
        },
        {
            "method": "stream.tool_result",
            "id": "call_fake_1",
            "server": "everything",
            "name": "get-sum",
            "content": "The sum of 1 and 2 is 3.",
            "is_error": False,
        },
    ]
    assert [n["method"] for n in notes[4:-1]] in (["stream.chunk"], ["stream.chunk"] * 2)
    assert notes[-1]["method"] == "stream.done"
    result = reply["result"]
    assert result["content"] == "Tool results: hi | The sum of 1 and 2 is 3."
    assert result["finish_reason"] == "stop"
    assert result["usage"] == {"input_tokens": 24, "output_tokens": 4, "total_tokens": 28}


# ---- cancellation, crashes, shutdown ------------------------------------------


async def test_cancel_reaches_the_running_tool(
    sidecar: SidecarProcess, fake_ollama: FakeOllama, tmp_path: Any
) -> None:
    marker = str(tmp_path / "slow-marker")
    await init(sidecar, {"test": mcp_test_server(marker)}, backend="ollama", host=fake_ollama.host)
    user = {"role": "user", "content": call_marker("slow", {"seconds": 60})}
    rid = await sidecar.request(
        "complete", {"messages": [user], "model": "tiny", "use_tools": True, "stream": True}
    )
    announced = await sidecar.read()
    assert announced["method"] == "stream.tool_call"
    for _ in range(500):  # the tool is running in the server
        if os.path.exists(marker):
            break
        await asyncio.sleep(0.01)
    await sidecar.notify("$/cancelRequest", {"id": rid})
    notes, reply = await sidecar.read_until_reply(rid)
    assert notes == []
    assert reply["error"]["code"] == -32800
    # The SDK told the server (notifications/cancelled), which cancelled the tool.
    for _ in range(500):
        with open(marker) as f:
            if f.read() == "cancelled":
                break
        await asyncio.sleep(0.01)
    with open(marker) as f:
        assert f.read() == "cancelled"
    # The server is still connected and usable.
    assert (await sidecar.call("tools"))["result"]["servers"]["test"]["connected"] is True


async def test_crashed_server_is_reported_and_reconnected(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init(sidecar, {"test": mcp_test_server()}, backend="ollama", host=fake_ollama.host)

    async def pid() -> int:
        user = {"role": "user", "content": call_marker("pid", {})}
        reply = await sidecar.call(
            "complete", {"messages": [user], "model": "tiny", "use_tools": True}
        )
        return int(reply["result"]["tool_calls"][0]["content"])

    before = await pid()
    assert before in children(sidecar.proc.pid)
    user = {"role": "user", "content": call_marker("crash", {})}
    reply = await sidecar.call("complete", {"messages": [user], "model": "tiny", "use_tools": True})
    crash = reply["result"]["tool_calls"][0]
    assert crash["is_error"] is True
    assert "MCP server 'test'" in crash["content"]
    # Reported as down (health does not reconnect)...
    status = (await sidecar.call("health"))["result"]["mcp"]["servers"]["test"]
    assert status["connected"] is False and status["tools"] == 0
    assert status["error"]
    assert not alive(before)
    # ... and reconnected on the next use: a new process.
    listed = (await sidecar.call("tools"))["result"]
    assert listed["servers"]["test"]["connected"] is True
    after = await pid()
    assert after != before


async def test_shutdown_and_eof_stop_the_mcp_servers(
    sidecar: SidecarProcess, everything: str
) -> None:
    servers = {
        "everything": {"type": "stdio", "command": "node", "args": [everything]},
        "test": mcp_test_server(),
    }
    await init(sidecar, servers)
    started = children(sidecar.proc.pid)
    assert len(started) == 2
    assert (await sidecar.call("shutdown"))["result"] == {"success": True}
    assert await sidecar.wait() == 0
    assert not any(alive(p) for p in started)


async def test_eof_stops_the_mcp_servers(sidecar: SidecarProcess) -> None:
    await init(sidecar, {"test": mcp_test_server()})
    started = children(sidecar.proc.pid)
    assert len(started) == 1
    await sidecar.close_stdin()
    assert await sidecar.wait() == 0
    assert not any(alive(p) for p in started)
