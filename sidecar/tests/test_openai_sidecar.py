"""The real sidecar's llama.cpp and vllm backends against the fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import SidecarProcess, assert_relayed_in_order, stream_chunks
from fake_openai import (
    CHUNKS,
    FLAT_ERROR,
    LLAMA_CPP_META,
    LLAMA_CPP_SLOT_CTX,
    MIDSTREAM_ERROR,
    PROMPT_TOKENS,
    VLLM_MAX_MODEL_LEN,
    FakeOpenAI,
)

FAKE_OPENAI_SCRIPT = os.path.join(os.path.dirname(__file__), "fake_openai.py")
USER = [{"role": "user", "content": "Say hello"}]
PRODUCTS = {"llama.cpp": "llama.cpp server", "vllm": "vLLM"}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(params=["llama.cpp", "vllm"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert "result" not in reply, reply
    err = reply["error"]
    assert isinstance(err["code"], int) and isinstance(err["message"], str)
    assert "backend" in err["data"] and "model" in err["data"]
    return err  # type: ignore[no-any-return]


async def init(
    sc: SidecarProcess, backend: str, host: str, model: str = "fake-model", **options: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {"backend": backend, "model": model, "host": host}
    if options:
        params["options"] = options
    return await sc.call("init", params)


async def init_ok(sc: SidecarProcess, backend: str, host: str, **kw: Any) -> dict[str, Any]:
    reply = await init(sc, backend, host, **kw)
    result = reply["result"]
    assert result["ready"] is True and result["stream_request_id"] is True
    assert result["capabilities"]["backend"] == backend
    assert result["capabilities"]["in_process"] is False
    return result  # type: ignore[no-any-return]


def expected_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


async def test_streamed_complete(sidecar: SidecarProcess, fake: FakeOpenAI, backend: str) -> None:
    await init_ok(sidecar, backend, fake.host)
    rid = await sidecar.request("complete", {"messages": USER, "stream": True})
    notes, reply = await sidecar.read_until_reply(rid)

    assert fake.requests == [expected_body()]
    assert notes[-1]["method"] == "stream.done"
    assert_relayed_in_order(stream_chunks(notes[:-1], rid), CHUNKS)
    usage = {
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": len(CHUNKS),
        "total_tokens": PROMPT_TOKENS + len(CHUNKS),
    }
    assert notes[-1]["params"] == {
        "request_id": rid,
        "usage": usage,
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "model": "fake-model",
    }
    assert reply["result"] == {
        "content": "".join(CHUNKS),
        "model": "fake-model",
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "usage": usage,
    }


async def test_a_burst_of_events_is_relayed_as_one_chunk(
    sidecar: SidecarProcess, fake: FakeOpenAI
) -> None:
    """Events that arrive together (a server ahead of the sidecar) become one
    stream.chunk with their text in order; the usage still counts every token."""
    await init_ok(sidecar, "vllm", fake.host)
    rid = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[burst]]"}], "stream": True}
    )
    notes, reply = await sidecar.read_until_reply(rid)
    assert stream_chunks(notes[:-1], rid) == ["".join(CHUNKS)]
    assert notes[-1]["params"]["usage"]["output_tokens"] == len(CHUNKS)
    assert reply["result"]["content"] == "".join(CHUNKS)


async def test_request_fields_and_options_reach_the_server(
    sidecar: SidecarProcess, fake: FakeOpenAI
) -> None:
    await init_ok(sidecar, "vllm", f"http://{fake.host}/", model="tiny", top_p=0.9)
    reply = await sidecar.call(
        "complete",
        {
            "messages": USER,
            "system_prompt": "Be brief.",
            "max_tokens": 2,
            "temperature": 0.5,
            "options": {"seed": 7, "stop": ["\n"]},
        },
    )
    assert fake.requests == [
        {
            "model": "tiny",
            "messages": [{"role": "system", "content": "Be brief."}, *USER],
            "stream": True,
            "stream_options": {"include_usage": True},
            "top_p": 0.9,
            "seed": 7,
            "stop": ["\n"],
            "max_tokens": 2,
            "temperature": 0.5,
        }
    ]
    assert reply["result"]["content"] == "".join(CHUNKS[:2])
    assert reply["result"]["finish_reason"] == "length"
    assert reply["result"]["usage"]["output_tokens"] == 2

    clash = error_of(await sidecar.call("complete", {"messages": USER, "options": {"stream": 0}}))
    assert clash["code"] == -32602 and "'options.stream'" in clash["message"]
    assert len(fake.requests) == 1


async def test_init_without_model_takes_the_served_one(
    sidecar: SidecarProcess, fake: FakeOpenAI
) -> None:
    result = await init_ok(sidecar, "llama.cpp", fake.host, model="")
    assert "'fake-model'" in result["message"]
    reply = await sidecar.call("complete", {"messages": USER})
    assert reply["result"]["model"] == "fake-model"


async def test_init_unreachable(sidecar: SidecarProcess, backend: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = error_of(await init(sidecar, backend, f"127.0.0.1:{port}"))
    assert err["code"] == -32003
    assert f"start {PRODUCTS[backend]} at host 127.0.0.1:{port}" in err["message"]
    assert err["data"]["backend"] == backend and "http_status" not in err["data"]


async def test_init_unknown_model_lists_served(
    sidecar: SidecarProcess, fake: FakeOpenAI, backend: str
) -> None:
    err = error_of(await init(sidecar, backend, fake.host, model="llama-70b"))
    assert err["code"] == -32001
    assert "'llama-70b' is not served" in err["message"]
    assert "fake-model, tiny" in err["message"]
    assert err["data"]["http_status"] == 404
    assert err["data"]["model"] == "llama-70b"


async def test_init_waits_while_llama_cpp_loads(sidecar: SidecarProcess) -> None:
    with FakeOpenAI(loading=True) as fake:
        rid = await sidecar.request("init", {"backend": "llama.cpp", "host": fake.host})
        # The sidecar is polling /health and getting 503 "Loading model".
        assert await asyncio.to_thread(fake.health_polled_while_loading.wait, 30)
        assert fake.requests == []
        fake.finish_loading()
        notes, reply = await sidecar.read_until_reply(rid)
        assert notes == [] and reply["result"]["ready"] is True


async def test_init_gives_up_after_startup_timeout(sidecar: SidecarProcess) -> None:
    with FakeOpenAI(loading=True) as fake:
        started = time.monotonic()
        err = error_of(await init(sidecar, "llama.cpp", fake.host, startup_timeout_s=0.5))
        elapsed = time.monotonic() - started
    assert err["code"] == -32003
    assert "still loading its model after 0.5 s" in err["message"]
    assert "startup_timeout_s" in err["message"]
    assert err["data"]["http_status"] == 503
    assert 0.5 <= elapsed < 10


async def test_vllm_models_report_max_model_len(sidecar: SidecarProcess) -> None:
    with FakeOpenAI(flavor="vllm") as fake:
        await init_ok(sidecar, "vllm", fake.host, model="tiny")
        models = (await sidecar.call("models"))["result"]
    served = {"context_length": VLLM_MAX_MODEL_LEN, "context_length_source": "served"}
    assert models["model"] == {"name": "tiny", "details": served}
    assert [m["details"] for m in models["models"]] == [served, served]
    first = models["models"][0]
    assert first["max_model_len"] == VLLM_MAX_MODEL_LEN and first["owned_by"] == "vllm"
    assert first["root"] == "fake-model" and first["permission"][0]["allow_sampling"] is True


async def test_llama_cpp_models_report_meta_and_props(sidecar: SidecarProcess) -> None:
    with FakeOpenAI(flavor="llama.cpp") as fake:
        await init_ok(sidecar, "llama.cpp", fake.host)
        models = (await sidecar.call("models"))["result"]
        from_meta = {
            "size_bytes": LLAMA_CPP_META["size"],
            "parameter_count": LLAMA_CPP_META["n_params"],
            "context_length": LLAMA_CPP_META["n_ctx_train"],
            "context_length_source": "trained",
            "trained_context_length": LLAMA_CPP_META["n_ctx_train"],
        }
        assert models["models"] == [
            {
                "name": "fake-model",
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "llamacpp",
                "meta": LLAMA_CPP_META,
                "details": from_meta,
            }
        ]
        # The configured model adds /props: the context each request gets, the file format.
        assert models["model"] == {
            "name": "fake-model",
            "details": {
                **from_meta,
                "format": "gguf",
                "context_length": LLAMA_CPP_SLOT_CTX,
                "context_length_source": "served",
            },
        }
        # /props failing costs only what it would have added.
        fake.props_status = 500
        models = (await sidecar.call("models"))["result"]
        assert models["model"] == {"name": "fake-model", "details": from_meta}


async def test_server_without_health_route(sidecar: SidecarProcess) -> None:
    with FakeOpenAI(health=False) as fake:
        await init_ok(sidecar, "llama.cpp", fake.host)
        health = (await sidecar.call("health"))["result"]
        assert health["ok"] is True and health["http_status"] == 200


async def test_models_and_health(sidecar: SidecarProcess, fake: FakeOpenAI) -> None:
    await init_ok(sidecar, "vllm", fake.host)
    models = (await sidecar.call("models"))["result"]
    assert models["backend"] == "vllm"
    assert [m["name"] for m in models["models"]] == ["fake-model", "tiny"]
    assert models["models"][0]["owned_by"] == "fake"
    # A server that says nothing about its models: no details, and no guesses.
    assert models["model"] == {"name": "fake-model", "details": {}}
    assert all(m["details"] == {} for m in models["models"])
    health = (await sidecar.call("health"))["result"]
    assert health == {
        "ok": True,
        "backend": "vllm",
        "model": "fake-model",
        "message": f"vLLM at http://{fake.host} is ready",
        "http_status": 200,
    }
    fake.loaded.clear()  # the engine went back to loading (or died): 503
    health = (await sidecar.call("health"))["result"]
    assert health["ok"] is False and health["http_status"] == 503
    assert "Loading model" in health["message"]


@pytest.mark.parametrize(
    "marker, code, status, text",
    [
        ("[[http-500]]", -32000, 500, "fake error 500"),
        ("[[http-429]]", -32000, 429, "fake error 429"),
        ("[[http-503]]", -32000, 503, "fake error 503"),
        ("[[flat-error]]", -32000, 400, FLAT_ERROR),
        ("[[midstream-error]]", -32002, 200, MIDSTREAM_ERROR),
        ("[[disconnect]]", -32002, 200, "dropped the connection"),
    ],
)
async def test_error_paths(
    sidecar: SidecarProcess, fake: FakeOpenAI, marker: str, code: int, status: int, text: str
) -> None:
    await init_ok(sidecar, "vllm", fake.host)
    rid = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": marker}], "stream": True}
    )
    notes, reply = await sidecar.read_until_reply(rid)
    err = error_of(reply)
    assert (err["code"], err["data"]["http_status"]) == (code, status)
    assert text in err["message"]
    assert err["data"]["backend"] == "vllm" and err["data"]["model"] == "fake-model"
    if code == -32002:
        assert_relayed_in_order([n["params"]["content"] for n in notes], CHUNKS[:2])
    else:
        assert notes == [] and err["data"]["upstream_error"] == text


async def test_unknown_model_at_request_time(sidecar: SidecarProcess, fake: FakeOpenAI) -> None:
    await init_ok(sidecar, "vllm", fake.host)
    err = error_of(await sidecar.call("complete", {"messages": USER, "model": "gone"}))
    assert err["code"] == -32001
    assert "The model `gone` does not exist." in err["message"]
    assert err["data"]["http_status"] == 404 and err["data"]["model"] == "gone"


async def test_silent_server_hits_the_read_timeout(
    sidecar: SidecarProcess, fake: FakeOpenAI
) -> None:
    fake.slow_s = 5.0
    await init_ok(sidecar, "vllm", fake.host, read_timeout_s=0.3)
    err = error_of(
        await sidecar.call("complete", {"messages": [{"role": "user", "content": "[[slow]]"}]})
    )
    assert err["code"] == -32002
    assert "sent nothing for 0.3 s" in err["message"]


async def test_cancel_closes_the_http_stream_within_200ms(
    sidecar: SidecarProcess, fake: FakeOpenAI, backend: str
) -> None:
    await init_ok(sidecar, backend, fake.host)
    rid = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    first = await sidecar.read()
    assert first["params"] == {"request_id": rid, "content": CHUNKS[0], "done": False}
    assert fake.holding.is_set()

    sent_at = time.monotonic()
    await sidecar.notify("$/cancelRequest", {"id": rid})
    notes, reply = await sidecar.read_until_reply(rid)
    assert notes == [] and error_of(reply)["code"] == -32800
    assert await asyncio.to_thread(fake.client_disconnected.wait, 30)
    assert fake.disconnected_at - sent_at < 0.2
    # The sidecar still serves.
    assert (await sidecar.call("complete", {"messages": USER}))["result"]["content"]


async def test_shutdown_closes_in_flight_streams(sidecar: SidecarProcess, fake: FakeOpenAI) -> None:
    await init_ok(sidecar, "llama.cpp", fake.host)
    held = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    await sidecar.read()  # the first chunk: in flight
    rid = await sidecar.request("shutdown")
    replies: dict[Any, dict[str, Any]] = {}
    while len(replies) < 2:
        msg = await sidecar.read()
        if "id" in msg:
            replies[msg["id"]] = msg
    assert replies[rid]["result"] == {"success": True}
    assert replies[held]["error"]["code"] == -32800
    assert await sidecar.wait() == 0
    assert await asyncio.to_thread(fake.client_disconnected.wait, 30)


async def test_fake_cli_prints_its_port() -> None:
    """The standalone form the C++ end-to-end tests run."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, FAKE_OPENAI_SCRIPT, "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.startswith(b"PORT=")
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(f"http://127.0.0.1:{int(first[5:])}/v1/models")
        assert [m["id"] for m in resp.json()["data"]] == ["fake-model", "tiny"]
    finally:
        proc.kill()
        await proc.wait()


