"""The soak: 64 concurrent streams held for a long time (default 30
minutes) on the real server binary, sidecar and its echo backend (with a
delay between chunks, so each stream lasts seconds), sampling the server's
and the sidecar's RSS, open fds and threads every 10 s. After the warm-up
(a tenth of the run, at least a minute), the median of the last three
samples must not exceed the median of the first three by more than 5 %.

  tests/reliability/run soak                          # 30 minutes, 64 streams
  tests/reliability/run soak --minutes 3 --control-leak

--control-leak runs the same with a sidecar that leaks memory and fds on
purpose (leaky_sidecar.py): the check must fail then. Exits 1 when a check
failed."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc

from common import Server, load_stubs, resources, stream_request

HERE = Path(__file__).resolve().parent
GROWTH_LIMIT = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream")
    parser.add_argument("--delay-ms", type=int, default=100, help="between chunks")
    parser.add_argument("--control-leak", action="store_true",
                        help="use a sidecar that leaks on purpose: the check must fail")
    parser.add_argument("--json", help="also write the samples and figures here")
    args = parser.parse_args()

    pb = load_stubs()
    flags = ["--backend=echo"]
    sidecar = HERE / "leaky_sidecar.py" if args.control_leak else None
    server = Server(*flags, **({"sidecar": sidecar} if sidecar else {}))
    stop = threading.Event()
    counts = {"ok": 0, "error": 0}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    request = stream_request(pb, "soak", options=None)
    request.options.update({"chunks": args.chunks, "delay_ms": args.delay_ms})

    def stream_forever() -> None:
        stub = pb[1].LocalLLMStub(server.channel)
        while not stop.is_set():
            try:
                list(stub.Complete(request, timeout=120))
                with lock:
                    counts["ok"] += 1
            except grpc.RpcError as err:
                with lock:
                    counts["error"] += 1
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1

    samples: list[dict] = []
    workers: list[threading.Thread] = []
    started = time.monotonic()
    try:
        server.wait_serving()
        workers = [threading.Thread(target=stream_forever, daemon=True)
                   for _ in range(args.streams)]
        for w in workers:
            w.start()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            sidecar_pid = server.sidecar_pid(timeout_s=5)
            s, c = server.resources(), resources(sidecar_pid)
            with lock:
                done = dict(counts)
            sample = {"t_s": round(time.monotonic() - started, 1),
                      "server_rss_kb": s.rss_kb, "server_fds": s.fds,
                      "server_threads": s.threads + s.grpc_threads,
                      "sidecar_pid": sidecar_pid, "sidecar_rss_kb": c.rss_kb,
                      "sidecar_fds": c.fds, "sidecar_threads": c.threads + c.grpc_threads,
                      "streams_ok": done["ok"], "streams_failed": done["error"]}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    finally:
        # Streams in flight finish before the server stops: the count of
        # failed streams is about the soak, not about its end.
        stop.set()
        for w in workers:
            w.join(timeout=120)
        server.stop()

    warmup_s = max(60.0, args.minutes * 60 / 10)
    measured = [s for s in samples if s["t_s"] >= warmup_s]
    checks, figures = [], {}
    if len(measured) < 6:
        checks.append(("enough samples after the warm-up", False,
                       f"{len(measured)} samples; run longer"))
    else:
        for key in ("server_rss_kb", "server_fds", "server_threads",
                    "sidecar_rss_kb", "sidecar_fds", "sidecar_threads"):
            first = statistics.median(s[key] for s in measured[:3])
            last = statistics.median(s[key] for s in measured[-3:])
            growth = last / first - 1 if first else 0.0
            figures[key] = {"after_warmup": first, "end": last, "growth": round(growth, 4),
                            "max": max(s[key] for s in samples)}
            checks.append((f"{key} grew at most {GROWTH_LIMIT:.0%}", growth <= GROWTH_LIMIT,
                           f"{first:g} -> {last:g} ({growth:+.1%})"))
    restarts = len({s["sidecar_pid"] for s in samples}) - 1
    checks.append(("the sidecar never restarted", restarts == 0, f"{restarts} restarts"))
    checks.append(("no stream failed", counts["error"] == 0, json.dumps(errors)))
    elapsed = time.monotonic() - started
    figures.update({"minutes": args.minutes, "streams": args.streams,
                    "control_leak": args.control_leak, "warmup_s": warmup_s,
                    "streams_completed": counts["ok"], "streams_failed": counts["error"],
                    "streams_per_s": round(counts["ok"] / elapsed, 1)})
    print("== soak" + (" (control: a sidecar that leaks on purpose)" if args.control_leak else ""))
    for what, ok, detail in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}  [{detail}]")
    print("  " + json.dumps(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"figures": figures, "checks": checks, "samples": samples}, f, indent=2)
    failed = not all(ok for _, ok, _ in checks)
    print("soak: " + ("FAILED" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
