"""MCP through the whole chain: a gRPC client -> the llmbridge binary -> the
sidecar -> real MCP servers (npm's @modelcontextprotocol/server-everything,
which nobody here wrote, and a server written with the MCP SDK in the
sidecar's tests) -> the tool-calling loop with the protocol-faithful Ollama
and OpenAI-compatible fakes, which emit tool calls in their real wire
formats."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from conftest import ROOT
from test_complete_e2e import user

SIDECAR_TESTS = ROOT / "sidecar" / "tests"
MCP_SETUP = SIDECAR_TESTS / "mcp" / "setup"
EVERYTHING_ENTRY = "node_modules/@modelcontextprotocol/server-everything/dist/index.js"


@pytest.fixture(scope="module")
def everything() -> str:
    out = subprocess.run([str(MCP_SETUP)], check=True, capture_output=True, text=True,
                         timeout=600)
    return f"{out.stdout.strip().splitlines()[-1]}/{EVERYTHING_ENTRY}"


def mcp_config(tmp_path, servers, **extra):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"mcp_servers": servers, **extra}))
    return f"--config={path}"


def sdk_test_server() -> dict:
    return {"type": "stdio", "command": sys.executable,
            "args": [str(SIDECAR_TESTS / "mcp_test_server.py")]}


def stream_with_tools(pb, server, text, **kw):
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    return list(stub.Complete(llmbridge_pb2.CompleteRequest(
        messages=user(pb, text), use_tools=True, **kw), timeout=120))


def test_list_tools_reports_every_server_and_failures_break_nothing(
        pb, start_server, fake_ollama, everything, tmp_path):
    config = mcp_config(tmp_path, {
        "everything": {"type": "stdio", "command": "node", "args": [everything, "stdio"]},
        "test": sdk_test_server(),
        "missing": {"type": "stdio", "command": "/nonexistent/mcp-server"},
    })
    server = start_server(config, "--backend=ollama", f"--host={fake_ollama}",
                          "--model=llama3.2:latest")
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    listed = stub.ListTools(llmbridge_pb2.ListToolsRequest(), timeout=120)

    servers = {s.name: s for s in listed.servers}
    assert servers["everything"].connected and servers["everything"].tool_count > 0
    assert servers["everything"].protocol_version
    assert servers["test"].connected and servers["test"].tool_count == 6
    assert not servers["missing"].connected and servers["missing"].error
    tools = {(t.server, t.name): t for t in listed.tools}
    add = tools[("test", "add")]
    schema = json.loads(add.input_schema_json)
    assert set(schema["properties"]) == {"a", "b"}
    assert ("everything", "echo") in tools

    caps = stub.GetCapabilities(llmbridge_pb2.GetCapabilitiesRequest(), timeout=30)
    assert caps.mcp and caps.tools
    # A failing server breaks neither plain completions...
    plain = list(stub.Complete(llmbridge_pb2.CompleteRequest(messages=user(pb, "Hi")),
                               timeout=60))
    assert "".join(r.content for r in plain) == "Hello from fake Ollama"


@pytest.mark.parametrize("backend, fake", [("ollama", "fake_ollama"), ("vllm", "fake_openai")])
def test_tool_loop_streams_calls_results_and_the_answer(pb, start_server, tmp_path, request,
                                                         backend, fake):
    host = request.getfixturevalue(fake)
    model = "llama3.2:latest" if backend == "ollama" else "fake-model"
    server = start_server(mcp_config(tmp_path, {"test": sdk_test_server()}),
                          f"--backend={backend}", f"--host={host}", f"--model={model}")
    responses = stream_with_tools(pb, server, 'What is 2+3? [[call:add {"a": 2, "b": 3}]]')

    calls = [r.tool_call for r in responses if r.HasField("tool_call")]
    results = [r.tool_result for r in responses if r.HasField("tool_result")]
    assert len(calls) == 1 and len(results) == 1
    assert (calls[0].server, calls[0].name) == ("test", "add")
    assert json.loads(calls[0].arguments_json) == {"a": 2, "b": 3}
    assert results[0].id == calls[0].id
    assert results[0].content == "5" and not results[0].is_error
    # The call comes before its result, and both before the model's answer.
    kinds = ["call" if r.HasField("tool_call") else "result" if r.HasField("tool_result")
             else "text" if r.content else "done" for r in responses]
    assert kinds.index("call") < kinds.index("result") < kinds.index("text")
    assert "".join(r.content for r in responses) == "Tool results: 5"
    assert responses[-1].done


def test_max_tool_iterations_bounds_the_loop(pb, start_server, fake_ollama, tmp_path):
    server = start_server(mcp_config(tmp_path, {"test": sdk_test_server()}), "--backend=ollama",
                          f"--host={fake_ollama}", "--model=llama3.2:latest")
    responses = stream_with_tools(pb, server, '[[loop]] [[call:echo {"text": "x"}]]',
                                  max_tool_iterations=2)
    assert sum(r.HasField("tool_call") for r in responses) == 2
    # Normalised: the last turn asked for tools (not run); the raw reason says why.
    assert responses[-1].finish_reason == "tool_calls"
    assert responses[-1].raw_finish_reason == "max_tool_iterations"


def test_tools_on_a_backend_without_tool_support_is_invalid_argument(
        pb, start_server, tmp_path):
    server = start_server(mcp_config(tmp_path, {"test": sdk_test_server()}), "--backend=echo")
    with pytest.raises(grpc.RpcError) as err:
        stream_with_tools(pb, server, "hi")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not support tools" in err.value.details()


def test_strict_mode_refuses_to_start_without_every_server(pb, start_server, fake_ollama,
                                                            tmp_path):
    config = mcp_config(tmp_path, {"missing": {"type": "stdio",
                                               "command": "/nonexistent/mcp-server"}})
    server = start_server(config, "--mcp_strict", "--backend=ollama",
                          f"--host={fake_ollama}", "--model=llama3.2:latest")
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    with pytest.raises(grpc.RpcError) as err:
        list(llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
            llmbridge_pb2.CompleteRequest(messages=user(pb, "Hi")), timeout=60))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "missing" in err.value.details()
