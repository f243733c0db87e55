"""The normalisation of what engines say about a model (model_details), source by source."""

from __future__ import annotations

import importlib.util
import os
import re
import types

import pytest

from llmbridge_sidecar import model_details as md


def test_gguf_file_types_match_the_installed_llama_cpp() -> None:
    """The table is llama.cpp's ``enum llama_ftype``: every type the installed
    llama.cpp knows has its name here, under its number."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python (the sidecar's [gguf] extra)")
    import llama_cpp

    known = {
        value: re.sub(r"^LLAMA_FTYPE_(ALL|MOSTLY)_", "", name)
        for name, value in vars(llama_cpp).items()
        if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
    }
    assert known, "llama_cpp defines no LLAMA_FTYPE_* constants any more"
    assert {n: md.GGUF_FILE_TYPES.get(n) for n in known} == known


def test_numbers_are_taken_only_when_they_are_numbers() -> None:
    assert md.as_int(8192) == 8192
    assert md.as_int("8192") == 8192  # GGUF metadata via llama-cpp-python is text
    for bad in (True, None, "", "8k", 0, -1, 1.5, [8192]):
        assert md.as_int(bad) is None, bad
    assert md.gguf_quantization("3") == "Q4_1"
    assert md.gguf_quantization(15) == "Q4_K_M"
    assert md.gguf_quantization(4) is None  # a removed type: not guessed
    assert md.gguf_quantization(True) is None


def test_context_prefers_served_and_keeps_trained() -> None:
    assert md.context() == {}
    assert md.context(trained=8192) == {
        "context_length": 8192,
        "context_length_source": "trained",
        "trained_context_length": 8192,
    }
    assert md.context(2048, 8192) == {
        "context_length": 2048,
        "context_length_source": "served",
        "trained_context_length": 8192,
    }
    # A later trained-only source never hides a served context.
    assert md.merge(md.context(served=4096), md.context(trained=131072)) == {
        "context_length": 4096,
        "context_length_source": "served",
        "trained_context_length": 131072,
    }
    assert md.merge(md.context(trained=8192), md.context(served=2048)) == md.context(2048, 8192)


def test_ollama_show_served_context_comes_from_options_then_modelfile() -> None:
    show = {
        "parameters": f'{"num_ctx":<30} 4096\n{"stop":<30} "<|im_end|>"',
        "details": {"family": "qwen2", "quantization_level": "Q8_0", "families": ["qwen2"]},
        "model_info": {
            "general.architecture": "qwen2",
            "general.parameter_count": 494032768,
            "qwen2.context_length": 32768,
        },
    }
    common = {"family": "qwen2", "quantization": "Q8_0", "parameter_count": 494032768}
    assert md.from_ollama_show(show) == {
        **common,
        **md.context(served=4096, trained=32768),
    }
    assert md.from_ollama_show(show, requested_num_ctx=8192) == {
        **common,
        **md.context(served=8192, trained=32768),
    }
    no_modelfile_ctx = {**show, "parameters": ""}
    assert md.from_ollama_show(no_modelfile_ctx)["context_length_source"] == "trained"
    assert md.from_ollama_show("not an object") == {}


def test_wrong_types_are_left_out() -> None:
    tag = {"size": "big", "details": {"family": 3, "format": "gguf", "parameter_size": ""}}
    assert md.from_ollama_tag(tag) == {"format": "gguf"}
    assert md.from_openai_model({"id": "m", "meta": None, "max_model_len": None}) == {}
    assert md.from_llama_cpp_props({"default_generation_settings": []}) == {}


def test_transformers_dtype_or_quantization_method() -> None:
    config = types.SimpleNamespace(model_type="llama", max_position_embeddings=512)
    assert md.from_transformers(config, "torch.bfloat16", 1000, "safetensors", 4000) == {
        "format": "safetensors",
        "family": "llama",
        "quantization": "BF16",
        "parameter_count": 1000,
        "size_bytes": 4000,
        **md.context(trained=512),
    }
    quantised = types.SimpleNamespace(
        model_type="llama", quantization_config={"quant_method": "awq", "bits": 4}
    )
    assert md.from_transformers(quantised, "torch.float16", None, None, None) == {
        "family": "llama",
        "quantization": "AWQ",
    }


def test_gguf_metadata() -> None:
    metadata = {
        "general.architecture": "llama",
        "general.file_type": "3",
        "general.size_label": "135M",
        "llama.context_length": "8192",
    }
    assert md.from_gguf(metadata, 2048, os.path.getsize(__file__)) == {
        "format": "gguf",
        "family": "llama",
        "quantization": "Q4_1",
        "parameter_size": "135M",
        "size_bytes": os.path.getsize(__file__),
        **md.context(served=2048, trained=8192),
    }
