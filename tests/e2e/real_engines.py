"""The real engines the end-to-end tests run llmbridge against: Ollama and
llama.cpp's llama-server, both built from source by scripts/setup and cached
in $LLMBRIDGE_CACHE_DIR/bin.

Each runs in its own session (process group) on a free loopback port, with
its own state folder. Readiness is the line the engine logs once it serves
(awaited, not polled); stopping is by pid (SIGTERM, then SIGKILL), then the
rest of its process group by id: Ollama's model runners are its children and
carry no parent-death signal, so a killed `ollama serve` would otherwise
leave them running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

CACHE_DIR = Path(os.environ.get("LLMBRIDGE_CACHE_DIR", Path.home() / ".cache" / "llmbridge"))
OLLAMA_BINARY = CACHE_DIR / "bin" / "ollama"
LLAMA_SERVER_BINARY = CACHE_DIR / "bin" / "llama-server"
# The name SmolLM2 is imported and served under, in both engines.
MODEL = "smollm2"
# Sampling that makes two runs of one prompt produce the same tokens.
GREEDY = {"temperature": 0.0, "seed": 7}
READY_TIMEOUT_S = 120
# Threads each engine computes on. ggml's worker threads spin while they
# wait for each other, so on a busy machine (CI, cores shared with other
# builds) two threads can be tens of times slower than one (measured: 8
# tokens of SmolLM2 in Ollama, 0.3 s on one thread, 12 s on two); the model
# is small enough for one.
ENGINE_THREADS = 1
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def struct(**fields: Any) -> struct_pb2.Struct:
    """A protobuf Struct (a request's ``options``) of ``fields``."""
    s = struct_pb2.Struct()
    s.update(fields)
    return s


def long_count(pb: tuple[Any, Any], server: Any) -> Any:
    """A streamed Complete call (not yet read) that would keep the engine
    generating for minutes unless cancelled."""
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    return llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
        llmbridge_pb2.CompleteRequest(
            messages=[llmbridge_pb2.Message(role="user",
                                            content="Count from 1 to 1000, one number per line.")],
            max_tokens=3000, temperature=0.0), timeout=120)


def assert_streams_the_direct_answer(responses: list[Any], *, content: str, input_tokens: int,
                                     output_tokens: int, finish_reason: str,
                                     model: str) -> None:
    """llmbridge's streamed answer is, chunk by chunk, what the engine
    answered when asked directly, with the engine's own token counts."""
    assert len([r for r in responses if r.content]) >= 3, responses
    assert not any(r.done for r in responses[:-1])
    last = responses[-1]
    assert last.done
    assert "".join(r.content for r in responses) == content
    assert last.usage.input_tokens == input_tokens > 0
    assert last.usage.output_tokens == output_tokens > 0
    assert last.usage.total_tokens == input_tokens + output_tokens
    assert last.finish_reason == finish_reason
    assert last.model == model


def assert_max_tokens_ends_with_length(pb: tuple[Any, Any], server: Any) -> None:
    """A prompt that wants a long answer, cut at max_tokens: the engine's
    own limit ends it, reported as finish_reason "length"."""
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    responses = list(llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
        llmbridge_pb2.CompleteRequest(
            messages=[llmbridge_pb2.Message(role="user",
                                            content="Write a long story about the sea.")],
            max_tokens=5), timeout=120))
    last = responses[-1]
    assert last.done
    assert last.finish_reason == "length"
    assert last.usage.output_tokens == 5


def cancel_mid_generation(pb: tuple[Any, Any], server: Any, engine: EngineProcess,
                          request_done: str) -> int:
    """Starts a long stream through ``server``, cancels it after its first
    chunk and returns the engine log's mark at the cancel. Fails if the
    engine logged ``request_done`` (its request ended) before the cancel:
    the test would then prove nothing."""
    before = engine.log.mark()
    call = long_count(pb, server)
    assert next(call).content
    at_cancel = engine.log.mark()
    call.cancel()
    assert engine.log.find(request_done, since=before, until=at_cancel) is None, \
        f"{engine.name} finished the request before the cancel: the test proves nothing"
    return at_cancel


