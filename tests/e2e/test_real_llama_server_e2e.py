"""llmbridge's llama.cpp backend against llama.cpp's own `llama-server`
(built by scripts/setup from the llama.cpp inside the pinned
llama-cpp-python source distribution) serving SmolLM2: a real gRPC client ->
the llmbridge binary -> the sidecar -> llama-server's OpenAI-compatible API.

The protocol-faithful fake (sidecar/tests/fake_openai.py) stays for the
errors a real server cannot be made to produce on demand.
"""

from __future__ import annotations

import grpc
import pytest
from real_engines import (
    GREEDY,
    MODEL,
    assert_max_tokens_ends_with_length,
    assert_streams_the_direct_answer,
    cancel_mid_generation,
    long_count,
    struct,
)
from test_complete_e2e import complete, user
from test_service_e2e import error_details, wait_serving

# llama-server's log: a task cancelled because its HTTP client went away,
# and a slot that stops generating (after a cancel, or at the end).
TASK_CANCELLED = r"cancel task, id_task = \d+"
SLOT_RELEASED = r"stop processing: n_tokens = \d+"
CANCEL_NOTICED_WITHIN_S = 30


def serve(start_server, llama_server, *flags):
    return start_server("--backend=llama.cpp", f"--host={llama_server.host}",
                        f"--model={MODEL}", *flags)


def test_real_llama_server_streams_with_usage_from_its_own_counts(pb, start_server,
                                                                  real_llama_server):
    prompt = "Name three colors."
    status, direct = real_llama_server.post("/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24, **GREEDY})
    assert status == 200, direct

    server = serve(start_server, real_llama_server)
    responses = complete(pb, server, messages=user(pb, prompt), max_tokens=24,
                         temperature=GREEDY["temperature"], options=struct(seed=GREEDY["seed"]))

    choice = direct["choices"][0]
    assert_streams_the_direct_answer(
        responses, content=choice["message"]["content"],
        input_tokens=direct["usage"]["prompt_tokens"],
        output_tokens=direct["usage"]["completion_tokens"],
        finish_reason=choice["finish_reason"], model=direct["model"])


def test_real_llama_server_max_tokens_ends_with_length(pb, start_server, real_llama_server):
    server = serve(start_server, real_llama_server)
    assert_max_tokens_ends_with_length(pb, server)


def test_real_llama_server_unknown_server_model_is_not_found_naming_what_it_serves(
        pb, start_server, real_llama_server):
    server = start_server("--backend=llama.cpp", f"--host={real_llama_server.host}",
                          "--model=no-such-model")
    with pytest.raises(grpc.RpcError) as err:
        complete(pb, server, messages=user(pb, "Hi"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in err.value.details()
    assert f"it serves {MODEL}" in err.value.details()
    info, _ = error_details(err.value)
    assert info.reason == "MODEL_NOT_FOUND"


def test_real_llama_server_client_cancel_frees_its_slot(pb, start_server, real_llama_server):
    server = serve(start_server, real_llama_server)
    wait_serving(server)
    at_cancel = cancel_mid_generation(pb, server, real_llama_server, SLOT_RELEASED)
    # The sidecar closed the HTTP stream; llama-server cancels the task and
    # frees the slot.
    log = real_llama_server.log
    log.wait_for(TASK_CANCELLED, since=at_cancel, timeout=CANCEL_NOTICED_WITHIN_S)
    log.wait_for(SLOT_RELEASED, since=at_cancel, timeout=CANCEL_NOTICED_WITHIN_S)
    status, slots = real_llama_server.get("/slots")
    assert status == 200 and not any(s["is_processing"] for s in slots), slots


def test_real_llama_server_runs_two_streams_in_its_two_slots_at_once(pb, start_server,
                                                                      real_llama_server):
    server = serve(start_server, real_llama_server)
    wait_serving(server)
    log = real_llama_server.log
    before = log.mark()
    calls = [long_count(pb, server), long_count(pb, server)]
    for call in calls:
        assert next(call).content  # both are generating

    status, slots = real_llama_server.get("/slots")
    assert status == 200
    assert [s["is_processing"] for s in slots] == [True, True], slots
    assert log.find(SLOT_RELEASED, since=before) is None, \
        "a slot finished before both were seen busy: the test proves nothing"

    for call in calls:
        call.cancel()
    for slot in slots:
        log.wait_for(rf"id\s+{slot['id']} \|.*{SLOT_RELEASED}", since=before,
                     timeout=CANCEL_NOTICED_WITHIN_S)
