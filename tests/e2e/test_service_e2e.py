"""The gRPC service as operators and client authors see it, on the real
binary: rich error details, deadlines and cancellation reaching the backend,
health, graceful shutdown, configuration, metrics, logs, TLS and limits.
The backend is the protocol-faithful Ollama fake (run in-process here, so a
test can see what the backend saw)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from conftest import ROOT, SERVER_BINARY, SIDECAR
from test_complete_e2e import complete, user

sys.path.insert(0, str(ROOT / "sidecar" / "tests"))
from fake_ollama import FakeOllama  # noqa: E402

MODEL = "llama3.2:latest"


@pytest.fixture
def ollama():
    with FakeOllama() as fake:
        yield fake


def ollama_server(start_server, fake, *flags):
    return start_server("--backend=ollama", f"--host={fake.host}", f"--model={MODEL}", *flags)


def error_details(err: grpc.RpcError):
    """(ErrorInfo, RetryInfo or None) from the grpc-status-details-bin trailer."""
    status = rpc_status.from_call(err)
    assert status is not None, "the error carries no google.rpc.Status details"
    infos, retries = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retries.append(retry)
    assert len(infos) == 1, f"want exactly one ErrorInfo, got {infos}"
    return infos[0], (retries[0] if retries else None)


def wait_serving(server, service="llmbridge.v1.LocalLLM"):
    """Follows a health Watch until SERVING (the sidecar starts at boot)."""
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=60)
    for reply in watch:
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            watch.cancel()
            return
    raise AssertionError("health never became SERVING")


# --- rich errors -------------------------------------------------------------

def test_unknown_model_carries_error_info(pb, start_server, ollama):
    server = ollama_server(start_server, ollama)
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"), model="nope:1b")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    info, retry = error_details(err.value)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.domain == "llmbridge.io"
    assert info.metadata["jsonrpc_code"] == "-32001"
    assert info.metadata["backend"] == "ollama"
    assert info.metadata["model"] == "nope:1b"
    assert retry is None  # fixing the request is what helps, not retrying


def test_unreachable_backend_is_retryable(pb, start_server):
    server = start_server("--backend=ollama", "--host=127.0.0.1:1", "--model=x")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    info, retry = error_details(err.value)
    assert info.reason == "BACKEND_UNAVAILABLE"
    assert info.metadata["jsonrpc_code"] == "-32003"
    assert retry is not None and retry.retry_delay.seconds >= 1


def test_backend_500_is_internal_with_http_status(pb, start_server, ollama):
    server = ollama_server(start_server, ollama)
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "[[http-500]]"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    info, _ = error_details(err.value)
    assert info.reason == "BACKEND_ERROR"
    assert info.metadata["http_status"] == "500"
    assert "fake server failure" in err.value.details()


def test_midstream_backend_error_is_internal_without_retry_info(pb, start_server, ollama):
    """Ollama's own {"error": ...} line mid-stream: the same request fails the
    same way again, so no RetryInfo invites the client to retry it (a
    dropped connection stays UNAVAILABLE: tests/reliability's backend kill)."""
    server = ollama_server(start_server, ollama)
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "[[midstream-error]]"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    info, retry = error_details(err.value)
    assert info.reason == "STREAM_INTERRUPTED"
    assert retry is None


def test_invalid_request_has_reason_and_is_rejected_before_the_sidecar(pb, start_server, ollama):
    server = ollama_server(start_server, ollama, "--max_request_bytes=100")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "x" * 101))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("messages:")
    assert "--max_request_bytes" in err.value.details()
    info, _ = error_details(err.value)
    assert info.reason == "INVALID_REQUEST"
    assert ollama.requests == []  # the backend never saw it


def test_message_over_max_message_bytes_is_refused_by_grpc(pb, start_server, ollama):
    server = ollama_server(start_server, ollama, "--max_message_bytes=2000")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "y" * 5000))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- deadlines and cancellation -----------------------------------------------

def test_client_cancel_reaches_the_backend(pb, start_server, ollama):
    server = ollama_server(start_server, ollama)
    wait_serving(server)
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    call = llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
        llmbridge_pb2.CompleteRequest(messages=user(pb, "[[hold]]")), timeout=60)
    first = next(call)
    assert first.content == "Hello"
    assert ollama.holding.wait(10)
    cancelled_at = time.monotonic()
    call.cancel()
    assert ollama.client_disconnected.wait(10), "the backend never saw the cancel"
    # Reported, not asserted tightly (shared machines are noisy): the issue's
    # target is 50 ms from the client's cancel to the sidecar's cancel.
    print(f"cancel -> backend disconnect: {(ollama.disconnected_at - cancelled_at) * 1000:.1f} ms")
    assert ollama.disconnected_at - cancelled_at < 5


def test_deadline_ends_the_call_and_stops_the_backend(pb, start_server, ollama):
    server = ollama_server(start_server, ollama)
    wait_serving(server)
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    call = llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
        llmbridge_pb2.CompleteRequest(messages=user(pb, "[[hold]]")), timeout=1.0)
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ollama.client_disconnected.wait(10), "the backend kept generating"


