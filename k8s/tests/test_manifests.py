"""Checks that the rendered k8s manifests agree with the server they deploy.

scripts/validate-k8s renders every kustomization into a folder and runs this
file with LLMBRIDGE_K8S_RENDERED pointing at it. What the server accepts is
read from the server itself: `llmbridge --helpfull` (LLMBRIDGE_BIN, default
bazel-bin/service/llmbridge), or service/main.cc when the binary is not
built; the gRPC service name from the proto; the backends from
rpc_bridge/config.h; the image's user and paths from the Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

# scripts/validate-k8s runs this with a venv that has PyYAML; the project's
# .venv has none, so a bare `pytest` at the top of the tree skips this file.
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
RENDERED = os.environ.get("LLMBRIDGE_K8S_RENDERED", "")
SERVER_BIN = Path(os.environ.get("LLMBRIDGE_BIN", ROOT / "bazel-bin/service/llmbridge"))

# Flags the manifests use that the server is gaining in parallel work; until
# the binary has them, the test that needs them is skipped, not failed.
PLANNED_FLAGS = {"config", "metrics_listen", "shutdown_grace"}
# Defaults of the planned flags, as specified for them.
PLANNED_DEFAULTS = {"shutdown_grace": "30s", "metrics_listen": "", "config": ""}
# Time llmbridge gives its sidecar to stop after the gRPC server has drained
# (the seed's stop sequence: shutdown RPC, close stdin, wait 5 s, kill).
SIDECAR_STOP_SECONDS = 5
# terminationGracePeriodSeconds may exceed the sum of the above by this much.
GRACE_MARGIN_SECONDS = 15
# A startup probe's window covers the longer of --startup_timeout and the
# backend containers' own startup windows, plus this much to start the server
# and for its health check to notice; it may exceed that by STARTUP_SLACK.
STARTUP_MARGIN_SECONDS = 15
STARTUP_SLACK_SECONDS = 60
# The seed's Config fields (docs of the Go package; rpc_bridge/config.h).
CONFIG_KEYS = {
    "backend", "sidecar_path", "model", "host", "python_path", "startup_timeout",
    "request_timeout", "work_dir", "env", "mcp_servers",
}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


# ---------------------------------------------------------------- the server


def parse_duration(text: str) -> float:
    """Seconds in an absl/Go duration such as 30s, 5m, 1m30s, 1500ms."""
    text = text.strip().strip('"')
    if text == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _flags_from_help(text: str) -> dict[str, str]:
    flags = {}
    for m in re.finditer(r"--(\w+) \(.*?\);\s+default: (.*?);", text, re.DOTALL):
        flags[m.group(1)] = m.group(2).strip().strip('"')
    return flags


def _flags_from_source() -> dict[str, str]:
    flags = {}
    for src in sorted((ROOT / "service").glob("*.cc")):
        text = src.read_text()
        for m in re.finditer(r"ABSL_FLAG\(\s*[\w:<>]+\s*,\s*(\w+)\s*,\s*(.*?),\s*\"", text, re.DOTALL):
            default = m.group(2).strip()
            if d := re.fullmatch(r"absl::(Seconds|Minutes|Milliseconds)\((\d+)\)", default):
                unit = {"Seconds": "s", "Minutes": "m", "Milliseconds": "ms"}[d.group(1)]
                default = d.group(2) + unit
            if default == "absl::ZeroDuration()":
                default = "0"
            flags[m.group(1)] = default.strip('"')
    return flags


@dataclass(frozen=True)
class Server:
    flags: dict[str, str]  # name -> default, as text
    source: str
    service_name: str  # package.Service of the proto
    health_names: frozenset[str]  # names the server reports SERVING for
    backends: frozenset[str]


@pytest.fixture(scope="session")
def server() -> Server:
    if SERVER_BIN.exists():
        out = subprocess.run([str(SERVER_BIN), "--helpfull"], capture_output=True,
                             text=True, timeout=30)
        flags, source = _flags_from_help(out.stdout + out.stderr), f"{SERVER_BIN} --helpfull"
    else:
        flags, source = _flags_from_source(), "service/*.cc (binary not built)"
    assert "listen" in flags, f"no --listen flag found in {source}"

    proto = next((ROOT / "proto").rglob("llmbridge.proto")).read_text()
    package = re.search(r"^package\s+([\w.]+);", proto, re.M).group(1)
    service = re.search(r"^service\s+(\w+)", proto, re.M).group(1)
    name = f"{package}.{service}"
    server_src = "".join(p.read_text() for p in sorted((ROOT / "service").glob("*.[ch]*")))
    assert f'"{name}"' in server_src, f"the server never names {name} (health status)"
    assert re.search(r'SetServingStatus\(\s*""\s*,', server_src), (
        'the server does not report the whole-server status ("")')

    config_h = (ROOT / "rpc_bridge/config.h").read_text()
    backends = frozenset(re.findall(r'kBackend\w+\[\]\s*=\s*"([^"]+)"', config_h))
    assert backends, "no backends found in rpc_bridge/config.h"
    return Server(flags, source, name, frozenset({"", name}), backends)


# ------------------------------------------------------------- the manifests


def _render_files() -> list[Path]:
    if not RENDERED:
        return []
    return sorted(Path(RENDERED).glob("*.yaml"))


RENDER_FILES = _render_files()
if not RENDER_FILES:
    pytest.skip("LLMBRIDGE_K8S_RENDERED is not set or empty: run scripts/validate-k8s",
                allow_module_level=True)


@dataclass
class Pod:
    """A workload's pod template and where llmbridge sits in it."""
    owner: dict[str, Any]
    spec: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]
    llmbridge: dict[str, Any]
    as_native_sidecar: bool

    def containers(self) -> Iterator[dict[str, Any]]:
        yield from self.spec.get("initContainers", [])
        yield from self.spec["containers"]


