"""What a backend knows about a model, in one normalised shape (``models`` reply).

Every engine describes its models differently (Ollama's ``/api/tags`` and
``/api/show``, llama.cpp's ``/props`` and ``/v1/models`` ``meta``, vLLM's
``max_model_len``, GGUF metadata, a transformers config). The functions here
turn each of those into the same ``details`` object, which the C++ server
copies into ``ListModels``:

* ``context_length`` (int) and ``context_length_source``: ``"served"`` when it
  is the context requests get (llama.cpp ``n_ctx``, vLLM ``max_model_len``, an
  Ollama ``num_ctx``), ``"trained"`` when only the model's own limit is known;
* ``trained_context_length`` (int): the model's own limit, whenever known;
* ``size_bytes`` (int), ``quantization`` (``"Q4_K_M"``, ``"BF16"``, ...),
  ``family`` (``"llama"``), ``parameter_size`` (``"135M"``) and/or
  ``parameter_count`` (int), ``format`` (``"gguf"``, ``"safetensors"``, ...).

A key is present only when its source says it: values of the wrong type are
left out, nothing is inferred from names. Callers merge the dicts of several
sources with ``merge`` (later sources win, a served context beats a trained one).
"""

from __future__ import annotations

from typing import Any

Details = dict[str, Any]

SERVED = "served"
TRAINED = "trained"

# llama.cpp's ``enum llama_ftype`` (include/llama.h): GGUF ``general.file_type``
# -> the name Ollama and llama.cpp's quantize tool use. Gaps are removed types.
GGUF_FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}

# torch dtype names -> the same spelling as GGUF's unquantised types.
TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def as_int(value: Any) -> int | None:
    """A positive integer from JSON or GGUF metadata (which llama-cpp-python
    hands over as strings); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    return value if isinstance(value, int) and value > 0 else None


def as_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def context(served: Any = None, trained: Any = None) -> Details:
    """``context_length`` and its source from whichever of the two is known."""
    out: Details = {}
    served_n, trained_n = as_int(served), as_int(trained)
    if served_n is not None:
        out.update(context_length=served_n, context_length_source=SERVED)
    elif trained_n is not None:
        out.update(context_length=trained_n, context_length_source=TRAINED)
    if trained_n is not None:
        out["trained_context_length"] = trained_n
    return out


def merge(*parts: Details) -> Details:
    """Later parts win, except that a trained context never replaces a served one."""
    out: Details = {}
    for part in parts:
        part = dict(part)
        if (out.get("context_length_source"), part.get("context_length_source")) == (
            SERVED,
            TRAINED,
        ):
            del part["context_length"], part["context_length_source"]
        out.update(part)
    return out


def _present(**values: Any) -> Details:
    return {k: v for k, v in values.items() if v is not None}


def gguf_quantization(file_type: Any) -> str | None:
    n = file_type if isinstance(file_type, int) and not isinstance(file_type, bool) else None
    if isinstance(file_type, str) and file_type.strip().isdigit():
        n = int(file_type)
    return GGUF_FILE_TYPES.get(n) if n is not None else None


# ---- Ollama ----------------------------------------------------------------


def from_ollama_model_details(details: Any) -> Details:
    """Ollama's ``details`` object (``/api/tags`` entries, ``/api/show``)."""
    if not isinstance(details, dict):
        return {}
    return _present(
        format=as_text(details.get("format")),
        family=as_text(details.get("family")),
        parameter_size=as_text(details.get("parameter_size")),
        quantization=as_text(details.get("quantization_level")),
    )


def from_ollama_tag(entry: dict[str, Any]) -> Details:
    """One ``GET /api/tags`` entry: ``size`` plus its ``details``."""
    return merge(
        _present(size_bytes=as_int(entry.get("size"))),
        from_ollama_model_details(entry.get("details")),
    )


def _modelfile_num_ctx(parameters: Any) -> int | None:
    """``num_ctx`` from ``/api/show``'s ``parameters`` text (one ``name value``
    per line): the Modelfile's default for every request."""
    if not isinstance(parameters, str):
        return None
    for line in parameters.splitlines():
        name, _, value = line.strip().partition(" ")
        if name == "num_ctx":
            return as_int(value.strip())
    return None


def from_ollama_show(body: Any, requested_num_ctx: Any = None) -> Details:
    """A ``POST /api/show`` answer. ``requested_num_ctx`` is the ``num_ctx``
    this sidecar sends with every request (init options), which wins over the
    Modelfile's; without either, Ollama picks the context at load time
    (``OLLAMA_CONTEXT_LENGTH``, VRAM), so only the trained one is known."""
    if not isinstance(body, dict):
        return {}
    info = body.get("model_info")
    info = info if isinstance(info, dict) else {}
    arch = as_text(info.get("general.architecture"))
    trained = info.get(f"{arch}.context_length") if arch else None
    served = as_int(requested_num_ctx) or _modelfile_num_ctx(body.get("parameters"))
    return merge(
        from_ollama_model_details(body.get("details")),
        _present(parameter_count=as_int(info.get("general.parameter_count"))),
        context(served, trained),
    )


# ---- OpenAI-compatible servers ---------------------------------------------


def from_openai_model(entry: dict[str, Any]) -> Details:
    """One ``GET /v1/models`` entry: vLLM's ``max_model_len`` (served) and
    llama.cpp's ``meta`` (``n_ctx_train``, ``size``, ``n_params``; null while
    the model loads)."""
    meta = entry.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    return merge(
        _present(
            size_bytes=as_int(meta.get("size")),
            parameter_count=as_int(meta.get("n_params")),
        ),
        context(entry.get("max_model_len"), meta.get("n_ctx_train")),
    )


def from_llama_cpp_props(body: Any) -> Details:
    """llama.cpp's ``GET /props``: the context each slot serves and the model file."""
    if not isinstance(body, dict):
        return {}
    settings = body.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    path = as_text(body.get("model_path"))
    fmt = "gguf" if path is not None and path.lower().endswith(".gguf") else None
    return merge(_present(format=fmt), context(served=n_ctx))


# ---- in-process engines -----------------------------------------------------


def from_gguf(metadata: dict[str, Any], n_ctx: Any, file_size: Any) -> Details:
    """A GGUF file loaded by llama.cpp: its metadata (``Llama.metadata``),
    the context it was loaded with (``Llama.n_ctx()``) and the file's size."""
    arch = as_text(metadata.get("general.architecture"))
    trained = metadata.get(f"{arch}.context_length") if arch else None
    return merge(
        _present(
            format="gguf",
            family=arch,
            quantization=gguf_quantization(metadata.get("general.file_type")),
            parameter_size=as_text(metadata.get("general.size_label")),
            size_bytes=as_int(file_size),
        ),
        context(n_ctx, trained),
    )


def from_transformers(
    config: Any, dtype: Any, parameter_count: Any, weight_format: str | None, size_bytes: Any
) -> Details:
    """A transformers model: its config, the loaded weights' dtype (or the
    config's quantisation method), the summed parameter count, and the weight
    files (format and total size) when the model is a local directory."""
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    method = method if method is not None else getattr(quant, "quant_method", None)
    quantization = (
        str(getattr(method, "value", method)).upper()
        if method is not None
        else TORCH_DTYPES.get(str(dtype).removeprefix("torch."))
    )
    return merge(
        _present(
            format=weight_format,
            family=as_text(getattr(config, "model_type", None)),
            quantization=quantization,
            parameter_count=as_int(parameter_count),
            size_bytes=as_int(size_bytes),
        ),
        context(trained=getattr(config, "max_position_embeddings", None)),
    )