# --- health --------------------------------------------------------------------

def test_health_is_serving_only_with_a_reachable_backend(pb, start_server, ollama):
    good = ollama_server(start_server, ollama)
    wait_serving(good, "")
    wait_serving(good, "llmbridge.v1.LocalLLM")
    with pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(good.channel).Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    bad = start_server("--backend=ollama", "--host=127.0.0.1:1", "--model=x",
                       "--health_interval=200ms")
    health = health_pb2_grpc.HealthStub(bad.channel)
    # Every status the server reports over a few probes must be NOT_SERVING.
    watch = health.Watch(health_pb2.HealthCheckRequest(service="llmbridge.v1.LocalLLM"),
                         timeout=3)
    statuses = []
    with pytest.raises(grpc.RpcError):  # the watch runs until its deadline
        for reply in watch:
            statuses.append(reply.status)
    assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.NOT_SERVING}


def test_sigterm_drains_streams_then_stops_everything(pb, start_server, ollama):
    server = ollama_server(start_server, ollama, "--shutdown_grace=30s")
    wait_serving(server)
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)
    call = stub.Complete(llmbridge_pb2.CompleteRequest(messages=user(pb, "[[hold]]")),
                         timeout=60)
    assert next(call).content == "Hello"
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(
        health_pb2.HealthCheckRequest(service="llmbridge.v1.LocalLLM"), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    sidecar_pids = children_of(server.process.pid)

    server.process.send_signal(signal.SIGTERM)
    # 1. Health turns NOT_SERVING.
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    # 2. The in-flight stream is allowed to finish...
    server.stderr.wait_for(r'"event":"shutdown"')
    # ...while new calls are refused, with a reason that says why...
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "too late"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(err.value)[0].reason == "SHUTTING_DOWN"
    ollama.release.set()
    rest = list(call)
    assert rest[-1].done and "".join(r.content for r in rest) == " from fake Ollama"
    # 3. ...then the sidecar is stopped and the server exits 0.
    assert server.process.wait(timeout=30) == 0
    for pid in sidecar_pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_sigterm_cancels_streams_still_running_after_the_grace(pb, start_server, ollama):
    server = ollama_server(start_server, ollama, "--shutdown_grace=500ms")
    wait_serving(server)
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    call = llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
        llmbridge_pb2.CompleteRequest(messages=user(pb, "[[hold]]")), timeout=60)
    assert next(call).content == "Hello"
    server.process.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    # Failed by the server, saying why (not cut off by the transport).
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert error_details(err.value)[0].reason == "SHUTTING_DOWN"
    assert ollama.client_disconnected.wait(10), "the backend kept generating"
    assert server.process.wait(timeout=30) == 0


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


# --- configuration -------------------------------------------------------------

def test_config_file_in_the_seed_shape_with_flag_overrides(pb, start_server, ollama, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "backend": "ollama", "host": ollama.host, "model": "tiny",
        "python_path": sys.executable, "sidecar_path": str(SIDECAR),
        "startup_timeout": "20s", "request_timeout": 300_000_000_000,  # Go's ns
        "env": {"LLMBRIDGE_TEST": "1"}, "mcp_servers": {},
        "shutdown_grace": "5s", "log_prompts": False,
    }))
    server = start_server(f"--config={config}", f"--model={MODEL}")
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    caps = llmbridge_pb2_grpc.LocalLLMStub(server.channel).GetCapabilities(
        llmbridge_pb2.GetCapabilitiesRequest(), timeout=30)
    assert caps.backend == "ollama"
    assert caps.model == MODEL  # the flag won over the file's "tiny"
    assert not caps.mcp          # no MCP servers configured: the sidecar says so
    responses = complete(pb, server, messages=user(pb, "Hi"))
    assert responses[-1].model == MODEL


