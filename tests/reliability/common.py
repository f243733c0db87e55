"""What the fault suite and the soak share: the real server binary in a
process of its own, generated gRPC stubs, a protocol-faithful Ollama fake
that counts its open streams, and the resource counts of a process tree
read from /proc (fds, threads, children, RSS).

Run with the project's venv (.venv/bin/python): grpcio, grpcio-tools and
grpcio-health-checking come from tests/requirements.txt."""

from __future__ import annotations

import importlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
SERVER_BINARY = Path(os.environ.get("LLMBRIDGE_SERVER_BINARY",
                                    ROOT / "bazel-bin" / "service" / "llmbridge"))
SIDECAR = ROOT / "sidecar" / "sidecar.py"
FAKE_OLLAMA = ROOT / "sidecar" / "tests" / "fake_ollama.py"
MODEL = "llama3.2:latest"
HOLD = "[[hold]]"

sys.path.insert(0, str(ROOT / "sidecar" / "tests"))
from fake_ollama import FakeOllama  # noqa: E402


def load_stubs() -> tuple[ModuleType, ModuleType]:
    """llmbridge_pb2 and llmbridge_pb2_grpc, generated from proto/ now."""
    out = tempfile.mkdtemp(prefix="llmbridge-stubs-")
    well_known = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}",
                      f"--python_out={out}", f"--grpc_python_out={out}",
                      str(ROOT / "proto" / "llmbridge" / "v1" / "llmbridge.proto")])
    if rc != 0:
        raise SystemExit("protoc failed on llmbridge.proto")
    sys.path.insert(0, out)
    return (importlib.import_module("llmbridge.v1.llmbridge_pb2"),
            importlib.import_module("llmbridge.v1.llmbridge_pb2_grpc"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- resources of a process tree ----------------------------------------------

def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


# gRPC 1.51 names the threads of its own pools; they grow with load and are
# gRPC's to size. The server's own threads keep the process name.
GRPC_THREAD_NAMES = ("default-executo", "grpc_global_tim", "event_engine", "timer_manager",
                     "resolver-execut", "grpcpp_sync_ser", "nexting_thread")


@dataclass(frozen=True)
class Resources:
    fds: int
    threads: int       # the server's own (unnamed) threads
    grpc_threads: int  # gRPC's pools
    children: int
    rss_kb: int

    def as_dict(self) -> dict[str, int]:
        return {"fds": self.fds, "threads": self.threads, "grpc_threads": self.grpc_threads,
                "children": self.children, "rss_kb": self.rss_kb}


def thread_names(pid: int) -> dict[str, int]:
    """How many threads of `pid` carry each name (for a thread that leaks)."""
    names: dict[str, int] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return names


def resources(pid: int) -> Resources:
    """Open fds, threads, direct children and resident memory of `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    names = thread_names(pid)
    grpc_threads = sum(n for name, n in names.items() if name in GRPC_THREAD_NAMES)
    return Resources(fds, sum(names.values()) - grpc_threads, grpc_threads,
                     len(children_of(pid)), rss)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50 / p99 / max of durations in seconds, as milliseconds."""
    return {"n": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1) if values else float("nan")}


# --- the server ----------------------------------------------------------------

class Server:
    """The real server binary on a free port; its stderr is drained on a
    thread (the last lines kept) so it never blocks on a full pipe."""

    def __init__(self, *flags: str, sidecar: Path = SIDECAR, env: dict[str, str] | None = None):
        if not SERVER_BINARY.exists():
            raise SystemExit(f"{SERVER_BINARY} is missing: bazel build //service:llmbridge")
        argv = [str(SERVER_BINARY), "--listen=127.0.0.1:0", f"--python={sys.executable}",
                f"--sidecar={sidecar}", *flags]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                        env={**os.environ, **(env or {})})
        self.lines: deque[str] = deque(maxlen=2000)
        self.counts: dict[str, int] = {}
        self._ready: queue.Queue[int | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        port = self._ready.get(timeout=120)
        if port is None:
            raise SystemExit("the server exited at start:\n" + "\n".join(self.lines))
        self.port = port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            if m := re.search(r'"event":"started".*"port":(\d+)', line):
                self._ready.put(int(m.group(1)))
            if '"event":"request_start"' in line:
                self.counts["start"] = self.counts.get("start", 0) + 1
            if '"event":"request_done"' in line:
                try:
                    code = json.loads(line).get("code", "?")
                except ValueError:
                    code = "?"
                self.counts[code] = self.counts.get(code, 0) + 1
        self._ready.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def sidecar_pid(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            kids = children_of(self.pid)
            if kids:
                return kids[0]
            time.sleep(0.02)
        raise RuntimeError("no sidecar process")

    def resources(self) -> Resources:
        return resources(self.pid)

    def wait_serving(self, timeout_s: float = 120) -> None:
        watch = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service="llmbridge.v1.LocalLLM"), timeout=timeout_s)
        for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return
        raise RuntimeError("health never became SERVING")

    def stop(self) -> int:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def settle(server: Server, baseline: Resources, timeout_s: float = 20) -> Resources:
    """Waits (up to `timeout_s`) for the server's counts to come back to the
    baseline; returns the last sample either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = server.resources()
        if (now.fds <= baseline.fds and now.children <= baseline.children
                and now.threads <= baseline.threads) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


# --- the backend -----------------------------------------------------------------

class CountingOllama(FakeOllama):
    """FakeOllama (sidecar/tests/fake_ollama.py) that also counts the
    /api/chat requests it is still serving and stamps when each ended: a
    cancelled stream is over for the backend when its handler returns
    (the fake saw the client hang up)."""

    def __init__(self, port: int = 0) -> None:
        self.open_streams = 0
        self.ended_at: list[float] = []
        base = FakeOllama.handler_class

        class Handler(base):  # type: ignore[misc, valid-type]
            def log_message(self, format: str, *args: Any) -> None:
                pass  # thousands of requests: keep the suite's output readable

            def do_POST(self) -> None:
                with self.owner.lock:
                    self.owner.open_streams += 1
                try:
                    super().do_POST()
                finally:
                    with self.owner.lock:
                        self.owner.open_streams -= 1
                        self.owner.ended_at.append(time.monotonic())

        self.handler_class = Handler
        super().__init__(port)
        # Clients that hang up mid-request are what the suite is about.
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.open_streams == 0:
                    return True
            time.sleep(0.005)
        return False


def stream_request(pb: tuple[ModuleType, ModuleType], text: str, **fields: Any):
    llmbridge_pb2, _ = pb
    return llmbridge_pb2.CompleteRequest(
        messages=[llmbridge_pb2.Message(role="user", content=text)], **fields)
