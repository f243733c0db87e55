"""The server as operators run it, on the real binary: --help documents every
flag, grpcurl reaches the health service through reflection, every log line
is JSON, and calls spread over replicas (client-side round_robin; a
pick_first client moving to a new replica once --max_connection_age has
passed). The backend is the sidecar's echo backend: these tests are about the
server, not a model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import ROOT, SERVER_BINARY
from real_engines import free_port
from test_complete_e2e import TIMEOUT_S, user
from test_examples import examples_ready  # noqa: F401  (a fixture)
from test_service_e2e import wait_serving

# Where examples/setup (run by the examples_ready fixture) installs grpcurl.
GRPCURL = Path(os.environ.get("LLMBRIDGE_CACHE_DIR",
                              Path.home() / ".cache" / "llmbridge")) / "bin" / "grpcurl"
# Only bounds a broken test; nothing here waits for a fixed time.
WAIT_S = 60


def readme_flags() -> set[str]:
    """The flags named in the first column of README.md's configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    flags: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `--"):
            first_column = line.split("|")[1]
            flags.update(re.findall(r"`--(\w+)`", first_column))
    assert flags, "no flag table found under ## Configuration in README.md"
    return flags


def help_flags(text: str) -> dict[str, str]:
    """flag -> its default, from Abseil's help output."""
    return {m.group(1): m.group(2) for m in
            re.finditer(r"^\s+--(\w+) \(.*?\);\s+default: (.*?);$", text, re.MULTILINE | re.DOTALL)}


# --- help --------------------------------------------------------------------

def test_help_documents_every_flag_of_the_readme_table_and_no_other():
    result = subprocess.run([str(SERVER_BINARY), "--help"], capture_output=True,
                            text=True, timeout=30, check=False)
    documented = help_flags(result.stdout)
    assert "No flags matched" not in result.stdout, result.stdout
    assert set(documented) == readme_flags(), (
        "README.md's configuration table and `llmbridge --help` disagree:\n"
        f"  only in README: {sorted(readme_flags() - set(documented))}\n"
        f"  only in --help: {sorted(set(documented) - readme_flags())}")
    assert documented["listen"] == '"127.0.0.1:50051"'
    assert documented["shutdown_grace"] == "30s"


def test_helpfull_still_adds_abseils_own_flags():
    result = subprocess.run([str(SERVER_BINARY), "--helpfull"], capture_output=True,
                            text=True, timeout=30, check=False)
    documented = help_flags(result.stdout)
    assert readme_flags() <= set(documented)
    assert "flagfile" in documented


# --- health through reflection -------------------------------------------------

def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True,
                          timeout=WAIT_S, check=False)


def test_grpcurl_checks_health_through_reflection(examples_ready, start_server):  # noqa: F811
    server = start_server("--backend=echo")
    address = f"127.0.0.1:{server.port}"
    wait_serving(server)  # readiness: the sidecar is up

    check = grpcurl("-plaintext", address, "grpc.health.v1.Health/Check")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout) == {"status": "SERVING"}

    check = grpcurl("-plaintext", "-d", '{"service": "llmbridge.v1.LocalLLM"}', address,
                    "grpc.health.v1.Health/Check")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout) == {"status": "SERVING"}

    described = grpcurl("-plaintext", address, "describe", "grpc.health.v1.Health")
    assert described.returncode == 0, described.stderr
    assert "rpc Check ( .grpc.health.v1.HealthCheckRequest ) returns " \
           "( .grpc.health.v1.HealthCheckResponse );" in described.stdout
    assert "rpc Watch ( .grpc.health.v1.HealthCheckRequest ) returns " \
           "( stream .grpc.health.v1.HealthCheckResponse );" in described.stdout


# --- logs ------------------------------------------------------------------------

