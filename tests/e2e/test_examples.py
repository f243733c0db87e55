"""End to end: the example clients in examples/ (Python, Go, Node and a
grpcurl script) against the real server binary, the real sidecar and the
Ollama fake. Each example runs as its users run it, as a subprocess given the
server's address, and its output is checked: the streamed text, the usage,
and for the failing call (an unknown model) the status code and the
ErrorInfo reason from the rich error details.

examples/setup (idempotent, about a second when nothing changed) is run once
first, so that this file needs nothing else installed beforehand.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SETUP_TIMEOUT_S = 900   # a first setup builds grpcurl and downloads Go and npm modules
RUN_TIMEOUT_S = 300     # a first `go run` compiles grpc-go

STREAMED_TEXT = "Hello from fake Ollama"
USAGE_LINE = "usage: input_tokens=12 output_tokens=4 total_tokens=16"


@pytest.fixture(scope="session")
def examples_ready() -> None:
    """Runs examples/setup once per test session."""
    result = subprocess.run([str(EXAMPLES / "setup")], check=False, cwd=ROOT, text=True,
                            capture_output=True, timeout=SETUP_TIMEOUT_S,
                            env={**os.environ, "LLMBRIDGE_PYTHON": sys.executable})
    assert result.returncode == 0, f"examples/setup failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture
def address(examples_ready, start_server, fake_ollama) -> str:
    """host:port of a real server on the Ollama fake, model llama3.2:latest."""
    server = start_server("--backend=ollama", f"--host={fake_ollama}",
                          "--model=llama3.2:latest")
    return f"127.0.0.1:{server.port}"


def run_example(argv: list[str], cwd: Path, token: str | None = None) -> str:
    """Runs one example to completion (with $LLMBRIDGE_TOKEN when given) and
    returns what it printed."""
    env = {k: v for k, v in os.environ.items() if k != "LLMBRIDGE_TOKEN"}
    if token is not None:
        env["LLMBRIDGE_TOKEN"] = token
    result = subprocess.run(argv, check=False, cwd=cwd, text=True, capture_output=True,
                            timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{output}"
    return output


def sections(output: str) -> dict[str, list[str]]:
    """The example's output split at its '== title' lines."""
    parts: dict[str, list[str]] = {}
    current = parts.setdefault("", [])
    for line in output.splitlines():
        if line.startswith("== "):
            current = parts.setdefault(line[3:], [])
        else:
            current.append(line)
    return parts