class Rendered:
    def __init__(self, path: Path):
        self.name = path.stem
        self.objects = [o for o in yaml.safe_load_all(path.read_text()) if o]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def pods(self) -> list[Pod]:
        pods = []
        for owner in self.of_kind("Deployment"):
            tmpl = owner["spec"]["template"]
            spec = tmpl["spec"]
            for init in (False, True):
                for c in spec.get("initContainers" if init else "containers", []):
                    if c["name"] == "llmbridge" or "/llmbridge:" in c["image"]:
                        assert not init or c.get("restartPolicy") == "Always", (
                            "llmbridge as an init container must be a native sidecar "
                            "(restartPolicy: Always)")
                        pods.append(Pod(owner, spec, tmpl["metadata"].get("labels", {}),
                                        tmpl["metadata"].get("annotations", {}), c, init))
        return pods

    def config_map(self, name: str) -> dict[str, Any]:
        for cm in self.of_kind("ConfigMap"):
            if cm["metadata"]["name"] == name:
                return cm
        raise AssertionError(f"{self.name}: no ConfigMap {name}")


@pytest.fixture(scope="module", params=RENDER_FILES, ids=lambda p: p.stem)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param)


def flag_args(container: dict[str, Any]) -> dict[str, str]:
    args = container.get("command", [])[1:] + container.get("args", [])
    out = {}
    for a in args:
        m = re.fullmatch(r"--(\w+)(?:=(.*))?", a)
        assert m, f"{container['name']}: argument {a!r} is not --flag=value"
        out[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
    return out


def effective(server: Server, args: dict[str, str], flag: str) -> str:
    if flag in args:
        return args[flag]
    if flag in server.flags:
        return server.flags[flag]
    return PLANNED_DEFAULTS[flag]


def split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def named_port(container: dict[str, Any], name: str) -> int:
    for p in container.get("ports", []):
        if p.get("name") == name:
            return p["containerPort"]
    raise AssertionError(f"{container['name']} has no port named {name!r}")


def resolve_port(pods: list[Pod], port: int | str) -> set[int]:
    """A Service targetPort or NetworkPolicy port, as container port numbers."""
    if isinstance(port, int):
        return {port}
    return {p["containerPort"] for pod in pods for c in pod.containers()
            for p in c.get("ports", []) if p.get("name") == port}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------- tests


def test_llmbridge_is_deployed(rendered: Rendered) -> None:
    assert rendered.pods(), f"{rendered.name}: no llmbridge container in any Deployment"


def test_args_are_server_flags(rendered: Rendered, server: Server) -> None:
    missing_planned = set()
    for pod in rendered.pods():
        for flag in flag_args(pod.llmbridge):
            if flag in server.flags:
                continue
            assert flag in PLANNED_FLAGS, (
                f"{rendered.name}: --{flag} is not a flag of the server ({server.source})")
            missing_planned.add(flag)
    if missing_planned:
        pytest.skip("server lacks planned flags " +
                    ", ".join(f"--{f}" for f in sorted(missing_planned)))


def test_listen_address_is_reachable_by_the_probes(rendered: Rendered, server: Server) -> None:
    for pod in rendered.pods():
        host, port = split_host_port(effective(server, flag_args(pod.llmbridge), "listen"))
        assert host not in LOOPBACK_HOSTS, (
            f"{rendered.name}: --listen={host}:{port} is loopback, but kubelet's gRPC "
            "probes dial the pod IP: listen on 0.0.0.0")
        assert named_port(pod.llmbridge, "grpc") == port
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = pod.llmbridge.get(kind)
            assert probe and "grpc" in probe, f"{rendered.name}: llmbridge needs a gRPC {kind}"
            assert probe["grpc"]["port"] == port, (
                f"{rendered.name}: {kind} dials port {probe['grpc']['port']}, "
                f"the server listens on {port}")


def test_probes_ask_for_the_served_health_names(rendered: Rendered, server: Server) -> None:
    for pod in rendered.pods():
        for kind in ("startupProbe", "readinessProbe"):
            got = pod.llmbridge[kind]["grpc"].get("service", "")
            assert got == server.service_name, (
                f"{rendered.name}: {kind} asks for {got!r}, want {server.service_name!r}")
        got = pod.llmbridge["livenessProbe"]["grpc"].get("service", "")
        assert got in server.health_names, (
            f"{rendered.name}: livenessProbe asks for {got!r}, which the server does not "
            f"report (it reports {sorted(server.health_names)}): Check would fail NOT_FOUND")


def test_service_speaks_grpc_to_the_listen_port(rendered: Rendered, server: Server) -> None:
    pods = [p for p in rendered.pods() if not p.as_native_sidecar]
    if not pods:
        pytest.skip("llmbridge is a sidecar here: reached on localhost, no Service")
    services = [s for s in rendered.of_kind("Service")
                if any(selects(s["spec"].get("selector", {}), p.labels) for p in pods)]
    assert services, f"{rendered.name}: no Service selects the llmbridge pods"
    for svc in services:
        grpc_ports = [p for p in svc["spec"]["ports"] if p.get("appProtocol") == "grpc"]
        assert grpc_ports, f"{rendered.name}: Service {svc['metadata']['name']} has no appProtocol: grpc port"
        for pod in pods:
            _, port = split_host_port(effective(server, flag_args(pod.llmbridge), "listen"))
            for p in grpc_ports:
                assert resolve_port([pod], p.get("targetPort", p["port"])) == {port}


def test_prometheus_scrapes_the_metrics_port(rendered: Rendered, server: Server) -> None:
    for pod in rendered.pods():
        addr = effective(server, flag_args(pod.llmbridge), "metrics_listen")
        assert addr, f"{rendered.name}: --metrics_listen is not set"
        host, port = split_host_port(addr)
        assert host not in LOOPBACK_HOSTS, f"{rendered.name}: metrics on loopback"
        assert pod.annotations.get("prometheus.io/scrape") == "true"
        assert int(pod.annotations.get("prometheus.io/port", "0")) == port
        assert pod.annotations.get("prometheus.io/path") == "/metrics"
        assert named_port(pod.llmbridge, "metrics") == port


def test_termination_grace_covers_shutdown_grace(rendered: Rendered, server: Server) -> None:
    for pod in rendered.pods():
        grace = parse_duration(effective(server, flag_args(pod.llmbridge), "shutdown_grace"))
        pre_stop = 0.0
        if hook := pod.llmbridge.get("lifecycle", {}).get("preStop"):
            cmd = hook.get("exec", {}).get("command", [])
            assert cmd[:1] == ["sleep"], f"{rendered.name}: unexpected preStop {hook}"
            pre_stop = float(cmd[1])
        need = pre_stop + grace + SIDECAR_STOP_SECONDS
        got = pod.spec.get("terminationGracePeriodSeconds", 30)
        assert need <= got <= need + GRACE_MARGIN_SECONDS, (
            f"{rendered.name}: terminationGracePeriodSeconds={got}, but preStop {pre_stop:g}s "
            f"+ --shutdown_grace {grace:g}s + sidecar stop {SIDECAR_STOP_SECONDS}s = {need:g}s "
            f"(allowed: {need:g}..{need + GRACE_MARGIN_SECONDS:g})")


def probe_window(probe: dict[str, Any]) -> float:
    """Seconds a probe keeps trying before it fails (Kubernetes' defaults)."""
    return (probe.get("initialDelaySeconds", 0)
            + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3))


