"""The real sidecar process against the fake Ollama, over real pipes."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from typing import Any

from conftest import SidecarProcess, assert_relayed_in_order, stream_chunks
from fake_ollama import CHUNKS, MODEL_FACTS, MODIFIED_AT, PROMPT_EVAL_COUNT, FakeOllama

FAKE_OLLAMA_SCRIPT = os.path.join(os.path.dirname(__file__), "fake_ollama.py")
USER = [{"role": "user", "content": "Say hello"}]


async def init_ollama(sc: SidecarProcess, host: str, model: str = "llama3.2:latest") -> None:
    reply = await sc.call("init", {"backend": "ollama", "model": model, "host": host})
    result = reply["result"]
    assert result["ready"] is True
    assert result["stream_request_id"] is True
    assert result["capabilities"] == {
        "streaming": True,
        "tools": False,
        "mcp": False,
        "sessions": False,
        "images": False,
        "native_tools": [],
        "backend": "ollama",
        "cancel": True,
        "methods": [
            "complete",
            "count_tokens",
            "embed",
            "health",
            "init",
            "models",
            "shutdown",
            "tools",
        ],
        "in_process": False,
    }
    assert isinstance(result["version"], str) and result["version"]


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert "result" not in reply, reply
    err = reply["error"]
    assert isinstance(err["code"], int) and isinstance(err["message"], str)
    assert "backend" in err["data"] and "model" in err["data"]
    return err  # type: ignore[no-any-return]


async def test_streamed_complete(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    # The host without a scheme, as the seed's config gives it.
    await init_ollama(sidecar, fake_ollama.host)
    rid = await sidecar.request(
        "complete",
        {
            "messages": USER,
            "system_prompt": "Be brief.",
            "max_tokens": 100,
            "temperature": 0.5,
            "stream": True,
            "options": {"seed": 7},
        },
    )
    notes, reply = await sidecar.read_until_reply(rid)

    assert fake_ollama.requests == [
        {
            "model": "llama3.2:latest",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello"},
            ],
            "stream": True,
            "options": {"seed": 7, "temperature": 0.5, "num_predict": 100},
        }
    ]
    assert notes[-1]["method"] == "stream.done"
    assert_relayed_in_order(stream_chunks(notes[:-1], rid), CHUNKS)
    assert all("id" not in n for n in notes)
    assert notes[-1]["params"] == {
        "request_id": rid,
        "usage": {
            "input_tokens": PROMPT_EVAL_COUNT,
            "output_tokens": len(CHUNKS),
            "total_tokens": PROMPT_EVAL_COUNT + len(CHUNKS),
        },
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "model": "llama3.2:latest",
    }
    assert reply["result"] == {
        "content": "".join(CHUNKS),
        "model": "llama3.2:latest",
        "finish_reason": "stop",
        "raw_finish_reason": "stop",
        "usage": notes[-1]["params"]["usage"],
    }


async def test_non_stream_complete_with_http_host_and_length(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, f"http://{fake_ollama.host}/", model="tiny")
    reply = await sidecar.call("complete", {"messages": USER, "max_tokens": 2})
    assert reply["result"] == {
        "content": "".join(CHUNKS[:2]),
        "model": "tiny",
        "finish_reason": "length",
        "raw_finish_reason": "length",
        "usage": {
            "input_tokens": PROMPT_EVAL_COUNT,
            "output_tokens": 2,
            "total_tokens": PROMPT_EVAL_COUNT + 2,
        },
    }
    # No temperature given: none sent; the sidecar always streams from Ollama.
    assert fake_ollama.requests == [
        {"model": "tiny", "messages": USER, "stream": True, "options": {"num_predict": 2}}
    ]


async def test_model_override_and_unknown_model(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    ok = await sidecar.call("complete", {"messages": USER, "model": "tiny"})
    assert ok["result"]["model"] == "tiny"

    reply = await sidecar.call("complete", {"messages": USER, "model": "no-such:7b"})
    err = error_of(reply)
    assert err["code"] == -32001
    assert '"no-such:7b"' in err["message"]
    assert "ollama pull no-such:7b" in err["message"]
    assert err["data"]["http_status"] == 404
    assert err["data"]["backend"] == "ollama"
    assert err["data"]["model"] == "no-such:7b"


def free_port() -> int:
    """A port that was just free: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_init_checks_reachability(sidecar: SidecarProcess) -> None:
    port = free_port()
    reply = await sidecar.call(
        "init", {"backend": "ollama", "model": "llama3.2:latest", "host": f"127.0.0.1:{port}"}
    )
    err = error_of(reply)
    assert err["code"] == -32003
    assert f"cannot reach Ollama at http://127.0.0.1:{port}" in err["message"]
    assert f"start Ollama at host 127.0.0.1:{port}" in err["message"]
    assert "ollama serve" in err["message"]
    assert "http_status" not in err["data"]
    assert err["data"]["backend"] == "ollama"
    assert err["data"]["model"] == "llama3.2:latest"
    # Still not initialized: health says so instead of failing.
    health = (await sidecar.call("health"))["result"]
    assert health["ok"] is False and "init" in health["message"]


