#!/usr/bin/env python3
"""Micro-benchmark: which async HTTP client should the sidecar's HTTP backends use?

Every client does exactly what the sidecar's OpenAI-compatible backend does
per request: POST a JSON chat body with ``stream: true`` and
``stream_options.include_usage``, read the SSE answer line by line, parse
every ``data:`` event as JSON until ``data: [DONE]``, then read the response
to its end so the connection can go back to the pool (except the
``httpx-close`` row: the sidecar's old behaviour, which closed the response at
``[DONE]``). The server is bench/fast_openai.py in its own process (answers
at once), so the numbers are the client's own cost.

Each (client, loop, concurrency) case runs in a fresh interpreter; cases are
interleaved (every round runs every case once, in rotated order) and each
number is the median of ``--rounds`` rounds. Columns: requests/s, client CPU
microseconds per request (user + system of the client process), the fake's
CPU per request, latency p50/p99 in ms, and the TCP connections the client
opened per 1,000 requests (the fake counts them; reuse shows as ~0).

    .venv/bin/python bench/http_clients.py                   # all cases
    .venv/bin/python bench/http_clients.py --clients aiohttp,httpx --c 1,64

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = ("httpx-close", "httpx", "httpcore", "aiohttp", "http1")
try:  # uvloop is not one of the project's dependencies: `pip install uvloop` to compare it
    import uvloop  # noqa: F401

    LOOPS: tuple[str, ...] = ("asyncio", "uvloop")
except ImportError:
    LOOPS = ("asyncio",)
POOL = 1024  # the pool size the sidecar uses (connections per backend)


def body_bytes(chunks: int, dumps: Callable[[Any], bytes]) -> bytes:
    return dumps(
        {
            "model": "fake-model",
            "messages": [{"role": "user", "content": "Say hello"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": chunks,
        }
    )


class SseCounter:
    """Splits raw body bytes into SSE lines and parses each ``data:`` event up
    to ``[DONE]`` (for the clients that hand over bytes, not lines)."""

    def __init__(self, loads: Callable[[Any], Any]) -> None:
        self._loads = loads
        self._buf = b""
        self.events = 0
        self.done = False

    def feed(self, part: bytes) -> None:
        self._buf += part
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                return
            self._loads(payload)
            self.events += 1


# ---- one client per function: returns a coroutine function doing one request ----


def make_httpx(url: str, body: bytes, loads: Callable[[Any], Any], read_to_end: bool) -> Any:
    import httpx

    limits = (
        httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        if read_to_end
        else httpx.Limits()  # the sidecar's old client: the defaults (100)
    )
    client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0))
    headers = {"content-type": "application/json"}

    async def one() -> int:
        events = 0
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                loads(payload)
                events += 1
            if read_to_end:
                async for _ in lines:
                    pass
        return events

    return one, client.aclose


def make_httpcore(url: str, body: bytes, loads: Callable[[Any], Any]) -> Any:
    import httpcore

    pool = httpcore.AsyncConnectionPool(max_connections=POOL, max_keepalive_connections=POOL)
    headers = [(b"content-type", b"application/json"), (b"host", url.split("/")[2].encode())]

    async def one() -> int:
        sse = SseCounter(loads)
        async with pool.stream("POST", url, headers=headers, content=body) as resp:
            assert resp.status == 200
            async for part in resp.aiter_stream():
                if not sse.done:  # else read to the end
                    sse.feed(part)
        return sse.events

    return one, pool.aclose


def make_aiohttp(url: str, body: bytes, loads: Callable[[Any], Any]) -> Any:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=30, sock_connect=10),
    )
    headers = {"Content-Type": "application/json"}

    async def one() -> int:
        events = 0
        async with session.post(url, data=body, headers=headers) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                loads(payload)
                events += 1
            await resp.read()  # the rest (an empty line, the last chunk): back to the pool
        return events

    return one, session.close


def make_http1(url: str, body: bytes, loads: Callable[[Any], Any]) -> Any:
    """The sidecar's own client (sidecar/llmbridge_sidecar/backends/http1.py),
    read the way its LineStream reads: whatever is buffered, split into lines."""
    sys.path.insert(0, os.path.join(HERE, "..", "sidecar"))
    from llmbridge_sidecar.backends import http1

    base, path = url.rsplit("/v1/", 1)
    pool = http1.Pool(
        base,
        limit=POOL,
        keepalive_s=4.0,
        connect_timeout_s=10.0,
        pool_timeout_s=30.0,
        read_timeout_s=30.0,
    )
    headers = {"Content-Type": "application/json"}

    async def one() -> int:
        sse = SseCounter(loads)
        async with await pool.request("POST", "/v1/" + path, body, headers) as resp:
            assert resp.status == 200
            while not sse.done and (part := await resp.read_some()):
                sse.feed(part)
            await resp.read()  # the rest: back to the pool
            resp.release()
        return sse.events

    return one, pool.aclose


async def run_case(args: argparse.Namespace) -> dict[str, Any]:
    if args.json == "orjson":
        import orjson

        dumps: Callable[[Any], bytes] = orjson.dumps
        loads: Callable[[Any], Any] = orjson.loads
    else:
        dumps = lambda o: json.dumps(o, separators=(",", ":")).encode()
        loads = json.loads
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    body = body_bytes(args.chunks, dumps)
    if args.client == "httpx-close":
        one, close = make_httpx(url, body, loads, read_to_end=False)
    elif args.client == "httpx":
        one, close = make_httpx(url, body, loads, read_to_end=True)
    elif args.client == "httpcore":
        one, close = make_httpcore(url, body, loads)
    elif args.client == "http1":
        one, close = make_http1(url, body, loads)
    else:
        one, close = make_aiohttp(url, body, loads)
    latencies: list[float] = []
    warm_up = [0]

    async def worker(deadline: float, record: bool) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            events = await one()
            if record:
                latencies.append(time.perf_counter() - t0)
            else:
                warm_up[0] += 1
            assert events == args.chunks + 3, events  # role, chunks, finish, usage

    async def batch(seconds: float, record: bool) -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(worker(deadline, record) for _ in range(args.c)))

    await batch(0.5, record=False)  # warm-up: connections, caches
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await batch(args.seconds, record=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "all_requests": n + warm_up[0],  # what the fake served, warm-up included
        "rps": n / wall,
        "cpu_us": cpu / n * 1e6,
        "p50_ms": latencies[n // 2] * 1e3,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
    }


def case_main(args: argparse.Namespace) -> None:
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(run_case(args))
    else:
        result = asyncio.run(run_case(args))
    print(json.dumps(result))


def start_fake() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "fast_openai.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first.startswith("PORT="):
        proc.kill()
        raise SystemExit(f"fast_openai.py did not start: {first!r}")
    return proc, int(first[5:])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fake_connections(port: int) -> int:
    """Connections the fake accepted so far, not counting this query's own."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        return int(json.load(resp)["connections"]) - 1


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--json-codecs", default="json", help="json and/or orjson")
    parser.add_argument("--c", default="1,8,64,256", help="concurrency levels")
    parser.add_argument("--chunks", type=int, default=1, help="content chunks per answer")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per case")
    parser.add_argument("--rounds", type=int, default=3)
    # Internal: run one case in this process.
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="json", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        args.c = int(args.c)
        case_main(args)
        return

    fake, port = start_fake()
    cases = [
        (client, loop, codec, int(c))
        for c in args.c.split(",")
        for client in args.clients.split(",")
        for loop in args.loops.split(",")
        for codec in args.json_codecs.split(",")
    ]
    results: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {k: [] for k in cases}
    print(f"machine: {os.cpu_count()} CPUs, load average at start: {loadavg()}", flush=True)
    try:
        for r in range(args.rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for client, loop, codec, c in order:
                fake_cpu0 = proc_cpu_s(fake.pid)
                conns0 = fake_connections(port)
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--case",
                        f"--client={client}",
                        f"--loop={loop}",
                        f"--json={codec}",
                        f"--c={c}",
                        f"--chunks={args.chunks}",
                        f"--seconds={args.seconds}",
                        f"--port={port}",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    print(f"{client}/{loop}/{codec} c={c} failed:\n{out.stderr}", flush=True)
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                n = result["all_requests"]
                result["fake_cpu_us"] = (proc_cpu_s(fake.pid) - fake_cpu0) / n * 1e6
                # The pool opens up to c connections during the warm-up.
                result["conns_per_1k"] = (fake_connections(port) - conns0 - 1) / n * 1000
                results[(client, loop, codec, c)].append(result)
                print(
                    f"round {r + 1}: {client:11} {loop:7} {codec:6} c={c:<4} "
                    f"{result['rps']:8.0f} req/s  {result['cpu_us']:6.0f} us cpu/req  "
                    f"p50 {result['p50_ms']:.2f} ms  {result['conns_per_1k']:.0f} conn/1k",
                    flush=True,
                )
    finally:
        fake.kill()
        fake.wait()
    print(
        f"\nload average at end: {loadavg()}\n"
        "\n| client | loop | json | c | req/s | client CPU us/req | fake CPU us/req "
        "| p50 ms | p99 ms | connections per 1k req |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for (client, loop, codec, c), runs in results.items():
        if not runs:
            continue

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"| {client} | {loop} | {codec} | {c} | {med('rps'):,.0f} | {med('cpu_us'):,.0f} "
            f"| {med('fake_cpu_us'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} "
            f"| {med('conns_per_1k'):,.1f} |"
        )


if __name__ == "__main__":
    main()