class ProcessLog:
    """Every line a process prints (stdout and stderr together), read on a
    thread so the process never blocks on a full pipe. A test can wait for a
    line matching a pattern that appears after a given point."""

    def __init__(self, stream: Any | None) -> None:
        """Reads ``stream`` until it ends; None: an empty log, already ended."""
        self.lines: list[str] = []
        self.ended = stream is None
        self._changed = threading.Condition()
        if stream is not None:
            threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, ""):
            with self._changed:
                self.lines.append(raw.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def mark(self) -> int:
        """The index of the next line; pass it as ``since``."""
        with self._changed:
            return len(self.lines)

    def find(self, pattern: str, since: int = 0, until: int | None = None) -> re.Match[str] | None:
        with self._changed:
            for line in self.lines[since:until]:
                if m := re.search(pattern, line):
                    return m
        return None

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if m := re.search(pattern, line):
                        return m
                since = len(self.lines)
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    why = "the process ended" if self.ended else f"{timeout:g} s passed"
                    raise AssertionError(f"no line matching {pattern!r} before {why}; "
                                         "log:\n" + "\n".join(self.lines[-60:]))
                self._changed.wait(left)

    def tail(self, n: int = 60) -> str:
        with self._changed:
            return "\n".join(self.lines[-n:])


def http_json(url: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON): (status, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


class EngineProcess:
    """One engine server process: started in its own session, ready once it
    logs ``ready_line``, stopped by pid and process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                 ready_line: str) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.ready_line = ready_line
        self.process: subprocess.Popen[str] | None = None
        self.log = ProcessLog(None)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> None:
        """Starts the engine and returns once it logs that it serves."""
        assert self.process is None, f"{self.name} is already running"
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.log = ProcessLog(self.process.stdout)
        try:
            self.log.wait_for(self.ready_line, timeout=READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it has not exited in time, then SIGKILL
        whatever is left of its process group (children it did not stop)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its session's group id is its pid
        except ProcessLookupError:
            pass  # nothing left

    def get(self, path: str) -> tuple[int, Any]:
        return http_json(self.url + path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return http_json(self.url + path, body)


def engine_env(**extra: str) -> dict[str, str]:
    """This environment without the user's own OLLAMA_* / LLAMA_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "LLAMA_"))}
    return {**env, **extra}


def ollama_serve(home: Path, models: Path, port: int | None = None) -> EngineProcess:
    """``ollama serve`` on a free loopback port, keeping its key in ``home``
    and its models in ``models`` (not started yet)."""
    port = port or free_port()
    env = engine_env(HOME=str(home), OLLAMA_HOST=f"127.0.0.1:{port}",
                     OLLAMA_MODELS=str(models),
                     # Several instances may share one models folder: none
                     # may delete blobs it does not know.
                     OLLAMA_NOPRUNE="1")
    return EngineProcess("ollama serve", [str(OLLAMA_BINARY), "serve"], env, port,
                         rf"Listening on 127\.0\.0\.1:{port} ")


def ollama_create(ollama: EngineProcess, name: str, gguf: str, workdir: Path) -> None:
    """Imports a GGUF file as model ``name``, offline, as a user would, to
    run on ENGINE_THREADS threads."""
    modelfile = workdir / "Modelfile"
    modelfile.write_text(f"FROM {gguf}\nPARAMETER num_thread {ENGINE_THREADS}\n")
    proc = subprocess.run([str(OLLAMA_BINARY), "create", name, "-f", str(modelfile)],
                          env=ollama.env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"ollama create failed: {proc.stdout}\n{proc.stderr}"


def llama_server(gguf: str, port: int | None = None) -> EngineProcess:
    """llama.cpp's ``llama-server`` serving ``gguf`` as MODEL on a free
    loopback port, with two parallel slots (not started yet)."""
    port = port or free_port()
    argv = [str(LLAMA_SERVER_BINARY), "--model", gguf, "--alias", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--ctx-size", "4096",
            "--parallel", "2", "--threads", str(ENGINE_THREADS), "--slots", "--metrics"]
    # It answers HTTP while it loads the model (503); this line comes after.
    return EngineProcess("llama-server", argv, engine_env(), port, r": model loaded$")