def test_every_line_the_server_writes_is_one_json_object(pb, start_server):
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    server = start_server("--backend=echo")
    wait_serving(server)
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    list(stub.Complete(llmbridge_pb2.CompleteRequest(messages=user(pb, "one two")),
                       timeout=TIMEOUT_S))
    with pytest.raises(grpc.RpcError):
        list(stub.Complete(llmbridge_pb2.CompleteRequest(), timeout=TIMEOUT_S))
    assert server.stop() == 0
    lines = server.stderr.wait_closed()

    # Lines the sidecar wrote are wrapped as sidecar_log events too.
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(event, dict), line
        assert {"ts", "level", "event"} <= set(event), line
        events.append(event)
    names = [e["event"] for e in events]
    for expected in ("started", "request_start", "request_done", "shutdown", "stopped"):
        assert expected in names, names
    assert names[0] == "started" or "started" in names[:3], names
    assert names[-1] == "stopped", names
    sidecar = [e for e in events if e["event"] == "sidecar_log"]
    assert any("llmbridge sidecar" in e["line"] and "starting" in e["line"]
               for e in sidecar), sidecar
    assert all(isinstance(e["pid"], int) and e["pid"] > 0 for e in sidecar), sidecar


# --- replicas ------------------------------------------------------------------

def call_with_id(pb, channel: grpc.Channel, text: str = "hello replicas") -> str:
    """One Complete call tagged with a new x-request-id; returns the id."""
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    request_id = uuid.uuid4().hex
    stub = llmbridge_pb2_grpc.LocalLLMStub(channel)
    replies = list(stub.Complete(llmbridge_pb2.CompleteRequest(messages=user(pb, text)),
                                 timeout=TIMEOUT_S, metadata=[("x-request-id", request_id)]))
    assert replies and replies[-1].done
    return request_id


def served_ids(lines: list[str]) -> set[str]:
    """The request ids a replica logged as done."""
    ids = set()
    for line in lines:
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "request_done":
                ids.add(event["request_id"])
    return ids


def stopped_logs(servers) -> list[set[str]]:
    """Stops each replica and returns the ids each one served (its whole log)."""
    for server in servers:
        assert server.stop() == 0
    return [served_ids(server.stderr.wait_closed()) for server in servers]


def test_round_robin_client_spreads_calls_over_three_replicas(pb, start_server):
    replicas = [start_server("--backend=echo") for _ in range(3)]
    for replica in replicas:
        wait_serving(replica)
    # What a client dialing dns:///llmbridge-headless...:50051 gets from DNS:
    # every replica's address. Here they are written into the target.
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    with grpc.insecure_channel(target, options=[("grpc.service_config", config)]) as channel:
        sent = [call_with_id(pb, channel) for _ in range(30)]

    served = stopped_logs(replicas)
    assert set().union(*served) == set(sent)
    assert all(ids for ids in served), (
        f"calls per replica: {[len(ids) for ids in served]}: round_robin should reach all three")


def wait_for_state_change(channel: grpc.Channel, away_from: grpc.ChannelConnectivity) -> None:
    """Waits (bounded) until the channel leaves `away_from`, e.g. READY when
    the server closes the connection."""
    changed = threading.Event()

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state != away_from:
            changed.set()

    channel.subscribe(on_state)
    try:
        assert changed.wait(WAIT_S), f"the channel stayed {away_from} for {WAIT_S}s"
    finally:
        channel.unsubscribe(on_state)


def test_max_connection_age_moves_a_pick_first_client_to_a_new_replica(pb, start_server):
    # pick_first takes the first address that answers. The new replica's
    # address comes first but nothing listens there yet, so the client
    # connects to the old replica and, without a maximum connection age,
    # would stay there for good.
    new_port = free_port()
    old = start_server("--backend=echo", "--max_connection_age=2s",
                       "--max_connection_age_grace=30s")
    wait_serving(old)
    target = f"ipv4:127.0.0.1:{new_port},127.0.0.1:{old.port}"
    with grpc.insecure_channel(target) as channel:
        on_old = call_with_id(pb, channel)
        new = start_server("--backend=echo", f"--listen=127.0.0.1:{new_port}")
        wait_serving(new)
        # The old replica sends GOAWAY once the connection is 2 s (+-10%) old:
        # the channel leaves READY, and the next call connects anew.
        wait_for_state_change(channel, grpc.ChannelConnectivity.READY)
        on_new = call_with_id(pb, channel)

    served_by_old, served_by_new = stopped_logs([old, new])
    assert on_old in served_by_old
    assert on_new in served_by_new, "the client did not move to the new replica"
