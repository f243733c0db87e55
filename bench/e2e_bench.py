#!/usr/bin/env python3
"""End-to-end benchmark: llmbridge vs direct HTTP vs the LiteLLM proxy. Run it with bench/e2e.

Paths, all in front of the same fast fake OpenAI-compatible server
(bench/fast_openai.py: answers at once, so every microsecond measured is
the relay's own):

* ``direct``: HTTP straight to the fake (the floor);
* ``llmbridge``: a gRPC client -> the llmbridge server (``--backend vllm``)
  -> its sidecar(s) -> the fake;
* ``litellm``: HTTP to the LiteLLM proxy -> the fake.

For each answer size (``--chunks``: content chunks per answer, the fake's
``max_tokens``) and concurrency ``c``, every path runs for ``--seconds``,
the paths interleaved (each round in rotated order), ``--rounds`` rounds;
reported numbers are medians over rounds. Each case's client is a fresh
process (asyncio, aiohttp for HTTP, grpc.aio for gRPC) with ``c`` workers,
each sending its next request when the previous one ended.

Reported per path: requests/s, time to first content chunk (TTFC) and total
time p50/p99, the added p50/p99 over ``direct`` in the same round, CPU
milliseconds per request of every process (from /proc: the llmbridge server,
its sidecars, the LiteLLM proxy's process tree, the fake, the client), peak
RSS during the case (server + sidecars; LiteLLM tree), errors, and the
machine's load average. A ``--probe-c`` (default 1024) run of llmbridge
checks that throughput does not collapse past the pool sizes.

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "bench" / "fast_openai.py"
SIDECAR = ROOT / "sidecar" / "sidecar.py"
PROMPT = "Say hello"
MODEL = "fake-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- the client (one process per case) -------------------------------------


@dataclass
class Sample:
    ttfc: float
    total: float


async def http_worker(
    session: Any,
    url: str,
    body: bytes,
    headers: dict[str, str],
    chunks: int,
    deadline: float,
    out: list[Sample],
    errors: list[str],
) -> None:
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        ttfc = 0.0
        got = 0
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    errors.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                    continue
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    event = json.loads(payload)
                    for choice in event.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            if not got:
                                ttfc = time.perf_counter() - t0
                            got += 1
                await resp.read()
        except Exception as e:  # counted, reported; the benchmark goes on
            errors.append(f"{type(e).__name__}: {e}")
            continue
        if got != chunks:
            errors.append(f"expected {chunks} chunks, got {got}")
            continue
        out.append(Sample(ttfc, time.perf_counter() - t0))


async def grpc_worker(
    stub: Any, pb: Any, chunks: int, deadline: float, out: list[Sample], errors: list[str]
) -> None:
    request = pb.CompleteRequest(
        messages=[pb.Message(role="user", content=PROMPT)], max_tokens=chunks
    )
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        ttfc = 0.0
        got = 0
        done = False
        try:
            async for resp in stub.Complete(request, timeout=60):
                if resp.content:
                    if not got:
                        ttfc = time.perf_counter() - t0
                    got += 1 if resp.content == "tok " else resp.content.count("tok ")
                done = done or resp.done
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e)[:300]}")
            continue
        if got != chunks or not done:
            errors.append(f"expected {chunks} chunks and done, got {got}, done={done}")
            continue
        out.append(Sample(ttfc, time.perf_counter() - t0))


def load_stubs(gen_dir: str) -> tuple[Any, Any]:
    from grpc_tools import protoc

    proto_include = Path(protoc.__file__).parent / "_proto"
    if not (Path(gen_dir) / "llmbridge" / "v1" / "llmbridge_pb2.py").exists():
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT / 'proto'}",
                f"-I{proto_include}",
                f"--python_out={gen_dir}",
                f"--grpc_python_out={gen_dir}",
                str(ROOT / "proto" / "llmbridge" / "v1" / "llmbridge.proto"),
            ]
        )
        if rc != 0:
            raise SystemExit("protoc failed on llmbridge.proto")
    sys.path.insert(0, gen_dir)
    import importlib

    return (
        importlib.import_module("llmbridge.v1.llmbridge_pb2"),
        importlib.import_module("llmbridge.v1.llmbridge_pb2_grpc"),
    )


Worker = Callable[[int, float, list[Sample], list[str]], Awaitable[None]]


async def measure(
    c: int, seconds: float, worker: Worker, samples: list[Sample], errors: list[str]
) -> tuple[float, float]:
    """Half a second of warm-up, then ``c`` workers for ``seconds``: (wall, CPU) seconds."""
    warm_until = time.perf_counter() + 0.5
    await asyncio.gather(*(worker(i, warm_until, [], []) for i in range(c)))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i, t0 + seconds, samples, errors) for i in range(c)))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
    samples: list[Sample] = []
    errors: list[str] = []
    if args.path == "llmbridge":
        import grpc

        pb, pb_grpc = load_stubs(args.gen_dir)
        channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
        stubs = [pb_grpc.LocalLLMStub(ch) for ch in channels]

        async def call(i: int, until: float, out: list[Sample], errs: list[str]) -> None:
            await grpc_worker(stubs[i % len(stubs)], pb, args.chunks, until, out, errs)

        wall, cpu = await measure(args.c, args.seconds, call, samples, errors)
        for ch in channels:
            await ch.close()
    else:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.c, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=60),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": args.chunks,
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
        url = f"http://{args.target}/v1/chat/completions"

        async def post(i: int, until: float, out: list[Sample], errs: list[str]) -> None:
            await http_worker(session, url, body, headers, args.chunks, until, out, errs)

        wall, cpu = await measure(args.c, args.seconds, post, samples, errors)
        await session.close()
    ttfc = sorted(s.ttfc for s in samples)
    total = sorted(s.total for s in samples)
    n = len(samples)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(len(values) * q))] * 1e3 if values else 0.0

    return {
        "requests": n,
        "wall_s": wall,
        "rps": n / wall,
        "client_cpu_s": cpu,
        "ttfc_p50": pct(ttfc, 0.5),
        "ttfc_p99": pct(ttfc, 0.99),
        "total_p50": pct(total, 0.5),
        "total_p99": pct(total, 0.99),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
    }


def client_main(args: argparse.Namespace) -> None:
    print(json.dumps(asyncio.run(run_client(args))), flush=True)


# ---- processes and /proc ----------------------------------------------------


def proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[21]) * PAGE


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    out = [pid]
    for child in children(pid):
        out += tree(child)
    return out


@dataclass
class Tracked:
    """A group of processes whose CPU and RSS are reported together."""

    name: str
    pids: list[int]
    cpu0: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        self.cpu0 = {p: s[0] for p in self.pids if (s := proc_stat(p)) is not None}

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.pids:
            s = proc_stat(p)
            if s is not None:
                total += s[0] - self.cpu0.get(p, 0.0)
        return total

    def rss(self) -> int:
        return sum(s[1] for p in self.pids if (s := proc_stat(p)) is not None)


def wait_line(
    proc: subprocess.Popen[str], stream: Any, pattern: str, limit_s: float, sink: str = ""
) -> re.Match[str]:
    """The first line of ``stream`` matching ``pattern``; the rest of the stream is
    drained (into the file ``sink`` when given) so the child never blocks on it."""
    regex = re.compile(pattern)
    found: list[re.Match[str]] = []
    seen: list[str] = []
    done = threading.Event()

    def pump() -> None:
        out = open(sink, "a") if sink else None  # noqa: SIM115 - closed below
        for line in iter(stream.readline, ""):
            if found:
                if out is not None:
                    out.write(line)
                continue
            seen.append(line.rstrip())
            if m := regex.search(line):
                found.append(m)
                done.set()
        if out is not None:
            out.close()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    if not done.wait(limit_s) or not found:
        proc.kill()
        raise SystemExit(f"{proc.args[0]} did not print {pattern!r}:\n" + "\n".join(seen[-30:]))
    return found[0]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start_fake() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    return proc, int(wait_line(proc, proc.stdout, r"^PORT=(\d+)", 30).group(1))


def start_llmbridge(
    binary: str, sidecar: str, fake_port: int, extra: list[str], log_path: str
) -> tuple[subprocess.Popen[str], int]:
    argv = [
        binary,
        "--listen=127.0.0.1:0",
        f"--python={sys.executable}",
        f"--sidecar={sidecar}",
        "--backend=vllm",
        f"--host=127.0.0.1:{fake_port}",
        f"--model={MODEL}",
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    match = wait_line(proc, proc.stderr, r'"event":"started".*"port":(\d+)', 60, sink=log_path)
    return proc, int(match.group(1))


def start_litellm(litellm: str, fake_port: int, workdir: str) -> tuple[subprocess.Popen[str], int]:
    import socket

    config = Path(workdir) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{fake_port}/v1\n"
        "      api_key: fake-key\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {
        **os.environ,
        # No network here: the bundled model cost map, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        # No master key: llmbridge and the fake check no credentials either.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    log = open(Path(workdir) / "litellm.log", "w")  # noqa: SIM115 - lives as long as the proxy
    proc = subprocess.Popen(
        [
            litellm,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=workdir,
    )
    deadline = time.monotonic() + 180
    delay = 0.2
    # Polling a condition with a deadline: the proxy prints nothing reliable when ready.
    while not http_ok(f"http://127.0.0.1:{port}/health/liveliness"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(
                "LiteLLM proxy did not start:\n"
                + (Path(workdir) / "litellm.log").read_text()[-3000:]
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
    return proc, port


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---- the orchestration --------------------------------------------------------


def run_case(
    args: argparse.Namespace,
    path: str,
    target: str,
    c: int,
    chunks: int,
    groups: list[Tracked],
    fake: Tracked,
) -> dict[str, Any]:
    for g in (*groups, fake):
        g.start()
    peak_rss = {g.name: 0 for g in groups}
    common = [
        f"--path={path}",
        f"--target={target}",
        f"--c={c}",
        f"--chunks={chunks}",
        f"--seconds={args.seconds}",
        f"--channels={args.channels}",
    ]
    if args.client_binary:
        argv = [args.client_binary, *common]
        if args.honour_retry_info:
            argv.append("--honour_retry_info")
    else:
        argv = [sys.executable, __file__, "--client", f"--gen-dir={args.gen_dir}", *common]
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    while client.poll() is None:
        for g in groups:
            peak_rss[g.name] = max(peak_rss[g.name], g.rss())
        time.sleep(0.1)  # sampling RSS while the case runs
    out = client.stdout.read() if client.stdout else ""
    if client.returncode != 0 or not out.strip():
        raise SystemExit(f"client for {path} c={c} failed (exit {client.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    n = max(1, result["requests"])
    result["cpu_ms"] = {g.name: g.cpu_s() / n * 1e3 for g in groups}
    result["cpu_ms"]["fake"] = fake.cpu_s() / n * 1e3
    result["cpu_ms"]["client"] = result["client_cpu_s"] / n * 1e3
    result["rss_mib"] = {k: v / 2**20 for k, v in peak_rss.items()}
    result["load1"] = float(loadavg().split()[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="llmbridge server binary (bench/e2e builds -c opt)")
    parser.add_argument("--litellm", default="", help="the litellm CLI of its own venv")
    parser.add_argument(
        "--sidecar",
        default=str(SIDECAR),
        help="sidecar.py to run (e.g. an older tree's, to compare)",
    )
    parser.add_argument("--paths", default="direct,llmbridge,litellm")
    parser.add_argument("--c", default="1,8,64", help="concurrency levels")
    parser.add_argument("--chunks", default="1,64", help="content chunks per answer")
    parser.add_argument("--probe-c", type=int, default=1024, help="llmbridge-only probe; 0: none")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels of the client")
    parser.add_argument("--json-out", default="", help="also write every result here")
    parser.add_argument(
        "--client-binary",
        default="",
        help="the C++ load client (//bench:load_client) instead of the Python one, "
        "for every path (bench/e2e --client=cpp)",
    )
    parser.add_argument(
        "--honour-retry-info",
        action="store_true",
        help="with the C++ client: a worker refused with a RetryInfo waits its delay "
        "before its next call (a well-behaved client) instead of resending at once",
    )
    # Internal: one client process.
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--gen-dir", default="", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    if args.client:
        args.c = int(args.c)
        args.chunks = int(args.chunks)
        client_main(args)
        return
    extra = [a for a in extra if a != "--"]
    if args.honour_retry_info and not args.client_binary:
        parser.error("--honour-retry-info needs the C++ client (bench/e2e --client=cpp)")
    paths = args.paths.split(",")
    if "litellm" in paths and not args.litellm:
        paths.remove("litellm")
        print("LiteLLM: not installed (bench/e2e installs it); skipped", flush=True)
    levels = [int(c) for c in args.c.split(",")]
    sizes = [int(k) for k in args.chunks.split(",")]

    workdir = tempfile.mkdtemp(prefix="llmbridge-e2e-bench-")
    args.gen_dir = workdir
    load_stubs(workdir)  # generate once, before any client
    procs: list[subprocess.Popen[Any]] = []
    try:
        fake_proc, fake_port = start_fake()
        procs.append(fake_proc)
        fake = Tracked("fake", [fake_proc.pid])
        targets: dict[str, str] = {"direct": f"127.0.0.1:{fake_port}"}
        groups: dict[str, list[Tracked]] = {"direct": []}
        if "llmbridge" in paths:
            server, port = start_llmbridge(
                args.server, args.sidecar, fake_port, extra, str(Path(workdir) / "llmbridge.log")
            )
            procs.append(server)
            targets["llmbridge"] = f"127.0.0.1:{port}"
        if "litellm" in paths:
            proxy, lport = start_litellm(args.litellm, fake_port, workdir)
            procs.append(proxy)
            targets["litellm"] = f"127.0.0.1:{lport}"
        # One warm-up case per path: the sidecar starts on the first call.
        for path in paths:
            run_case(args, path, targets[path], 1, 1, [], fake)
        if "llmbridge" in paths:
            sidecars = children(server.pid)
            groups["llmbridge"] = [Tracked("server", [server.pid]), Tracked("sidecars", sidecars)]
            print(
                f"llmbridge: server pid {server.pid}, sidecar pids {sidecars}, "
                f"extra flags {extra or 'none'}",
                flush=True,
            )
        if "litellm" in paths:
            groups["litellm"] = [Tracked("litellm", tree(proxy.pid))]
        client = args.client_binary or "Python (grpc.aio for gRPC, aiohttp for HTTP)"
        print(f"machine: {os.cpu_count()} CPUs, load average at start: {loadavg()}", flush=True)
        print(f"client: {client}", flush=True)
        results: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
        cases = [(k, c) for k in sizes for c in levels]
        for r in range(args.rounds):
            for k, c in cases:
                order = paths[r % len(paths) :] + paths[: r % len(paths)]
                for path in order:
                    res = run_case(args, path, targets[path], c, k, groups[path], fake)
                    results.setdefault((k, c, path), []).append(res)
                    print(
                        f"round {r + 1} chunks={k:<3} c={c:<4} {path:9} {res['rps']:8.0f} req/s "
                        f"total p50 {res['total_p50']:7.2f} ms  errors {res['errors']}",
                        flush=True,
                    )
                if args.probe_c and "llmbridge" in paths and c == levels[-1]:
                    res = run_case(
                        args,
                        "llmbridge",
                        targets["llmbridge"],
                        args.probe_c,
                        k,
                        groups["llmbridge"],
                        fake,
                    )
                    results.setdefault((k, args.probe_c, "llmbridge"), []).append(res)
                    print(
                        f"round {r + 1} chunks={k:<3} c={args.probe_c:<4} llmbridge "
                        f"{res['rps']:8.0f} req/s  errors {res['errors']} "
                        f"{res['first_errors'][:1]}",
                        flush=True,
                    )
        print(f"load average at end: {loadavg()}", flush=True)
        report(results, paths)
        if args.json_out:
            Path(args.json_out).write_text(
                json.dumps({f"{k}|{c}|{p}": v for (k, c, p), v in results.items()}, indent=1)
            )
    finally:
        for proc in reversed(procs):
            stop(proc)


def report(results: dict[tuple[int, int, str], list[dict[str, Any]]], paths: list[str]) -> None:
    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def med_nested(runs: list[dict[str, Any]], outer: str, inner: str) -> float:
        return statistics.median(r[outer].get(inner, 0.0) for r in runs)

    print(
        "\n| chunks | c | path | req/s | TTFC p50 / p99 ms | total p50 / p99 ms "
        "| added p50 / p99 ms | CPU ms/req (relay processes) | client CPU ms/req "
        "| peak RSS MiB | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (k, c, path), runs in sorted(
        results.items(), key=lambda kv: (kv[0][0], kv[0][1], paths.index(kv[0][2]))
    ):
        direct = results.get((k, c, "direct"))
        if direct and path != "direct":
            added = (
                f"{med(runs, 'total_p50') - med(direct, 'total_p50'):.2f} / "
                f"{med(runs, 'total_p99') - med(direct, 'total_p99'):.2f}"
            )
        else:
            added = "-"
        cpu_keys = [key for key in runs[0]["cpu_ms"] if key not in ("client", "fake")]
        cpu = ", ".join(f"{key} {med_nested(runs, 'cpu_ms', key):.3f}" for key in cpu_keys)
        if len(cpu_keys) > 1:
            cpu += f" (sum {sum(med_nested(runs, 'cpu_ms', key) for key in cpu_keys):.3f})"
        rss = ", ".join(
            f"{key} {max(r['rss_mib'][key] for r in runs):.0f}" for key in runs[0]["rss_mib"]
        )
        print(
            f"| {k} | {c} | {path} | {med(runs, 'rps'):,.0f} "
            f"| {med(runs, 'ttfc_p50'):.2f} / {med(runs, 'ttfc_p99'):.2f} "
            f"| {med(runs, 'total_p50'):.2f} / {med(runs, 'total_p99'):.2f} | {added} "
            f"| {cpu or '-'} | {med_nested(runs, 'cpu_ms', 'client'):.3f} | {rss or '-'} "
            f"| {sum(r['errors'] for r in runs)} |"
        )


if __name__ == "__main__":
    main()