def test_startup_probe_window_derives_from_startup_timeout(rendered: Rendered,
                                                           server: Server) -> None:
    for pod in rendered.pods():
        args, config = flag_args(pod.llmbridge), _config(rendered, pod)
        timeout = args.get("startup_timeout") or config.get("startup_timeout") \
            or server.flags["startup_timeout"]
        startup = (timeout / 1e9 if isinstance(timeout, int) else parse_duration(timeout))
        # llmbridge is SERVING only once its backend answers: a backend
        # container that may take longer to start sets the pace.
        backends = {c["name"]: probe_window(c["startupProbe"]) for c in pod.spec["containers"]
                    if c is not pod.llmbridge and "startupProbe" in c}
        need = max([startup, *backends.values()]) + STARTUP_MARGIN_SECONDS
        got = probe_window(pod.llmbridge["startupProbe"])
        assert need <= got <= need + STARTUP_SLACK_SECONDS, (
            f"{rendered.name}: llmbridge's startup probe gives up after {got:g}s, but "
            f"--startup_timeout is {startup:g}s and the backends' startup windows are "
            f"{backends}: want {need:g}..{need + STARTUP_SLACK_SECONDS:g}s "
            "(periodSeconds x failureThreshold)")


def test_replicas_can_share_the_load(rendered: Rendered, server: Server) -> None:
    pods = [p for p in rendered.pods() if not p.as_native_sidecar]
    if not pods:
        pytest.skip("llmbridge is a sidecar here: one client, on localhost")
    for pod in pods:
        args = flag_args(pod.llmbridge)
        age = parse_duration(effective(server, args, "max_connection_age"))
        assert age > 0, (
            f"{rendered.name}: without --max_connection_age, clients already connected "
            "never reach pods added later")
        grace = parse_duration(effective(server, args, "max_connection_age_grace"))
        request = parse_duration(effective(server, args, "request_timeout"))
        assert grace == 0 or grace >= request, (
            f"{rendered.name}: --max_connection_age_grace={grace:g}s would cut streams "
            f"that --request_timeout={request:g}s allows")
        headless = [s for s in rendered.of_kind("Service")
                    if s["spec"].get("clusterIP") == "None"
                    and selects(s["spec"].get("selector", {}), pod.labels)
                    and any(p.get("appProtocol") == "grpc" for p in s["spec"]["ports"])]
        assert headless, (f"{rendered.name}: no headless Service (clusterIP: None) for "
                          "client-side round_robin over the pods")


