"""transformers backend: a Hugging Face causal LM in-process (``--backend transformers``).

The model is a local directory (``save_pretrained`` output) or a hub id that
is already in the local cache; the sidecar never downloads. The prompt comes
from the tokenizer's chat template; ``model.generate`` runs on the model's
one long-lived worker thread (``worker.ModelWorker``: one generation at a
time, requests waiting for their turn wait on the event loop, a cancelled one
leaves the line without running), and a ``TextStreamer`` hands each piece of
text to the loop with ``loop.call_soon_threadsafe``. A cancel sets a flag
that a ``StoppingCriteria`` checks after every token, so the worker leaves
``generate`` at the next token.

Device: CUDA when ``torch.cuda.is_available()``, else CPU; ``options.device``
overrides. Typed sampling controls become generate() arguments (``stop`` ->
``stop_strings``, ``repeat_penalty`` -> ``repetition_penalty``,
``logit_bias`` -> ``sequence_bias``; ``seed`` seeds torch); it has no presence
or frequency penalty and no constrained decoding, so those and
``response_format`` are -32602. Embeddings (``embed``) are the mean of the
last hidden state over the input's tokens. Tools (``use_tools``) are not
supported (-32602): a template may render tools into the prompt, but the
calls in the generated text come in a format of each model's own, which this
backend does not parse. torch and
transformers are the ``[transformers]`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
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
    StopFilter,
    TextDelta,
)
from .worker import ModelWorker

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
# Request ``options`` passed to ``generate`` as is.
GENERATE_OPTIONS = frozenset(
    {"top_p", "top_k", "min_p", "repetition_penalty", "min_new_tokens", "no_repeat_ngram_size"}
)
# The typed sampling controls as generate() arguments (``stop`` and
# ``logit_bias`` change shape on the way: stop_strings, sequence_bias; the
# seed seeds torch instead).
SAMPLING_NAMES = {
    "stop": "stop_strings",
    "seed": "seed",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repetition_penalty",
    "logit_bias": "sequence_bias",
}
SAMPLING_WHY_NOT = {
    "presence_penalty": "generate() has no presence penalty (repeat_penalty is its "
    "repetition_penalty)",
    "frequency_penalty": "generate() has no frequency penalty (repeat_penalty is its "
    "repetition_penalty)",
}
# Controls that only act when generate() samples.
SAMPLERS = frozenset({"top_p", "top_k", "min_p"})


def _missing_engine(e: ImportError) -> BackendError:
    return BackendError(
        protocol.INTERNAL_ERROR,
        "the transformers backend needs torch and transformers: install the sidecar's "
        f"[transformers] extra (pip install 'llmbridge-sidecar[transformers]') ({e})",
        {"backend": "transformers"},
    )


# Weight files of a save_pretrained directory, by format (sharded or not).
WEIGHT_FILES = (("safetensors", ".safetensors"), ("pytorch", ".bin"))


def _weight_files(path: str) -> tuple[str | None, int | None]:
    """The format and total size of a local model directory's weights;
    (None, None) for a hub id or a directory without weights we recognise."""
    if not os.path.isdir(path):
        return None, None
    names = os.listdir(path)
    for fmt, suffix in WEIGHT_FILES:
        files = [os.path.join(path, n) for n in names if n.endswith(suffix)]
        if files:
            return fmt, sum(os.path.getsize(f) for f in files)
    return None, None


def _loaded_details(model: Any, path: str) -> dict[str, Any]:
    """The loaded model's details (model_details): read once, on the worker thread."""
    fmt, size = _weight_files(path)
    parameters = sum(p.numel() for p in model.parameters())
    return model_details.from_transformers(model.config, model.dtype, parameters, fmt, size)


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model: str, options: dict[str, Any]) -> None:
        super().__init__(model)
        self._options = options
        self.device = ""
        self._model: Any = None
        self._tokenizer: Any = None
        self._worker = ModelWorker("transformers")

    def capabilities(self) -> dict[str, Any]:
        return {"in_process": True, "device": self.device}

    def tools_unsupported(self) -> str | None:
        return (
            "the transformers backend does not support tools: tool calls in generated text "
            "are not parsed (use the ollama, llama.cpp or vllm backend for tool calling)"
        )

    async def start(self) -> None:
        try:
            import torch
            import transformers
        except ImportError as e:
            raise _missing_engine(e) from e
        if not self.model:
            raise protocol.invalid_params(
                "model", "is required for the transformers backend: a model directory"
            )
        device = self._options.get("device")
        if device is not None and not isinstance(device, str):
            raise protocol.invalid_params("options.device", "must be a string like 'cpu'")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = os.path.expanduser(self.model)
        log.info("loading transformers model %s on %s", path, self.device)

        def load() -> tuple[Any, Any]:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            # Any: transformers' stubs type .to() too narrowly for a loaded model.
            model: Any = transformers.AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True
            )
            return tokenizer, model.to(self.device).eval()

        try:
            self._tokenizer, self._model = await self._worker.call(load)
        except (OSError, ValueError) as e:
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"cannot load transformers model {self.model!r}: {e}: pass a local model "
                "directory (save_pretrained output) or a hub id already in the local cache",
                self.error_data(),
            ) from e
        if not getattr(self._tokenizer, "chat_template", None):
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"transformers model {self.model!r} has no chat template: use an instruct "
                "model whose tokenizer_config.json has one",
                self.error_data(),
            )
        model = self._model
        self.details = await self._worker.call(lambda: _loaded_details(model, path))
        self.model = os.path.basename(os.path.normpath(path)) if os.path.isdir(path) else path

    async def aclose(self) -> None:
        self._model = None
        # Waits for a running generation to leave generate(), then stops the thread.
        await self._worker.aclose()

    def _generate_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        if request.response_format is not None:
            raise self.unsupported(
                "response_format",
                "transformers has no constrained decoding here; use the gguf, ollama, "
                "llama.cpp or vllm backend for JSON output",
            )
        kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if k in GENERATE_OPTIONS}
        kwargs["max_new_tokens"] = request.max_tokens or DEFAULT_MAX_TOKENS
        stop = request.options.get("stop")
        if stop is not None:
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise protocol.invalid_params("options.stop", "must be a string or strings")
            kwargs["stop_strings"] = stop
        typed = self.native_sampling(request.sampling, SAMPLING_NAMES, SAMPLING_WHY_NOT)
        typed.pop("seed", None)  # seeds torch (see chat)
        if "sequence_bias" in typed:
            vocabulary = len(self._tokenizer)
            outside = sorted(t for t in typed["sequence_bias"] if t >= vocabulary)
            if outside:
                raise self.unsupported(
                    "logit_bias",
                    f"token id {outside[0]} is outside model {self.model!r}'s vocabulary of "
                    f"{vocabulary} tokens",
                )
            typed["sequence_bias"] = {(t,): b for t, b in typed["sequence_bias"].items()}
        kwargs.update(typed)  # typed controls win over options
        if "stop_strings" in kwargs:
            kwargs["tokenizer"] = self._tokenizer  # stop_strings needs it
        if request.temperature is not None:
            kwargs["do_sample"] = request.temperature > 0
            if request.temperature > 0:
                kwargs["temperature"] = request.temperature
        elif SAMPLERS & kwargs.keys():
            # top_p / top_k / min_p act only when sampling; greedy would ignore them.
            kwargs["do_sample"] = True
        return kwargs

    def _check_loaded(self, model: str) -> None:
        """Raises unless the model is loaded and ``model`` names it (or nothing)."""
        if self._model is None:
            raise BackendError(
                protocol.INTERNAL_ERROR, "transformers model is not loaded", self.error_data()
            )
        if model and model not in (self.model, os.path.expanduser(self.model)):
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"model {model!r} is not loaded: this transformers sidecar serves "
                f"{self.model!r}; start another sidecar (init) for another model",
                self.error_data(model),
            )

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        self._check_loaded(request.model)
        kwargs = self._generate_kwargs(request)
        seed = request.options.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise protocol.invalid_params("options.seed", "must be an integer")
        if request.sampling.seed is not None:
            seed = request.sampling.seed  # typed wins over options

        def generate(emit: Callable[[ChatEvent], None], cancelled: threading.Event) -> None:
            self._generate(request, kwargs, seed, emit, cancelled)

        try:
            async with contextlib.aclosing(self._worker.stream(generate)) as events:
                async for event in events:
                    yield event
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(
                protocol.INTERNAL_ERROR,
                f"transformers generation failed: {type(e).__name__}: {e}",
                self.error_data(),
            ) from e

    def _generate(
        self,
        request: ChatRequest,
        kwargs: dict[str, Any],
        seed: int | None,
        emit: Callable[[ChatEvent], None],
        cancelled: threading.Event,
    ) -> None:
        """Runs on the worker thread: emits the TextDeltas, then the ChatDone."""
        import torch
        import transformers

        model, tokenizer = self._model, self._tokenizer
        if model is None:
            return  # closed while this request waited: its consumer is gone
        inputs = tokenizer.apply_chat_template(
            [m.to_chat() for m in request.messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,  # explicit: the default changed in transformers v5
            return_tensors="pt",
        ).to(self.device)
        prompt_tokens = int(inputs["input_ids"].shape[-1])

        class StopOnCancel(transformers.StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return cancelled.is_set()

        # generate() stops after a stop string; the answer ends before it.
        stops = StopFilter(tuple(kwargs.get("stop_strings") or ()))

        class EmitText(transformers.TextStreamer):
            """Decodes tokens as generate() makes them; hands out each finished piece."""

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                piece = stops.feed(text)
                if stream_end:
                    piece += stops.flush()
                if piece:
                    emit(TextDelta(piece))

        streamer: Any = EmitText(tokenizer, skip_prompt=True, skip_special_tokens=True)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            output_ids = model.generate(
                **inputs,
                streamer=streamer,
                stopping_criteria=transformers.StoppingCriteriaList([StopOnCancel()]),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                **kwargs,
            )
        if cancelled.is_set():
            return
        output = int(output_ids.shape[-1]) - prompt_tokens
        finish_reason = (
            "length" if output >= kwargs["max_new_tokens"] and not stops.stopped else "stop"
        )
        if finish_reason == "stop" and output > 0:
            eos = model.generation_config.eos_token_id
            eos_ids = set(eos) if isinstance(eos, list) else {eos}
            if int(output_ids[0, -1]) in eos_ids:
                # The end-of-turn token ends the answer but is not part of it.
                output -= 1
        emit(
            ChatDone(
                usage=protocol.Usage(input_tokens=prompt_tokens, output_tokens=output),
                finish_reason=finish_reason,
                model=self.model,
            )
        )

    async def count_tokens(self, model: str, messages: list[protocol.Message]) -> int:
        self._check_loaded(model)
        tokenizer = self._tokenizer
        chat = [m.to_chat() for m in messages]

        def count() -> int:
            # The same call _generate makes, so the count is its input_tokens.
            encoded = tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            return len(encoded["input_ids"])

        # Off the event loop, beside a running generation: a fast tokenizer
        # encodes concurrently with the model's thread.
        return await asyncio.to_thread(count)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self._check_loaded(request.model)
        return await self._worker.call(lambda: self._embed(request))

    def _embed(self, request: EmbedRequest) -> EmbedResult:
        """Runs on the worker thread: the mean of the last hidden state over
        each input's tokens (one input at a time: no padding to mask)."""
        import torch

        model, tokenizer = self._model, self._tokenizer
        if model is None:
            raise BackendError(
                protocol.INTERNAL_ERROR, "transformers model is not loaded", self.error_data()
            )
        self.refuse_dimensions(request, int(model.config.hidden_size))
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        vectors: list[list[float]] = []
        tokens = 0
        with torch.inference_mode():
            for i, text in enumerate(request.inputs):
                encoded = tokenizer(text, return_tensors="pt").to(self.device)
                count = int(encoded["input_ids"].shape[-1])
                if limit and count > limit:
                    raise self.unsupported(
                        f"inputs[{i}]",
                        f"{count} tokens, over the model's context of {limit}; shorten it",
                    )
                hidden = model(**encoded, output_hidden_states=True).hidden_states[-1][0]
                vectors.append(hidden.float().mean(dim=0).tolist())
                tokens += count
        return EmbedResult(embeddings=vectors, model=self.model, input_tokens=tokens)
