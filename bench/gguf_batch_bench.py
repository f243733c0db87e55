#!/usr/bin/env python3
"""The gguf backend under concurrency, sidecar only (see BENCHMARKS.md):
measured, never asserted.

Drives the real sidecar (sidecar/sidecar.py, gguf backend, bundled SmolLM2)
over its stdio JSON-RPC, without the C++ server: ``c`` closed-loop clients,
each sending streamed ``complete`` requests one after another (temperature
0, ``--max-tokens`` tokens, end of turn banned so every answer has exactly
that many; each request's user message starts with its own number, so only
the chat template's system prompt is shared). Per configuration and ``c``:
output tokens/s over all clients, time to first token p50/p99, and the
sidecar's peak RSS.

Configurations (``--configs``, comma-separated):
  batched    this tree, continuous batching with n_seq_max 8 (the default)
  batched16  this tree, n_seq_max 16
  serial     this tree, n_seq_max 1 (one sequence at a time, through the scheduler)
  baseline   the sidecar of ``--baseline-rev`` (git archive; default HEAD), which
             for a tree before batching is the one-generation-at-a-time path
Configurations are interleaved round by round (``--rounds``) so machine
noise hits them alike; each round restarts no process (the sidecars stay up).

Usage: .venv/bin/python bench/gguf_batch_bench.py [--concurrency 1,4,8,16]
       [--configs batched,serial,baseline] [--rounds 2] [--requests-per-client 3]
       [--baseline-rev REV] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STORY = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the island, the weather, the keeper's daily routine, the bottle, the "
    "message, and what the keeper decides to do about it."
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
        return sc

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            rid = msg.get("id") if "method" not in msg else msg["params"].get("request_id")
            queue = self._waiters.get(rid)
            if queue is not None:
                queue.put_nowait(msg)

    async def send(self, method: str, params: dict[str, Any]) -> tuple[int, Any]:
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


@dataclass
class Sample:
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0


async def one_request(sc: Sidecar, number: int, max_tokens: int, sample: Sample) -> None:
    params = {
        "messages": [{"role": "user", "content": f"Request {number}. {STORY}"}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "options": NO_END,
    }
    start = time.perf_counter()
    _, queue = await sc.send("complete", params)
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


async def closed_loop(sc: Sidecar, c: int, per_client: int, max_tokens: int) -> Sample:
    sample = Sample()
    numbers = itertools.count()

    async def client() -> None:
        for _ in range(per_client):
            await one_request(sc, next(numbers), max_tokens, sample)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(c)))
    sample.wall_s = time.perf_counter() - start
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
    parser.add_argument("--baseline-rev", default="HEAD")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    script = ROOT / "sidecar" / "sidecar.py"
    configs: dict[str, tuple[Path, dict[str, Any]]] = {
        "batched": (script, {"n_ctx": 1024}),
        "batched16": (script, {"n_ctx": 1024, "n_seq_max": 16}),
        "serial": (script, {"n_ctx": 1024, "n_seq_max": 1}),
    }
    names = args.configs.split(",")
    if "baseline" in names:
        configs["baseline"] = (baseline_tree(args.baseline_rev), {"n_ctx": 1024})
    levels = [int(x) for x in args.concurrency.split(",")]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    sidecars = {name: await Sidecar.start(*configs[name]) for name in names}
    results: dict[tuple[str, int], list[Sample]] = {}
    try:
        for _ in range(args.rounds):
            for c in levels:
                for name in names:
                    sample = await closed_loop(
                        sidecars[name], c, args.requests_per_client, args.max_tokens
                    )
                    results.setdefault((name, c), []).append(sample)
                    print(
                        f"  {name:10s} c={c:3d} {sample.tokens / sample.wall_s:7.1f} tok/s "
                        f"TTFT p50 {statistics.median(sample.ttft_s) * 1000:7.0f} ms",
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
                "requests": len(ttft),
                "peak_rss_mib": round(rss[name], 1),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return
    print("| config | c | output tok/s | TTFT p50 | TTFT p99 | requests | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (names.index(r["config"]), r["c"])):
        print(
            f"| {r['config']} | {r['c']} | {r['tok_s']} | {r['ttft_p50_ms']:.0f} ms | "
            f"{r['ttft_p99_ms']:.0f} ms | {r['requests']} | {r['peak_rss_mib']:.0f} MiB |"
        )


if __name__ == "__main__":
    asyncio.run(main())