async def test_init_checks_the_model_is_pulled(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    reply = await sidecar.call(
        "init", {"backend": "ollama", "model": "qwen3:0.6b", "host": fake_ollama.host}
    )
    err = error_of(reply)
    assert err["code"] == -32001
    assert "run `ollama pull qwen3:0.6b`" in err["message"]
    assert "llama3.2:latest, tiny" in err["message"]
    assert err["data"] == {"backend": "ollama", "model": "qwen3:0.6b", "http_status": 404}
    # Ollama's own naming: "llama3.2" is "llama3.2:latest".
    await init_ollama(sidecar, fake_ollama.host, model="llama3.2")
    assert fake_ollama.requests == []  # init probes /api/tags, never /api/chat


async def test_backend_going_away_after_init(sidecar: SidecarProcess) -> None:
    # The standalone fake (the CLI the C++ end-to-end tests use), then killed.
    fake = await asyncio.create_subprocess_exec(
        sys.executable, FAKE_OLLAMA_SCRIPT, "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert fake.stdout is not None
        first = await asyncio.wait_for(fake.stdout.readline(), 30)
        assert first.startswith(b"PORT=")
        host = f"127.0.0.1:{int(first[5:])}"
        await init_ollama(sidecar, host)
    finally:
        fake.kill()
        await fake.wait()
    reply = await sidecar.call("complete", {"messages": USER, "stream": True})
    err = error_of(reply)
    assert err["code"] == -32003
    assert f"start Ollama at host {host}" in err["message"]
    health = (await sidecar.call("health"))["result"]
    assert health["ok"] is False
    assert health["backend"] == "ollama" and "cannot reach Ollama" in health["message"]


LLAMA32_TAG_DETAILS = {
    "size_bytes": 2019393189,
    "format": "gguf",
    "family": "llama",
    "parameter_size": "3.2B",
    "quantization": "Q4_K_M",
}


async def test_models_and_health(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    models = (await sidecar.call("models"))["result"]
    tag = MODEL_FACTS["tiny"]
    assert models == {
        "backend": "ollama",
        # The configured model: its tag, plus /api/show. Its Modelfile sets no
        # num_ctx and init sent none, so only the trained context is known.
        "model": {
            "name": "llama3.2:latest",
            "details": {
                **LLAMA32_TAG_DETAILS,
                "parameter_count": 3212749888,
                "context_length": 131072,
                "context_length_source": "trained",
                "trained_context_length": 131072,
            },
        },
        # Every tag: Ollama's own fields as they came, and the normalised details.
        "models": [
            {
                "name": "llama3.2:latest",
                "model": "llama3.2:latest",
                "modified_at": MODIFIED_AT,
                "size": 2019393189,
                "digest": MODEL_FACTS["llama3.2:latest"]["digest"],
                "details": LLAMA32_TAG_DETAILS,
            },
            {
                "name": "tiny",
                "model": "tiny",
                "modified_at": MODIFIED_AT,
                "size": tag["size"],
                "digest": tag["digest"],
                "details": {
                    "size_bytes": tag["size"],
                    "format": "gguf",
                    "family": "qwen2",
                    "parameter_size": "494.03M",
                    "quantization": "Q8_0",
                },
            },
        ],
    }
    assert fake_ollama.shows == [{"model": "llama3.2:latest"}]
    health = (await sidecar.call("health", {}))["result"]
    assert health == {
        "ok": True,
        "backend": "ollama",
        "model": "llama3.2:latest",
        "message": f"Ollama 0.0.0-fake at http://{fake_ollama.host}",
        "http_status": 200,
    }
    bad = error_of(await sidecar.call("models", {"verbose": True}))
    assert bad["code"] == -32602 and "'verbose'" in bad["message"]


async def test_models_served_context(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    # tiny's Modelfile says num_ctx 4096: every request gets that context.
    await init_ollama(sidecar, fake_ollama.host, model="tiny")
    model = (await sidecar.call("models"))["result"]["model"]
    assert model["name"] == "tiny"
    assert model["details"]["context_length"] == 4096
    assert model["details"]["context_length_source"] == "served"
    assert model["details"]["trained_context_length"] == 32768
    assert model["details"]["parameter_count"] == 494032768
    # A num_ctx in init's options is sent with every request: it wins.
    reply = await sidecar.call(
        "init",
        {
            "backend": "ollama",
            "model": "tiny",
            "host": fake_ollama.host,
            "options": {"num_ctx": 8192},
        },
    )
    assert reply["result"]["ready"] is True
    model = (await sidecar.call("models"))["result"]["model"]
    assert (model["details"]["context_length"], model["details"]["context_length_source"]) == (
        8192,
        "served",
    )
    assert fake_ollama.shows == [{"model": "tiny"}, {"model": "tiny"}]


async def test_models_without_show_keeps_the_list(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    """Details are best effort: /api/show failing costs its keys, not the reply."""
    await init_ollama(sidecar, fake_ollama.host)
    fake_ollama.show_status = 500
    models = (await sidecar.call("models"))["result"]
    assert models["model"] == {"name": "llama3.2:latest", "details": LLAMA32_TAG_DETAILS}
    assert [m["name"] for m in models["models"]] == ["llama3.2:latest", "tiny"]
    assert fake_ollama.shows == [{"model": "llama3.2:latest"}]


async def test_options_pass_through_and_init_options(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    reply = await sidecar.call(
        "init",
        {
            "backend": "ollama",
            "model": "tiny",
            "host": fake_ollama.host,
            # The sidecar's own setting leaves; num_ctx goes to every request.
            "options": {"num_ctx": 4096, "startup_timeout_s": 5},
        },
    )
    assert reply["result"]["ready"] is True
    reply = await sidecar.call(
        "complete",
        {
            "messages": USER,
            "temperature": 0,
            "max_tokens": 3,
            "options": {"stop": ["\n"], "seed": 42, "top_k": 20, "num_predict": 999},
        },
    )
    assert fake_ollama.requests[-1]["options"] == {
        "num_ctx": 4096,
        "stop": ["\n"],
        "seed": 42,
        "top_k": 20,
        "temperature": 0.0,
        "num_predict": 3,  # max_tokens wins over options.num_predict
    }
    assert reply["result"]["finish_reason"] == "length"
    assert reply["result"]["usage"]["output_tokens"] == 3


async def test_init_option_types_are_checked(sidecar: SidecarProcess) -> None:
    reply = await sidecar.call(
        "init", {"backend": "ollama", "model": "x", "options": {"startup_timeout_s": "soon"}}
    )
    err = error_of(reply)
    assert err["code"] == -32602
    assert "'options.startup_timeout_s'" in err["message"]
    assert err["data"]["field"] == "options.startup_timeout_s"


async def test_disconnect_midstream_is_a_stream_error(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    rid = await sidecar.request(
        "complete",
        {"messages": [{"role": "user", "content": "[[disconnect]]"}], "stream": True},
    )
    notes, reply = await sidecar.read_until_reply(rid)
    assert_relayed_in_order([n["params"]["content"] for n in notes], CHUNKS[:2])
    err = error_of(reply)
    assert err["code"] == -32002
    assert err["data"]["http_status"] == 200
    assert f"Ollama at http://{fake_ollama.host}" in err["message"]


async def test_midstream_error(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    rid = await sidecar.request(
        "complete",
        {"messages": [{"role": "user", "content": "[[midstream-error]]"}], "stream": True},
    )
    notes, reply = await sidecar.read_until_reply(rid)
    assert_relayed_in_order([n["params"]["content"] for n in notes], CHUNKS[:2])
    err = error_of(reply)
    assert err["code"] == -32002
    assert "fake mid-stream failure" in err["message"]


async def test_http_error_reports_status_and_upstream_text(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    reply = await sidecar.call(
        "complete", {"messages": [{"role": "user", "content": "[[http-500]]"}]}
    )
    err = error_of(reply)
    assert err["code"] == -32000
    assert "fake server failure" in err["message"]
    assert err["data"]["http_status"] == 500


async def test_cancel_closes_upstream_stream(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    rid = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    first = await sidecar.read()
    assert first["params"] == {"request_id": rid, "content": CHUNKS[0], "done": False}
    assert fake_ollama.holding.is_set()

    sent_at = time.monotonic()
    await sidecar.notify("$/cancelRequest", {"id": rid})
    notes, reply = await sidecar.read_until_reply(rid)
    assert notes == []
    err = error_of(reply)
    assert err["code"] == -32800
    assert err["message"] == "request cancelled"
    # The sidecar hung up on Ollama, which is what stops Ollama generating.
    assert await asyncio.to_thread(fake_ollama.client_disconnected.wait, 30)
    assert fake_ollama.disconnected_at - sent_at < 0.2

    # Exactly one reply: the next message is the answer to a new request.
    assert (await sidecar.call("complete", {"messages": USER}))["result"]["content"]


async def test_timeout_s_stops_the_backend_and_fails_the_request(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    reply = await sidecar.call(
        "complete",
        {"messages": [{"role": "user", "content": "[[hold]]"}], "timeout_s": 0.3},
    )
    err = error_of(reply)
    # -32000 with 504: the bridge maps it to DEADLINE_EXCEEDED.
    assert err["code"] == -32000
    assert err["data"]["http_status"] == 504
    assert "time limit (0.3 s)" in err["message"]
    assert await asyncio.to_thread(fake_ollama.client_disconnected.wait, 30)
    bad = error_of(await sidecar.call("complete", {"messages": USER, "timeout_s": -1}))
    assert bad["code"] == -32602 and bad["data"]["field"] == "timeout_s"


async def test_concurrent_streams_are_tagged(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    held = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    assert (await sidecar.read())["params"]["request_id"] == held
    # A second stream completes while the first one is still open.
    quick = await sidecar.request("complete", {"messages": USER, "stream": True})
    notes, reply = await sidecar.read_until_reply(quick)
    assert {n["params"]["request_id"] for n in notes} == {quick}
    assert reply["result"]["content"] == "".join(CHUNKS)

    fake_ollama.release.set()
    notes, reply = await sidecar.read_until_reply(held)
    assert {n["params"]["request_id"] for n in notes} == {held}
    assert [n["method"] for n in notes][-1] == "stream.done"
    assert reply["result"]["content"] == "".join(CHUNKS)


async def test_seed_stream_start_notification(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    await sidecar.notify("stream.start", {"messages": USER})
    notes = [await sidecar.read()]
    while notes[-1]["method"] != "stream.done":
        notes.append(await sidecar.read())
    assert all(n["method"] == "stream.chunk" and n["params"]["done"] is False for n in notes[:-1])
    assert_relayed_in_order([n["params"]["content"] for n in notes[:-1]], CHUNKS)
    assert "request_id" not in notes[-1]["params"]
    assert notes[-1]["params"]["usage"]["output_tokens"] == len(CHUNKS)
    assert all("id" not in n for n in notes)

    # A failing seed stream ends with stream.error, not a response.
    await sidecar.notify("stream.start", {"messages": USER, "model": "missing"})
    note = await sidecar.read()
    assert note["method"] == "stream.error"
    assert note["params"]["code"] == -32001
    assert "missing" in note["params"]["message"]


async def test_shutdown_exits_zero(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    held = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    await sidecar.read()  # first chunk: the request is in flight
    rid = await sidecar.request("shutdown")
    replies: dict[Any, dict[str, Any]] = {}
    while len(replies) < 2:
        msg = await sidecar.read()
        if "id" in msg:
            replies[msg["id"]] = msg
    assert replies[rid]["result"] == {"success": True}
    assert replies[held]["error"]["code"] == -32800
    assert await sidecar.wait() == 0


async def test_eof_answers_pending_requests_and_exits_zero(
    sidecar: SidecarProcess, fake_ollama: FakeOllama
) -> None:
    await init_ollama(sidecar, fake_ollama.host)
    held = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    await sidecar.read()  # first chunk: the request is in flight
    await sidecar.close_stdin()
    notes, reply = await sidecar.read_until_reply(held)
    assert notes == []
    assert reply["error"]["code"] == -32800
    assert await sidecar.wait() == 0
    assert await asyncio.to_thread(fake_ollama.client_disconnected.wait, 30)


async def test_connections_are_reused(sidecar: SidecarProcess, fake_ollama: FakeOllama) -> None:
    """Every answer is read to its end, so one keep-alive connection serves all
    of them; only a cancel closes one (to stop Ollama generating)."""
    await init_ollama(sidecar, fake_ollama.host)
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
    assert fake_ollama.connections == 1

    rid = await sidecar.request(
        "complete", {"messages": [{"role": "user", "content": "[[hold]]"}], "stream": True}
    )
    await sidecar.read()  # its first chunk
    await sidecar.notify("$/cancelRequest", {"id": rid})
    _, reply = await sidecar.read_until_reply(rid)
    assert error_of(reply)["code"] == -32800
    assert await asyncio.to_thread(fake_ollama.client_disconnected.wait, 30)
    assert (await sidecar.call("complete", {"messages": USER}))["result"]["content"]
    assert fake_ollama.connections == 2  # the cancelled stream's connection was closed