async def test_connections_are_reused(
    sidecar: SidecarProcess, fake: FakeOpenAI, backend: str
) -> None:
    """Every answer is read to its end, so one keep-alive connection serves all
    of them; only a cancel closes one (to stop the server generating)."""
    await init_ok(sidecar, backend, fake.host)
    for stream in (True, False, True):
        _, reply = await sidecar.read_until_reply(
            await sidecar.request("complete", {"messages": USER, "stream": stream})
        )
        assert reply["result"]["content"] == "".join(CHUNKS)
    error = await sidecar.call(
        "complete", {"messages": [{"role": "user", "content": "[[http-500]]"}]}
    )
    assert error_of(error)["code"] == -32000
    assert (await sidecar.call("health"))["result"]["ok"] is True
    assert (await sidecar.call("models"))["result"]["models"]
    assert fake.connections == 1

    rid = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    await sidecar.read()  # its first chunk
    await sidecar.notify("$/cancelRequest", {"id": rid})
    _, reply = await sidecar.read_until_reply(rid)
    assert error_of(reply)["code"] == -32800
    assert await asyncio.to_thread(fake.client_disconnected.wait, 30)
    assert (await sidecar.call("complete", {"messages": USER}))["result"]["content"]
    assert fake.connections == 2  # the cancelled stream's connection was closed


async def test_a_host_that_is_not_http_is_refused_at_init(
    sidecar: SidecarProcess, fake: FakeOpenAI
) -> None:
    bad = error_of(await init(sidecar, "vllm", "ftp://" + fake.host))
    assert bad["code"] == -32602 and bad["data"]["field"] == "host"
    assert "only http:// and https://" in bad["message"]
    await init_ok(sidecar, "vllm", "http://" + fake.host)  # the sidecar is still usable


async def test_max_connections_is_the_sidecars_own_option(
    sidecar: SidecarProcess, fake: FakeOpenAI
) -> None:
    bad = error_of(await init(sidecar, "vllm", fake.host, max_connections=0))
    assert bad["code"] == -32602 and "'options.max_connections'" in bad["message"]
    await init_ok(sidecar, "vllm", fake.host, max_connections=2, top_p=0.5)
    assert (await sidecar.call("complete", {"messages": USER}))["result"]["content"]
    # Not a request field: it stays in the sidecar; other init options go to the server.
    assert fake.requests == [expected_body(top_p=0.5)]