def _config(rendered: Rendered, pod: Pod) -> dict[str, Any]:
    path = flag_args(pod.llmbridge).get("config")
    assert path, f"{rendered.name}: llmbridge has no --config"
    mount = next((m for m in pod.llmbridge.get("volumeMounts", [])
                  if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    assert mount, f"{rendered.name}: nothing is mounted at {path}"
    volume = next(v for v in pod.spec["volumes"] if v["name"] == mount["name"])
    cm = rendered.config_map(volume["configMap"]["name"])
    rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
    key = next((i["key"] for i in volume["configMap"].get("items", []) if i["path"] == rel), rel)
    return json.loads(cm["data"][key])


def test_config_file_is_a_valid_server_config(rendered: Rendered, server: Server) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for pod in rendered.pods():
        config = _config(rendered, pod)
        assert set(config) <= CONFIG_KEYS, f"unknown keys {set(config) - CONFIG_KEYS}"
        assert config["backend"] in server.backends
        for key in ("python_path", "sidecar_path"):
            if config.get(key):
                assert config[key] in dockerfile, (
                    f"{rendered.name}: {key} {config[key]} is not where the Dockerfile puts it")
        for key in ("startup_timeout", "request_timeout"):
            if key in config:
                parse_duration(str(config[key]))


def test_backend_container_matches_the_config(rendered: Rendered) -> None:
    for pod in rendered.pods():
        config = _config(rendered, pod)
        others = {c["name"]: c for c in pod.spec["containers"] if c is not pod.llmbridge}
        backend = config["backend"]
        if backend == "gguf":
            assert not {"ollama", "vllm"} & set(others), "gguf runs in-process"
            continue
        _, port = split_host_port(config["host"])
        if backend == "ollama":
            env = {e["name"]: e for e in others["ollama"].get("env", [])}
            assert split_host_port(env["OLLAMA_HOST"]["value"])[1] == port
            # The init container pulls the model the config names.
            ref = next(e for c in pod.spec.get("initContainers", [])
                       for e in c.get("env", []) if e["name"] == "OLLAMA_MODEL")
            key = ref["valueFrom"]["configMapKeyRef"]
            assert rendered.config_map(key["name"])["data"][key["key"]] == config["model"]
        elif backend == "vllm":
            args = others["vllm"]["args"]
            assert args[0] == config["model"], "vLLM serves a different model than the config asks for"
            assert f"--port={port}" in args
            gpus = others["vllm"]["resources"]["limits"].get("nvidia.com/gpu")
            assert gpus and int(gpus) >= 1, "vLLM needs a GPU"
        else:
            pytest.fail(f"no backend container check for {backend}")


def test_every_container_is_locked_down(rendered: Rendered) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_user = re.findall(r"^USER\s+(\d+)", dockerfile, re.M)[-1]
    for pod in rendered.pods():
        pod_sc = pod.spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for c in pod.containers():
            sc = {**pod_sc, **c.get("securityContext", {})}
            where = f"{rendered.name}/{c['name']}"
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert c.get("resources", {}).get("requests") and c["resources"].get("limits"), where
        assert str(pod_sc.get("runAsUser")) == image_user, "runAsUser differs from the image's USER"


def test_network_policy_admits_clients_and_scrapes(rendered: Rendered, server: Server) -> None:
    for pod in rendered.pods():
        policies = [p for p in rendered.of_kind("NetworkPolicy")
                    if selects(p["spec"]["podSelector"].get("matchLabels", {}), pod.labels)]
        assert policies, f"{rendered.name}: no NetworkPolicy selects the llmbridge pod"
        ingress_ports = {port for pol in policies for rule in pol["spec"].get("ingress", [])
                         for p in rule.get("ports", []) for port in resolve_port([pod], p["port"])}
        _, metrics = split_host_port(effective(server, flag_args(pod.llmbridge), "metrics_listen"))
        assert metrics in ingress_ports, "Prometheus cannot reach the metrics port"
        _, grpc = split_host_port(effective(server, flag_args(pod.llmbridge), "listen"))
        if not pod.as_native_sidecar:
            assert grpc in ingress_ports, "no client can reach the gRPC port"
        # Peer selectors are exactly what the files say (a kustomize labels
        # transformer with includeSelectors would widen them silently).
        for pol in policies:
            for rule in pol["spec"].get("egress", []):
                for peer in rule.get("to", []):
                    if "podSelector" in peer and peer.get("namespaceSelector"):
                        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_clients_reaching_the_grpc_port_need_a_token(rendered: Rendered, server: Server) -> None:
    """Where the NetworkPolicy admits clients, --auth_token_file names a file
    of a Secret volume mounted whole (a subPath mount never sees updates, so
    tokens could not rotate without a restart)."""
    for pod in rendered.pods():
        if pod.as_native_sidecar:
            continue  # only its own pod's app reaches it (see the NetworkPolicy test)
        path = flag_args(pod.llmbridge).get("auth_token_file")
        assert path, f"{rendered.name}: the gRPC port is open to clients without a token"
        assert "auth_token_file" in server.flags or "auth_token_file" in PLANNED_FLAGS
        mount = next((m for m in pod.llmbridge.get("volumeMounts", [])
                      if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        assert mount, f"{rendered.name}: nothing is mounted at {path}"
        assert "subPath" not in mount, f"{rendered.name}: a subPath mount never updates"
        volume = next(v for v in pod.spec["volumes"] if v["name"] == mount["name"])
        assert "secret" in volume, f"{rendered.name}: {path} is not on a Secret volume"
        name = volume["secret"]["secretName"]
        secrets = [o for o in rendered.of_kind("Secret") if o["metadata"]["name"] == name]
        assert secrets, f"{rendered.name}: no Secret {name}"
        key = path[len(mount["mountPath"].rstrip("/")) + 1:]
        assert key in secrets[0].get("data", {}) or key in secrets[0].get("stringData", {})


def test_disruption_budget_and_autoscaler_target_llmbridge(rendered: Rendered) -> None:
    for pod in rendered.pods():
        name = pod.owner["metadata"]["name"]
        assert any(selects(p["spec"]["selector"]["matchLabels"], pod.labels)
                   for p in rendered.of_kind("PodDisruptionBudget")), f"no PDB covers {name}"
        hpas = [h for h in rendered.of_kind("HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == name]
        if hpas:
            assert "replicas" not in pod.owner["spec"], "the HPA owns the replica count"
            assert hpas[0]["spec"]["minReplicas"] >= 2
        else:
            assert pod.owner["spec"].get("replicas", 1) >= 2


def test_docker_stop_waits_for_the_shutdown_grace(server: Server) -> None:
    """`docker stop` waits 10 s by default before SIGKILL: the image and the
    docs ask for a stop timeout that covers the server's drain."""
    need = parse_duration(server.flags["shutdown_grace"]) + SIDECAR_STOP_SECONDS
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, re.M)
    for name in ("Dockerfile", "docs/deployment.md"):
        text = (ROOT / name).read_text()
        timeouts = [int(t) for t in re.findall(r"(?:--stop-timeout[= ]|docker stop -t )(\d+)",
                                               text)]
        assert timeouts, f"{name} gives no docker stop timeout"
        for t in timeouts:
            assert t >= need, (f"{name}: a stop timeout of {t}s is shorter than "
                               f"--shutdown_grace + {SIDECAR_STOP_SECONDS}s = {need:g}s")


def test_dockerfile_runs_as_non_root_from_debian_12() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.M)
    assert [s for _, s in stages] == ["build", "runtime"], stages
    assert re.search(r"^ARG DEBIAN_RELEASE=12$", text, re.M)
    assert "scripts/setup" in text, "the image must install with the README's scripts"
    assert re.search(r"^USER\s+10001", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", "bazel-*", ".git"):
        assert path in ignored, f".dockerignore must exclude {path}"
