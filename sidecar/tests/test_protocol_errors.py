"""Bad input, lifecycle and stdout hygiene of the real sidecar process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from conftest import SIDECAR_DIR, SIDECAR_SCRIPT, SidecarProcess
from fake_ollama import FakeOllama

USER = [{"role": "user", "content": "hi"}]


async def test_parse_error_then_reader_survives(sidecar: SidecarProcess) -> None:
    await sidecar.send_raw(b"{not json\n")
    reply = await sidecar.read()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700
    # The reader is still alive.
    assert (await sidecar.call("nope"))["error"]["code"] == -32601


async def test_invalid_requests(sidecar: SidecarProcess) -> None:
    await sidecar.send_raw(b"[1, 2]\n")
    reply = await sidecar.read()
    assert (reply["id"], reply["error"]["code"]) == (None, -32600)

    await sidecar.send({"jsonrpc": "1.0", "id": 5, "method": "init"})
    reply = await sidecar.read()
    assert (reply["id"], reply["error"]["code"]) == (5, -32600)

    await sidecar.send({"jsonrpc": "2.0", "id": {"x": 1}, "method": "init"})
    reply = await sidecar.read()
    assert (reply["id"], reply["error"]["code"]) == (None, -32600)


async def test_unknown_method(sidecar: SidecarProcess) -> None:
    reply = await sidecar.call("frobnicate", {})
    assert reply["error"]["code"] == -32601
    assert "frobnicate" in reply["error"]["message"]


async def test_invalid_params_name_the_field(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    reply = await sidecar.call("init", {"backend": "nosuch", "model": "m"})
    assert reply["error"]["code"] == -32602
    assert "ollama" in reply["error"]["message"] and "gguf" in reply["error"]["message"]

    reply = await sidecar.call("init", {"model": "m"})
    assert reply["error"]["code"] == -32602
    assert "'backend'" in reply["error"]["message"]

    init = {"backend": "ollama", "model": "tiny", "host": fake_ollama.host}
    assert (await sidecar.call("init", init))["result"]["ready"]
    cases = [
        ({}, "'messages'"),
        ({"messages": "hi"}, "'messages'"),
        ({"messages": [{"content": "x"}]}, "'messages[0].role'"),
        ({"messages": USER, "max_tokens": "10"}, "'max_tokens'"),
        ({"messages": USER, "temperature": "hot"}, "'temperature'"),
        ({"messages": USER, "stream": "yes"}, "'stream'"),
        ({"messages": USER, "options": []}, "'options'"),
    ]
    for params, field in cases:
        reply = await sidecar.call("complete", params)
        assert reply["error"]["code"] == -32602, params
        assert field in reply["error"]["message"], (params, reply)


async def test_complete_before_init(sidecar: SidecarProcess) -> None:
    reply = await sidecar.call("complete", {"messages": USER})
    assert reply["error"]["code"] == -32603
    assert "call init first" in reply["error"]["message"]


async def test_cancel_of_unknown_id_is_ignored(sidecar: SidecarProcess) -> None:
    await sidecar.notify("$/cancelRequest", {"id": 999})
    await sidecar.notify("no.such.notification", {})
    # Notifications get no reply: the next message answers this request.
    assert (await sidecar.call("nope"))["error"]["code"] == -32601


async def test_shutdown_without_init(sidecar: SidecarProcess) -> None:
    assert (await sidecar.call("shutdown"))["result"] == {"success": True}
    assert await sidecar.wait() == 0


async def test_eof_exits_zero(sidecar: SidecarProcess) -> None:
    await sidecar.close_stdin()
    assert await sidecar.wait() == 0
    assert sidecar.proc.stdout is not None
    assert await sidecar.proc.stdout.read() == b""


def test_stray_prints_do_not_reach_stdout() -> None:
    """A print from inside the process must land on stderr, not in the protocol."""
    code = (
        "import sys, runpy; sys.argv = [sys.argv[1]];"
        "import llmbridge_sidecar.server as s;"
        "orig = s.Server._handle_shutdown\n"
        "async def noisy(self, rid, raw):\n"
        "    print('STRAY PRINT'); import os; os.write(1, b'STRAY FD1\\n')\n"
        "    return await orig(self, rid, raw)\n"
        "s.Server._handle_shutdown = noisy\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = dict(os.environ, PYTHONPATH=SIDECAR_DIR)
    proc = subprocess.run(
        [sys.executable, "-c", code, SIDECAR_SCRIPT],
        input=b'{"jsonrpc":"2.0","id":1,"method":"shutdown"}\n',
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {"jsonrpc": "2.0", "id": 1, "result": {"success": True}}
    ]
    assert b"STRAY PRINT" in proc.stderr and b"STRAY FD1" in proc.stderr


def test_help_and_symlinked_entry_script() -> None:
    """Runs through a symlink in another directory, as from a Bazel runfiles tree."""
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "sidecar.py")
        os.symlink(SIDECAR_SCRIPT, link)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        help_out = subprocess.run(
            [sys.executable, link, "--help"], capture_output=True, env=env, timeout=60, cwd=tmp
        )
        assert help_out.returncode == 0
        assert b"--log-level" in help_out.stdout
        proc = subprocess.run(
            [sys.executable, link, "--log-level", "warning"],
            input=b'{"jsonrpc":"2.0","id":"a","method":"shutdown"}\n',
            capture_output=True,
            env=env,
            timeout=60,
            cwd=tmp,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"jsonrpc": "2.0", "id": "a", "result": {"success": True}}


async def test_oversized_line_is_dropped_not_fatal(sidecar: SidecarProcess) -> None:
    await sidecar.send_raw(b'{"pad":"' + b"a" * (17 * 1024 * 1024) + b'"}\n')
    reply = await sidecar.read()
    assert (reply["id"], reply["error"]["code"]) == (None, -32600)
    assert "line size limit" in reply["error"]["message"]
    assert (await sidecar.call("shutdown"))["result"] == {"success": True}
    assert await sidecar.wait() == 0


async def test_lone_surrogate_id_is_echoed_and_the_reader_survives(
    sidecar: SidecarProcess,
) -> None:
    """Regression: the error reply to this id could not be encoded and killed the reader."""
    await sidecar.send_raw(b'{"jsonrpc":"2.0","id":"\\ud800","method":"nope"}\n')
    reply = await sidecar.read()  # read() checks the line is valid UTF-8 JSON
    assert reply["id"] == "\ud800" and reply["error"]["code"] == -32601
    await sidecar.send_raw(
        b'{"jsonrpc":"2.0","id":"a\\udfffb","method":"complete","params":{"messages":[]}}\n'
    )
    reply = await sidecar.read()
    assert reply["id"] == "a\udfffb" and reply["error"]["code"] == -32602
    assert (await sidecar.call("nope"))["error"]["code"] == -32601


async def test_deeply_nested_json_is_a_parse_error_not_a_dead_reader(
    sidecar: SidecarProcess,
) -> None:
    """Regression: json.loads raised RecursionError, which killed the reader."""
    await sidecar.send_raw(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    reply = await sidecar.read()
    assert (reply["id"], reply["error"]["code"]) == (None, -32700)
    assert "nested too deeply" in reply["error"]["message"]
    nested = b"[" * 1000 + b"]" * 1000
    await sidecar.send_raw(
        b'{"jsonrpc":"2.0","id":7,"method":"complete","params":{"messages":' + nested + b"}}\n"
    )
    reply = await sidecar.read()
    assert reply["error"]["code"] in (-32700, -32602)
    assert (await sidecar.call("nope"))["error"]["code"] == -32601


def test_stdin_and_stdout_may_be_regular_files(tmp_path: Any) -> None:
    """Files cannot be polled: read on a thread, written synchronously."""
    given = tmp_path / "in.jsonl"
    given.write_bytes(b'{"jsonrpc":"2.0","id":1,"method":"health"}\n')
    out = tmp_path / "out.jsonl"
    with open(given, "rb") as stdin, open(out, "wb") as stdout:
        proc = subprocess.run(
            [sys.executable, SIDECAR_SCRIPT],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(out.read_bytes())
    assert reply["id"] == 1 and reply["result"]["ok"] is False