CLIENTS = {
    "python": lambda address: ([sys.executable, "client.py", address], EXAMPLES / "python"),
    "go": lambda address: (["go", "run", ".", address], EXAMPLES / "go"),
    "node": lambda address: (["node", "client.js", address], EXAMPLES / "node"),
}


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_example_client_streams_and_reads_the_error_reason(language, address):
    output = run_example(*CLIENTS[language](address))
    parts = sections(output)

    streamed = parts.get("Complete (streaming)")
    assert streamed is not None, output
    # The deltas are printed as they arrive, on one line, then the usage.
    assert streamed[:2] == [STREAMED_TEXT, USAGE_LINE], output
    assert "finish_reason: stop  model: llama3.2:latest" in streamed, output

    failed = parts.get("Complete with an unknown model (fails)")
    assert failed is not None, output
    assert "code: NOT_FOUND" in failed, output
    assert any(line.startswith("message: ") and "no-such-model" in line
               for line in failed), output
    assert "reason: MODEL_NOT_FOUND" in failed, output
    assert "domain: llmbridge.io" in failed, output


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_example_client_fails_with_the_status_when_the_server_is_unreachable(language,
                                                                             examples_ready):
    argv, cwd = CLIENTS[language]("127.0.0.1:1")  # nothing listens on loopback port 1
    result = subprocess.run(argv, check=False, cwd=cwd, text=True, capture_output=True,
                            timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "code: UNAVAILABLE" in result.stdout.splitlines(), (result.stdout, result.stderr)


TOKEN = "example-token-3c9a71"


@pytest.fixture
def auth_address(examples_ready, start_server, fake_ollama, tmp_path) -> str:
    """host:port of a real server that requires the bearer token TOKEN."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# example clients\n{TOKEN}\n")
    server = start_server("--backend=ollama", f"--host={fake_ollama}",
                          "--model=llama3.2:latest", f"--auth_token_file={tokens}")
    return f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_example_client_sends_the_token_from_the_environment(language, auth_address):
    parts = sections(run_example(*CLIENTS[language](auth_address), token=TOKEN))
    assert parts["Complete (streaming)"][:1] == [STREAMED_TEXT], parts
    assert "reason: MODEL_NOT_FOUND" in parts["Complete with an unknown model (fails)"], parts

    argv, cwd = CLIENTS[language](auth_address)
    result = subprocess.run(argv, check=False, cwd=cwd, text=True, capture_output=True,
                            timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
                            env={**os.environ, "LLMBRIDGE_TOKEN": "wrong"})
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "code: UNAUTHENTICATED" in result.stdout.splitlines(), (result.stdout, result.stderr)


def test_grpcurl_script_sends_the_token_from_the_environment(auth_address):
    output = run_example([str(EXAMPLES / "grpcurl" / "demo.sh"), auth_address], ROOT,
                         token=TOKEN)
    parts = sections(output)
    messages = json_messages(parts["Complete (streaming)"])
    assert "".join(m.get("content", "") for m in messages) == STREAMED_TEXT, output
    assert "reason: MODEL_NOT_FOUND" in parts["Complete with an unknown model (fails)"], output
    assert TOKEN not in output, "the demo printed the token"


def json_messages(lines: list[str]) -> list[dict]:
    """The JSON objects grpcurl printed, one per streamed message."""
    text = "\n".join(line for line in lines if not line.startswith("$ "))
    decoder, messages, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        message, at = decoder.raw_decode(text, at)
        messages.append(message)
    return messages


def test_grpcurl_script_lists_describes_streams_and_shows_the_error_details(address):
    output = run_example([str(EXAMPLES / "grpcurl" / "demo.sh"), address], ROOT)
    parts = sections(output)

    assert {"llmbridge.v1.LocalLLM", "grpc.health.v1.Health"} <= set(parts["list"]), output
    described = "\n".join(parts["describe"])
    assert "rpc Complete ( .llmbridge.v1.CompleteRequest ) returns " \
           "( stream .llmbridge.v1.CompleteResponse );" in described, output
    assert "repeated .llmbridge.v1.Message messages = 1;" in described, output

    messages = json_messages(parts["Complete (streaming)"])
    assert "".join(m.get("content", "") for m in messages) == STREAMED_TEXT, output
    # Text deltas, then one done message (deltas may be merged while the
    # client is busy, so their count is not fixed).
    assert [m.get("done", False) for m in messages] == [False] * (len(messages) - 1) + [True]
    assert 1 <= len(messages) - 1 <= 4, output
    assert messages[-1]["usage"] == {"input_tokens": 12, "output_tokens": 4,
                                     "total_tokens": 16}, output
    assert messages[-1]["finish_reason"] == "stop", output

    failed = parts["Complete with an unknown model (fails)"]
    assert "  Code: NotFound" in failed, output
    assert "grpcurl exit status: 69 (64 + the gRPC code)" in failed, output
    assert "reason: MODEL_NOT_FOUND" in failed, output


def test_go_example_generated_code_matches_the_proto(examples_ready, tmp_path):
    """examples/go/llmbridgev1 is committed: it must be what generate.sh makes now."""
    subprocess.run([str(EXAMPLES / "go" / "generate.sh"), str(tmp_path)], check=True,
                   timeout=RUN_TIMEOUT_S)
    committed = EXAMPLES / "go" / "llmbridgev1"
    names = sorted(p.name for p in (tmp_path / "llmbridgev1").iterdir())
    assert names == sorted(p.name for p in committed.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(committed, tmp_path / "llmbridgev1", names,
                                           shallow=False)
    assert not mismatch and not errors, (
        f"{mismatch + errors} differ from the proto: run examples/go/generate.sh")
