"""Bearer-token authentication (--auth_token_file) on the real binary.

A call without the right `authorization: Bearer <token>` metadata ends with
UNAUTHENTICATED before any work (the backend sees nothing, the server logs
no request); health stays open for kubelet probes and reflection by default;
tokens rotate without a restart (file change, Kubernetes Secret symlink
swap, SIGHUP); a token never appears in the logs. The example clients'
side is in test_examples.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import SERVER_BINARY, SIDECAR
from test_complete_e2e import user
from test_service_e2e import MODEL, ollama, pki  # noqa: F401 (fixtures)

# Distinctive, so that a leak into the logs cannot go unnoticed.
ALPHA = "tok-alpha-6f1c0e9d"
BETA = "tok-beta-91ab22c3"
GAMMA = "tok-gamma-5d0e7f10"
COMPLETE = "/llmbridge.v1.LocalLLM/Complete"


def write_tokens(path, *tokens: str) -> None:
    """Replaces the file at once (write, then rename), as an operator should."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# llmbridge tokens\n\n" + "\n".join(tokens) + "\n")
    os.replace(tmp, path)


def auth_server(start_server, ollama, token_file, *flags):
    return start_server("--backend=ollama", f"--host={ollama.host}", f"--model={MODEL}",
                        f"--auth_token_file={token_file}", *flags)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def stream(pb, channel, metadata=None, text="Say hello."):
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    return list(llmbridge_pb2_grpc.LocalLLMStub(channel).Complete(
        llmbridge_pb2.CompleteRequest(messages=user(pb, text)), metadata=metadata, timeout=60))