@pytest.mark.parametrize("content, needle", [
    ({"backend": "ollama", "modle": "x"}, "modle: unknown key"),
    ({"backend": "ollama", "startup_timeout": "soon"}, "startup_timeout:"),
    ({"backend": "gpt5"}, "backend: unknown backend 'gpt5'"),
    ({"backend": "ollama", "tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"},
     "tls_cert: cannot read"),
    ({"backend": "ollama", "mcp_servers": {"x": {"type": "carrier-pigeon"}}},
     "mcp_servers.x.type"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, content, needle):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(content))
    proc = subprocess.run([str(SERVER_BINARY), f"--config={config}", f"--sidecar={SIDECAR}"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr


def test_invalid_json_config_exits_2(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{not json")
    proc = subprocess.run([str(SERVER_BINARY), f"--config={config}"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert "not valid JSON" in proc.stderr


def test_help_documents_every_flag():
    proc = subprocess.run([str(SERVER_BINARY), "--helpfull"], capture_output=True, text=True,
                          timeout=30)
    text = proc.stdout + proc.stderr
    for flag in ["config", "listen", "backend", "model", "host", "python", "sidecar",
                 "work_dir", "startup_timeout", "request_timeout", "shutdown_grace",
                 "health_interval", "metrics_listen", "tls_cert", "tls_key", "tls_client_ca",
                 "max_message_bytes", "max_request_bytes", "log_prompts",
                 "auth_token_file", "auth_reflection"]:
        assert re.search(rf"-{flag} \(", text), f"--{flag} is not documented"


# --- observability -------------------------------------------------------------

def test_metrics_count_requests_tokens_and_sidecar_starts(pb, start_server, ollama):
    server = ollama_server(start_server, ollama, "--metrics_listen=127.0.0.1:0")
    port = server.started["metrics_port"]
    complete(pb, server, messages=user(pb, "Hi"))
    with pytest.raises(grpc.RpcError):
        complete(pb, server, messages=user(pb, "Hi"), model="nope:1b")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def value(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+]+)", text)
        assert m, f"{pattern} not in /metrics:\n{text}"
        return float(m.group(1))

    assert value(r'llmbridge_requests_total\{code="OK",method="Complete"\}') == 1
    assert value(r'llmbridge_requests_total\{code="NOT_FOUND",method="Complete"\}') == 1
    assert value(r'llmbridge_requests_in_flight\{method="Complete"\}') == 0
    assert value(r'llmbridge_time_to_first_chunk_seconds_count') == 1
    assert value(r'llmbridge_request_duration_seconds_count\{method="Complete"\}') == 2
    assert value(r'llmbridge_output_tokens_total') == 4
    assert value(r'llmbridge_sidecar_starts_total\{model="llama3.2:latest"\}') == 1
    assert value(r'llmbridge_sidecars_ready\{model="llama3.2:latest"\}') == 1
    assert value(r'llmbridge_rejected_total\{model="llama3.2:latest"\}') == 0


def test_logs_are_json_lines_with_request_id_and_no_prompt(pb, start_server, ollama):
    server = ollama_server(start_server, ollama)
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    secret = "my secret prompt 1234"
    call = llmbridge_pb2_grpc.LocalLLMStub(server.channel).Complete(
        llmbridge_pb2.CompleteRequest(messages=user(pb, secret)), timeout=60,
        metadata=[("x-request-id", "req-abc-123")])
    list(call)
    assert dict(call.initial_metadata())["x-request-id"] == "req-abc-123"
    server.stderr.wait_for(r'"event":"request_done"')
    events = [json.loads(line) for line in server.stderr.lines if line.startswith("{")]
    done = [e for e in events if e["event"] == "request_done"]
    assert done[0]["request_id"] == "req-abc-123" and done[0]["code"] == "OK"
    assert not any(secret in line for line in server.stderr.lines)


def test_log_prompts_opt_in(pb, start_server, ollama):
    server = ollama_server(start_server, ollama, "--log_prompts")
    complete(pb, server, messages=user(pb, "visible prompt 42"))
    server.stderr.wait_for(r"visible prompt 42")


def test_nolog_prompts_wins_over_a_config_file_that_logs_them(pb, start_server, ollama,
                                                               tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "backend": "ollama", "host": ollama.host, "model": MODEL,
        "python_path": sys.executable, "sidecar_path": str(SIDECAR), "log_prompts": True,
    }))
    server = start_server(f"--config={config}", "--nolog_prompts")
    complete(pb, server, messages=user(pb, "private prompt 77"))
    server.stderr.wait_for(r'"event":"request_done"')
    assert not any("private prompt 77" in line for line in server.stderr.lines)


# --- TLS -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, cwd=d, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=llmbridge test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


def tls_call(pb, port, creds):
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        return llmbridge_pb2_grpc.LocalLLMStub(channel).GetCapabilities(
            llmbridge_pb2.GetCapabilitiesRequest(), timeout=15)


def test_tls(pb, start_server, ollama, pki):
    server = ollama_server(start_server, ollama, f"--tls_cert={pki}/server.pem",
                           f"--tls_key={pki}/server.key")
    ca = (pki / "ca.pem").read_bytes()
    assert tls_call(pb, server.port, grpc.ssl_channel_credentials(ca)).backend == "ollama"
    with pytest.raises(grpc.RpcError) as err:  # plaintext is refused
        complete(pb, server, messages=user(pb, "Hi"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(pb, start_server, ollama, pki):
    server = ollama_server(start_server, ollama, f"--tls_cert={pki}/server.pem",
                           f"--tls_key={pki}/server.key", f"--tls_client_ca={pki}/ca.pem")
    ca = (pki / "ca.pem").read_bytes()
    with pytest.raises(grpc.RpcError):
        tls_call(pb, server.port, grpc.ssl_channel_credentials(ca))
    creds = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(),
                                         (pki / "client.pem").read_bytes())
    assert tls_call(pb, server.port, creds).backend == "ollama"
