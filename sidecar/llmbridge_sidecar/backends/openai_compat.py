"""OpenAI-compatible backend: ``POST /v1/chat/completions`` with SSE streaming.

One module for the servers that speak this dialect: llama.cpp's
``llama-server``, llama-cpp-python's server and vLLM (``--backend llama.cpp``
and ``--backend vllm``). What differs between them is handled by reading the
answers, not by the backend name:

* readiness: ``GET /health`` is 200 when ready; llama.cpp answers 503
  "Loading model" while loading (init waits, up to the startup timeout); a
  server without ``/health`` (404, llama-cpp-python) is ready once it answers;
* usage: requested with ``stream_options.include_usage``; a server that
  ignores it (llama-cpp-python) gets its output counted one token per chunk;
* errors: ``{"error": {"message", ...}}`` and vLLM < 0.10.1's flat
  ``{"object": "error", "message": ...}`` are both understood, as HTTP bodies
  and as SSE events mid-stream.

Always streams from the server, so a cancel closes the HTTP connection, which
vLLM and llama.cpp take as the signal to stop generating; a stream that ends
normally is read to its end, so its connection is reused.

Tools: offered as ``tools: [{"type": "function", "function": {...}}]`` (no
``tool_choice``: the server's default, "auto"; vLLM needs
``--enable-auto-tool-choice`` and a ``--tool-call-parser``, llama-server
``--jinja``). Calls stream as ``delta.tool_calls`` pieces keyed by ``index``
(``id`` and ``function.name`` once, ``function.arguments`` as JSON text in
pieces), ending with ``finish_reason: "tool_calls"``. The conversation
continues with ``{"role": "assistant", "content": text or null, "tool_calls":
[{"id", "type": "function", "function": {"name", "arguments": text}}]}`` and
one ``{"role": "tool", "tool_call_id", "content"}`` per call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from .. import model_details, protocol
from ..errors import BackendError
from ..protocol import InitParams
from .base import (
    ChatDone,
    ChatEvent,
    ChatRequest,
    EmbedRequest,
    EmbedResult,
    HealthReport,
    ModelInfo,
    TextDelta,
    is_vector,
    make_tool_call,
    token_count,
)
from .http import HttpBackend, error_text

log = logging.getLogger(__name__)

DEFAULT_HOST = "localhost:8000"
CHAT_PATH = "/v1/chat/completions"
# Body fields the sidecar owns; ``options`` may set any other field as is.
RESERVED_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})


EMBEDDINGS_PATH = "/v1/embeddings"
# The typed sampling controls both servers take as body fields of their own
# name; the repeat penalty's name differs (Flavor).
COMMON_SAMPLING_NAMES = {
    name: name for name in protocol.SAMPLING_FIELDS if name != "repeat_penalty"
}


@dataclass(frozen=True)
class Flavor:
    """What differs between the servers: names in messages, how to start
    them, the repeat penalty's field, and how they count a prompt's tokens."""

    product: str
    start_hint: str
    repeat_penalty_field: str
    # llama.cpp: POST /apply-template, then POST /tokenize the prompt; vLLM:
    # POST /tokenize with the messages.
    template_then_tokenize: bool


FLAVORS = {
    "llama.cpp": Flavor(
        "llama.cpp server", "`llama-server -m MODEL.gguf --port PORT`", "repeat_penalty", True
    ),
    "vllm": Flavor("vLLM", "`vllm serve MODEL --port PORT`", "repetition_penalty", False),
}


def _event_error(obj: dict[str, Any]) -> str | None:
    """The message of an SSE event that reports an error, in either shape."""
    err = obj.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or json.dumps(err))
    if isinstance(err, str):
        return err
    if obj.get("object") == "error":
        return str(obj.get("message") or json.dumps(obj))
    return None


class OpenAICompatBackend(HttpBackend):
    def __init__(self, params: InitParams) -> None:
        super().__init__(params.model, params.host, DEFAULT_HOST, params)
        self.name = params.backend
        self.flavor = FLAVORS[params.backend]
        self.product = self.flavor.product
        self.start_hint = self.flavor.start_hint
        self._sampling_names = {
            **COMMON_SAMPLING_NAMES,
            "repeat_penalty": self.flavor.repeat_penalty_field,
        }
        # Init options are request fields for every request (top_p, seed, ...).
        self._init_options = params.options

    def capabilities(self) -> dict[str, Any]:
        return {"in_process": False}

    def tools_unsupported(self) -> str | None:
        return None  # a server started without tool support answers 400, reported as is

    # ---- readiness -------------------------------------------------------

    async def _health_status(self) -> tuple[int, str]:
        status, body = await self.get_json("/health")
        message = ""
        if isinstance(body, dict):
            message = error_text(json.dumps(body).encode()) if "error" in body else ""
        return status, message

    async def start(self) -> None:
        """Reachable, done loading, and serving the model init names."""

        async def loaded() -> bool:
            status, message = await self._health_status()
            if status == 503 and "loading" in message.lower():
                log.info("%s at %s is loading its model; waiting", self.product, self.base_url)
                return False
            if status in (200, 404):  # 404: no /health (llama-cpp-python)
                return True
            raise BackendError(
                protocol.BACKEND_ERROR,
                f"{self.product} at {self.base_url} is unhealthy: GET /health answered "
                f"HTTP {status} {message}; check its log",
                self.error_data(http_status=status),
            )

        await self.wait_until("loading its model", loaded)
        served = [m.name for m in await self.list_models()]
        if not self.model:
            if not served:
                raise BackendError(
                    protocol.MODEL_NOT_FOUND,
                    f"{self.product} at {self.base_url} serves no model: start it with one",
                    self.error_data(http_status=200),
                )
            self.model = served[0]
        elif self.model not in served:
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f"model {self.model!r} is not served by {self.product} at {self.base_url}: "
                f"it serves {', '.join(served) or 'nothing'}; pass one of those as the model "
                f"or start the server with {self.model!r}",
                self.error_data(http_status=404, served_models=served),
            )

    async def list_models(self) -> list[ModelInfo]:
        status, body = await self.get_json("/v1/models")
        entries = body.get("data") if isinstance(body, dict) else None
        if status != 200 or not isinstance(entries, list):
            raise BackendError(
                protocol.BACKEND_ERROR,
                f"{self.product} at {self.base_url} answered GET /v1/models with HTTP "
                f"{status} and no model list; is this an OpenAI-compatible server?",
                self.error_data(http_status=status),
            )
        return [
            ModelInfo(
                str(e["id"]),
                {k: v for k, v in e.items() if k != "id"},
                model_details.from_openai_model(e),
            )
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("id"), str)
        ]

    async def describe_model(self, listed: list[ModelInfo]) -> ModelInfo | None:
        """The listed entry's details; on llama.cpp also ``GET /props``: the
        context each request is served with (``n_ctx`` per slot)."""
        described = await super().describe_model(listed)
        if described is None or self.name != "llama.cpp":
            return described
        props = await self.optional_json("GET", "/props")
        if props is None:
            return described
        details = model_details.merge(described.details, model_details.from_llama_cpp_props(props))
        return ModelInfo(described.name, details=details)

    async def health(self) -> HealthReport:
        try:
            status, message = await self._health_status()
            if status == 404:  # no /health: answering the model list is health
                status, _ = await self.get_json("/v1/models")
        except BackendError as e:
            return HealthReport(ok=False, message=e.message)
        if status == 200:
            return HealthReport(True, f"{self.product} at {self.base_url} is ready", status)
        return HealthReport(
            False,
            f"{self.product} at {self.base_url} is not ready: HTTP {status} {message}".rstrip(),
            status,
        )

    # ---- completion ------------------------------------------------------

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        options: dict[str, Any] = {**self._init_options, **request.options}
        clash = sorted(RESERVED_FIELDS & options.keys())
        if clash:
            raise protocol.invalid_params(
                f"options.{clash[0]}", "is set by the sidecar; use the request's own field"
            )
        sampling = self.native_sampling(request.sampling, self._sampling_names, {})
        if "logit_bias" in sampling:
            # JSON object keys are strings: {"token id": bias}, as OpenAI's.
            sampling["logit_bias"] = {str(k): v for k, v in sampling["logit_bias"].items()}
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **options,
            **sampling,  # typed controls win over the same keys in options
        }
        if request.response_format is not None:
            body["response_format"] = self._response_format(request.response_format)
        if request.tools:
            body["tools"] = [t.to_openai() for t in request.tools]
        if request.max_tokens > 0:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def _response_format(self, fmt: protocol.ResponseFormat) -> dict[str, Any]:
        if fmt.schema is None:
            return {"type": "json_object"}
        if self.flavor.template_then_tokenize:
            # The shape both llama-server and llama-cpp-python's server turn
            # into a grammar (the latter ignores type "json_schema").
            return {"type": "json_object", "schema": fmt.schema}
        spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema}
        if fmt.strict:
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        body: dict[str, Any] = {
            "model": request.model,
            "input": list(request.inputs),
            "encoding_format": "float",
        }
        if request.dimensions:
            body["dimensions"] = request.dimensions
        answer = await self.post_json(request.model, EMBEDDINGS_PATH, body)
        data = answer.get("data")
        entries = data if isinstance(data, list) else []
        by_index = {
            e.get("index", i): e.get("embedding")
            for i, e in enumerate(entries)
            if isinstance(e, dict)
        }
        vectors = [by_index.get(i) for i in range(len(request.inputs))]
        if len(entries) != len(request.inputs) or not all(is_vector(v) for v in vectors):
            raise BackendError(
                protocol.BACKEND_ERROR,
                f"{self.product} at {self.base_url} answered {EMBEDDINGS_PATH} without one "
                f"embedding per input for model {request.model!r}",
                self.error_data(request.model, http_status=200),
            )
        usage = answer.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return EmbedResult(
            embeddings=[v for v in vectors if isinstance(v, list)],
            model=str(answer.get("model") or request.model),
            input_tokens=tokens if isinstance(tokens, int) else 0,
        )

    async def count_tokens(self, model: str, messages: list[protocol.Message]) -> int:
        chat = [_message(m) for m in messages]
        if not self.flavor.template_then_tokenize:
            answer = await self._post_or_unsupported(
                model,
                "/tokenize",
                {"model": model, "messages": chat, "add_generation_prompt": True},
            )
            count = answer.get("count")
        else:
            rendered = await self._post_or_unsupported(model, "/apply-template", {"messages": chat})
            prompt = rendered.get("prompt")
            if not isinstance(prompt, str):
                raise self._malformed(model, "/apply-template", "a prompt")
            # As llama-server tokenizes a chat prompt: special tokens added and parsed.
            answer = await self._post_or_unsupported(
                model, "/tokenize", {"content": prompt, "add_special": True, "parse_special": True}
            )
            tokens = answer.get("tokens")
            count = len(tokens) if isinstance(tokens, list) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise self._malformed(model, "/tokenize", "a token count")
        return count

    async def _post_or_unsupported(
        self, model: str, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """``post_json``, with a server that lacks ``path`` (404) meaning -32601."""
        missing = BackendError(
            protocol.METHOD_NOT_FOUND,
            f"count_tokens is not supported by this {self.product} at {self.base_url}: "
            f"it has no POST {path} (llama.cpp's llama-server and vLLM have one; "
            "llama-cpp-python's server does not)",
            self.error_data(model, http_status=404),
        )
        return await self.post_json(model, path, body, missing)

    def _malformed(self, model: str, path: str, what: str) -> BackendError:
        return BackendError(
            protocol.BACKEND_ERROR,
            f"{self.product} at {self.base_url} answered POST {path} without {what}",
            self.error_data(model, http_status=200),
        )

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        model = request.model
        reported_model = model
        finish_reason = ""
        usage: protocol.Usage | None = None
        deltas = 0
        # Tool calls by their index: [id, name, argument pieces].
        pending: dict[int, tuple[list[str], list[str], list[str]]] = {}
        ended = False  # data: [DONE] seen

        def read_line(line: bytes, texts: list[str]) -> bool:
            nonlocal reported_model, usage, finish_reason, deltas, ended
            if not line.startswith(b"data:"):
                return False  # SSE comments (":"), event:, id:, retry:
            payload = line[5:].strip()
            if payload == b"[DONE]":
                ended = True
                return True
            obj = self._parse_event(model, payload)
            if isinstance(obj.get("model"), str) and obj["model"]:
                reported_model = obj["model"]
            raw_usage = obj.get("usage")
            if isinstance(raw_usage, dict):
                usage = protocol.Usage(
                    input_tokens=token_count(raw_usage.get("prompt_tokens")),
                    output_tokens=token_count(raw_usage.get("completion_tokens")),
                )
            for choice in obj.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    texts.append(content)
                    deltas += 1
                raw_calls = delta.get("tool_calls") if isinstance(delta, dict) else None
                for raw in raw_calls if isinstance(raw_calls, list) else []:
                    self._add_tool_call_piece(model, pending, raw)
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
            return False

        async with await self.stream(model, CHAT_PATH, self.build_body(request)) as lines:
            # What arrived together is relayed as one piece (one stream.chunk).
            async for text in lines.texts(read_line):
                yield TextDelta(text)
            if not ended and not finish_reason:
                raise self.stream_broken(model, "closed the stream before [DONE]")
            await lines.finish()  # the connection goes back to the pool
        if usage is None:
            # The server ignored include_usage: one chunk is one token on
            # llama.cpp-based servers; the prompt size is unknown.
            usage = protocol.Usage(input_tokens=0, output_tokens=deltas)
        calls = tuple(
            make_tool_call("".join(call_id) or f"call_{index}", "".join(name), "".join(arguments))
            for index, (call_id, name, arguments) in sorted(pending.items())
        )
        yield ChatDone(
            usage=usage,
            finish_reason=finish_reason or "stop",
            model=reported_model,
            tool_calls=calls,
        )

    def _add_tool_call_piece(
        self,
        model: str,
        pending: dict[int, tuple[list[str], list[str], list[str]]],
        raw: Any,
    ) -> None:
        """Fold one ``delta.tool_calls`` item into the call with its ``index``."""
        index = raw.get("index", 0) if isinstance(raw, dict) else None
        if isinstance(index, bool) or not isinstance(index, int):
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{self.product} at {self.base_url} sent a tool call piece without an index: "
                f"{json.dumps(raw)[:200]}",
                self.error_data(model, http_status=200),
            )
        call_id, name, arguments = pending.setdefault(index, ([], [], []))
        if isinstance(raw.get("id"), str) and raw["id"] and not call_id:
            call_id.append(raw["id"])
        function = raw.get("function")
        if isinstance(function, dict):
            # The name comes whole in one piece; the arguments in many.
            if isinstance(function.get("name"), str) and function["name"] and not name:
                name.append(function["name"])
            if isinstance(function.get("arguments"), str):
                arguments.append(function["arguments"])

    def _parse_event(self, model: str, payload: bytes) -> dict[str, Any]:
        obj = self.stream_object(model, payload, "server-sent event")
        upstream = _event_error(obj)
        if upstream is not None:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"{self.product} at {self.base_url} reported an error mid-stream for model "
                f"{model!r}: {upstream}",
                self.error_data(model, http_status=200, upstream_error=upstream),
            )
        return obj

    def http_error(self, model: str, status: int, body: bytes) -> BackendError:
        upstream = error_text(body)
        data = self.error_data(model, http_status=status)
        if upstream:
            data["upstream_error"] = upstream
        if status == 404 and "model" in upstream.lower():
            return BackendError(
                protocol.MODEL_NOT_FOUND,
                f"model {model!r} not found at {self.product} {self.base_url}: {upstream}; "
                "the `models` method lists what it serves",
                data,
            )
        return BackendError(
            protocol.BACKEND_ERROR,
            f"{self.product} at {self.base_url} answered HTTP {status} for model {model!r}: "
            f"{upstream or '(empty body)'}",
            data,
        )


def _message(m: protocol.Message) -> dict[str, Any]:
    """A conversation message in the OpenAI shape, tool turns included."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content}
    if not m.tool_calls:
        return dict(m.to_chat())
    return {
        "role": m.role,
        "content": m.content or None,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": (
                        c.raw_arguments if c.raw_arguments is not None else json.dumps(c.arguments)
                    ),
                },
            }
            for c in m.tool_calls
        ],
    }
