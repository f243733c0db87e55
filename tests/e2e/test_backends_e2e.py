"""Every backend through the whole chain: a real gRPC client -> the llmbridge
binary (C++ bridge) -> the real sidecar -> the backend. Real engines where
they run here (llama.cpp's server and the embedded gguf engine with SmolLM2,
transformers with a tiny random Llama); a protocol-faithful fake of the
OpenAI-compatible wire format for vLLM, which cannot run here."""

from __future__ import annotations

import grpc
import pytest

from test_complete_e2e import complete, user


@pytest.mark.parametrize("backend", ["llama.cpp", "vllm"])
def test_openai_compatible_fake_streams_in_order_with_usage(pb, start_server, fake_openai,
                                                            backend):
    server = start_server(f"--backend={backend}", f"--host={fake_openai}",
                          "--model=fake-model")
    responses = complete(pb, server, messages=user(pb, "Say hello."))

    # In order; deltas that arrive while a write is in flight are merged
    # into one message (flow control), so only the text is compared.
    assert "".join(r.content for r in responses) == "Hello from fake server"
    last = responses[-1]
    assert last.done
    assert (last.usage.input_tokens, last.usage.output_tokens, last.usage.total_tokens) == \
        (12, 4, 16)
    assert last.finish_reason == "stop"
    assert last.model == "fake-model"


def test_vllm_fake_unknown_model_is_not_found(pb, start_server, fake_openai):
    server = start_server("--backend=vllm", f"--host={fake_openai}", "--model=fake-model")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"), model="no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in err.value.details()


def test_vllm_fake_upstream_429_is_resource_exhausted(pb, start_server, fake_openai):
    server = start_server("--backend=vllm", f"--host={fake_openai}", "--model=fake-model")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "[[http-429]]"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_real_llama_cpp_server_streams_smollm2(pb, start_server, llama_cpp_server):
    server = start_server("--backend=llama.cpp", f"--host={llama_cpp_server}",
                          "--model=smollm2")
    responses = complete(pb, server, messages=user(pb, "Name three colors."), max_tokens=32)

    assert len([r for r in responses if r.content]) >= 3
    assert "".join(r.content for r in responses).strip()
    last = responses[-1]
    assert last.done and last.usage.output_tokens > 0
    assert last.finish_reason in ("stop", "length")


def test_real_transformers_tiny_llama_streams(pb, start_server, tiny_llama_dir):
    server = start_server("--backend=transformers", f"--model={tiny_llama_dir}",
                          "--startup_timeout=120s")
    responses = complete(pb, server, messages=user(pb, "Tell me about the sea."),
                         max_tokens=48)

    # Streamed in pieces. Text that arrives while a write is in flight is
    # merged into the next message, so the count of messages depends on
    # timing; with 12 tokens the test failed once under load: 48 leave room
    # for merging and still prove streaming.
    assert len([r for r in responses if r.content]) >= 3
    last = responses[-1]
    assert last.done
    assert last.usage.output_tokens > 0 and last.usage.input_tokens > 0
    assert last.finish_reason in ("stop", "length")