def refused(pb, channel, metadata=None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stream(pb, channel, metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
    return err.value


def list_services(channel, metadata=None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=metadata, timeout=15)
    return [s.name for reply in replies for s in reply.list_services_response.service]


def health(channel, service="") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=15).status


def test_calls_without_the_right_token_are_refused_before_any_work(pb, start_server, ollama,
                                                                   tmp_path):
    token_file = tmp_path / "tokens"
    write_tokens(token_file, ALPHA, BETA)
    server = auth_server(start_server, ollama, token_file)
    llmbridge_pb2, llmbridge_pb2_grpc = pb
    stub = llmbridge_pb2_grpc.LocalLLMStub(server.channel)

    missing = refused(pb, server.channel)
    assert "authorization: Bearer <token>" in missing.details()
    refused(pb, server.channel, bearer(GAMMA))
    refused(pb, server.channel, [("authorization", f"Basic {ALPHA}")])
    for unary in (lambda: stub.GetCapabilities(llmbridge_pb2.GetCapabilitiesRequest(), timeout=15),
                  lambda: stub.ListTools(llmbridge_pb2.ListToolsRequest(), timeout=15)):
        with pytest.raises(grpc.RpcError) as err:
            unary()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # No work was done for any of them: the backend saw no request, and the
    # server logged no request (only the rate-limited rejection summary).
    assert ollama.requests == []
    assert not any('"request_start"' in line for line in server.stderr.lines)

    # Every accepted token works, with the scheme in any case.
    for token in (ALPHA, BETA):
        assert "".join(r.content for r in stream(pb, server.channel, bearer(token))) == \
            "Hello from fake Ollama"
    stream(pb, server.channel, [("authorization", f"bearer {ALPHA}")])
    assert len(ollama.requests) == 3

    assert server.stop() == 0
    logs = "\n".join(server.stderr.lines)
    for token in (ALPHA, BETA, GAMMA):
        assert token not in logs, "a token reached the logs"


def expect_rotated_to_beta(pb, server, trigger: str) -> None:
    """Waits for the server to reload its tokens (its log says so), then
    checks that ALPHA is refused and BETA accepted."""
    server.stderr.wait_for(rf'"event":"auth_tokens_loaded".*"trigger":"{trigger}"', 30)
    assert server.process.poll() is None, f"the server died on {trigger}"
    refused(pb, server.channel, bearer(ALPHA))
    stream(pb, server.channel, bearer(BETA))


def test_health_and_reflection_stay_open_by_default(pb, start_server, ollama, tmp_path):
    token_file = tmp_path / "tokens"
    write_tokens(token_file, ALPHA)
    server = auth_server(start_server, ollama, token_file)
    assert health(server.channel) in (health_pb2.HealthCheckResponse.SERVING,
                                      health_pb2.HealthCheckResponse.NOT_SERVING)
    assert "llmbridge.v1.LocalLLM" in list_services(server.channel)


def test_reflection_can_require_the_token(pb, start_server, ollama, tmp_path):
    token_file = tmp_path / "tokens"
    write_tokens(token_file, ALPHA)
    server = auth_server(start_server, ollama, token_file, "--auth_reflection=false")
    with pytest.raises(grpc.RpcError) as err:
        list_services(server.channel)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "llmbridge.v1.LocalLLM" in list_services(server.channel, bearer(ALPHA))
    health(server.channel)  # still open


def test_tokens_rotate_when_the_file_is_replaced(pb, start_server, ollama, tmp_path):
    token_file = tmp_path / "tokens"
    write_tokens(token_file, ALPHA)
    server = auth_server(start_server, ollama, token_file)
    stream(pb, server.channel, bearer(ALPHA))

    write_tokens(token_file, BETA)
    expect_rotated_to_beta(pb, server, "file changed")


def test_tokens_rotate_on_a_kubernetes_secret_update(pb, start_server, ollama, tmp_path):
    """A mounted Secret is tokens -> ..data/tokens, ..data -> ..<timestamp>/;
    an update writes a new timestamped directory and renames a new ..data
    symlink over the old one."""
    mount = tmp_path / "secret"
    mount.mkdir()

    def version(name: str, token: str) -> None:
        (mount / name).mkdir()
        (mount / name / "tokens").write_text(token + "\n")
        os.symlink(name, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    version("..2026_11_30_01", ALPHA)
    os.symlink("..data/tokens", mount / "tokens")
    server = auth_server(start_server, ollama, mount / "tokens")
    stream(pb, server.channel, bearer(ALPHA))

    version("..2026_11_30_02", BETA)
    expect_rotated_to_beta(pb, server, "file changed")


def test_sighup_reloads_the_tokens(pb, start_server, ollama, tmp_path):
    token_file = tmp_path / "tokens"
    write_tokens(token_file, ALPHA)
    server = auth_server(start_server, ollama, token_file)
    # Rewritten in place with the same size and mtime: only SIGHUP can tell.
    before = token_file.stat()
    token_file.write_text(token_file.read_text().replace(ALPHA, BETA))
    os.utime(token_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    server.process.send_signal(signal.SIGHUP)
    expect_rotated_to_beta(pb, server, "SIGHUP")


def test_a_reload_without_tokens_keeps_the_tokens_in_use(pb, start_server, ollama, tmp_path):
    token_file = tmp_path / "tokens"
    write_tokens(token_file, ALPHA)
    server = auth_server(start_server, ollama, token_file)
    write_tokens(token_file)  # comments only: a half-finished edit
    server.stderr.wait_for(r'"event":"auth_reload_failed"', 30)
    stream(pb, server.channel, bearer(ALPHA))


def test_token_over_tls(pb, start_server, ollama, tmp_path, pki):  # noqa: F811
    token_file = tmp_path / "tokens"
    write_tokens(token_file, ALPHA)
    server = auth_server(start_server, ollama, token_file, f"--tls_cert={pki}/server.pem",
                         f"--tls_key={pki}/server.key")
    creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
        refused(pb, channel)
        refused(pb, channel, bearer(BETA))
        assert stream(pb, channel, bearer(ALPHA))[-1].done
        health(channel)


def test_unreadable_token_file_exits_2(tmp_path):
    for content, needle in ((None, "auth_token_file: cannot read"),
                            ("# no tokens\n", "auth_token_file: no tokens")):
        path = tmp_path / "tokens"
        if content is not None:
            path.write_text(content)
        proc = subprocess.run([str(SERVER_BINARY), "--listen=127.0.0.1:0",
                               f"--python={sys.executable}", f"--sidecar={SIDECAR}",
                               "--backend=ollama", f"--auth_token_file={path}"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr, proc.stderr
