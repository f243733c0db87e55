"""Ollama backend: ``POST /api/chat`` with NDJSON streaming.

Always streams from Ollama (even for non-streaming ``complete``) so a cancel
closes the HTTP connection, which makes Ollama stop generating; a stream that
ends normally is read to its end, so its connection is reused.

Tools: offered in the body's ``tools`` (``{"type": "function", "function":
{name, description, parameters}}``); Ollama streams the model's calls as
``message.tool_calls: [{"function": {"name", "arguments": {object}}}]`` on a
line before the final one. The conversation continues with the assistant turn
(``content`` and ``tool_calls`` as received) and one ``{"role": "tool",
"content", "tool_name"}`` message per call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncGenerator
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

DEFAULT_HOST = "localhost:11434"
# The typed sampling controls: Ollama options of the same name (but one).
SAMPLING_NAMES = {name: name for name in protocol.SAMPLING_FIELDS if name != "logit_bias"}
SAMPLING_WHY_NOT = {"logit_bias": "Ollama's API has no logit bias option"}
# The end of Ollama's HTTP 400 error when tools are offered to a model whose
# template has none: "<registry>/<model>:<tag> does not support tools".
NO_TOOLS_SUFFIX = "does not support tools"


def model_matches(wanted: str, served: str) -> bool:
    """Ollama's naming: ``llama3.2`` is ``llama3.2:latest``."""
    return wanted == served or (":" not in wanted and f"{wanted}:latest" == served)


class OllamaBackend(HttpBackend):
    name = "ollama"
    product = "Ollama"
    start_hint = "`ollama serve`"

    def __init__(self, params: InitParams) -> None:
        super().__init__(params.model, params.host, DEFAULT_HOST, params)
        # Init options are Ollama options for every request (num_ctx, ...).
        self._init_options = params.options

    def capabilities(self) -> dict[str, Any]:
        return {"in_process": False}

    def tools_unsupported(self) -> str | None:
        return None  # Ollama answers 400 for a model without tool support (http_error)

    async def start(self) -> None:
        """Ollama is reachable and, when init names a model, has pulled it."""
        models = await self.list_models()
        if self.model and not any(model_matches(self.model, m.name) for m in models):
            served = ", ".join(m.name for m in models) or "none"
            raise BackendError(
                protocol.MODEL_NOT_FOUND,
                f'model "{self.model}" is not available at Ollama {self.base_url}: run '
                f"`ollama pull {self.model}` (pulled models: {served})",
                self.error_data(http_status=404),
            )

    async def list_models(self) -> list[ModelInfo]:
        status, body = await self.get_json("/api/tags")
        entries = body.get("models") if isinstance(body, dict) else None
        if status != 200 or not isinstance(entries, list):
            raise BackendError(
                protocol.BACKEND_ERROR,
                f"Ollama at {self.base_url} answered GET /api/tags with HTTP {status} and "
                "no model list; is this really Ollama?",
                self.error_data(http_status=status),
            )
        return [
            ModelInfo(str(e["name"]), e, model_details.from_ollama_tag(e))
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("name"), str)
        ]

    async def describe_model(self, listed: list[ModelInfo]) -> ModelInfo | None:
        """The tag's details plus ``POST /api/show``'s: context length, parameter count."""
        if not self.model:
            return None
        match = next((m for m in listed if model_matches(self.model, m.name)), None)
        details = match.details if match else {}
        shown = await self.optional_json("POST", "/api/show", {"model": self.model})
        if shown is not None:
            num_ctx = self._init_options.get("num_ctx")  # sent with every request
            details = model_details.merge(details, model_details.from_ollama_show(shown, num_ctx))
        return ModelInfo(self.model, details=details)

    async def health(self) -> HealthReport:
        try:
            status, body = await self.get_json("/api/version")
        except BackendError as e:
            return HealthReport(ok=False, message=e.message)
        version = body.get("version") if isinstance(body, dict) else None
        if status == 200:
            return HealthReport(True, f"Ollama {version} at {self.base_url}", status)
        return HealthReport(
            False, f"Ollama at {self.base_url} answered GET /api/version with {status}", status
        )

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        # Typed controls win over the same keys in init and request options.
        options: dict[str, Any] = {
            **self._init_options,
            **request.options,
            **self.native_sampling(request.sampling, SAMPLING_NAMES, SAMPLING_WHY_NOT),
        }
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens > 0:
            options["num_predict"] = request.max_tokens
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_message(m) for m in request.messages],
            "stream": True,
        }
        if request.tools:
            body["tools"] = [t.to_openai() for t in request.tools]
        if request.response_format is not None:
            # "json", or the schema itself (Ollama constrains to it by grammar).
            body["format"] = request.response_format.schema or "json"
        if options:
            body["options"] = options
        return body

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        body: dict[str, Any] = {"model": request.model, "input": list(request.inputs)}
        if request.dimensions:
            body["dimensions"] = request.dimensions
        answer = await self.post_json(request.model, "/api/embed", body)
        vectors = answer.get("embeddings")
        if not isinstance(vectors, list) or not all(is_vector(v) for v in vectors):
            raise BackendError(
                protocol.BACKEND_ERROR,
                f"Ollama at {self.base_url} answered /api/embed without an embeddings "
                f"array of numbers for model {request.model!r}",
                self.error_data(request.model, http_status=200),
            )
        return EmbedResult(
            embeddings=vectors,
            model=str(answer.get("model") or request.model),
            input_tokens=token_count(answer.get("prompt_eval_count")),
        )

    async def count_tokens(self, model: str, messages: list[protocol.Message]) -> int:
        raise BackendError(
            protocol.METHOD_NOT_FOUND,
            "count_tokens is not supported by the ollama backend: Ollama's API has no "
            "tokenize endpoint; usage.input_tokens of a completion reports the count after "
            "the fact",
            self.error_data(model),
        )

    async def chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        model = request.model
        calls: list[protocol.ToolCall] = []
        done: ChatDone | None = None

        def read_line(line: bytes, texts: list[str]) -> bool:
            nonlocal done
            for event in self._parse_line(model, line, calls):
                if isinstance(event, TextDelta):
                    texts.append(event.text)
                else:
                    done = event
            return done is not None

        async with await self.stream(model, "/api/chat", self.build_body(request)) as lines:
            # What arrived together is relayed as one piece (one stream.chunk).
            async for text in lines.texts(read_line):
                yield TextDelta(text)
            if done is None:
                raise self.stream_broken(model, "closed the stream before the final done line")
            await lines.finish()  # the connection goes back to the pool
        yield dataclasses.replace(done, tool_calls=tuple(calls)) if calls else done

    def http_error(self, model: str, status: int, body: bytes) -> BackendError:
        upstream = error_text(body)
        data = self.error_data(model, http_status=status)
        if upstream:
            data["upstream_error"] = upstream
        if status == 404:
            return BackendError(
                protocol.MODEL_NOT_FOUND,
                f'model "{model}" not found at Ollama {self.base_url}: run `ollama pull {model}`',
                data,
            )
        if status == 400 and upstream.endswith(NO_TOOLS_SUFFIX):
            # The model's chat template has no tools section: the request is
            # what has to change, so it is the caller's field that is named.
            return BackendError(
                protocol.INVALID_PARAMS,
                f"invalid params: 'use_tools' cannot be true for model {model!r}: Ollama at "
                f"{self.base_url} answers that it {NO_TOOLS_SUFFIX} (its chat template has "
                "no tools section); send use_tools=false, or use a model that supports tools",
                {**data, "field": "use_tools"},
            )
        return BackendError(
            protocol.BACKEND_ERROR,
            f"Ollama at {self.base_url} answered HTTP {status} for model {model!r}: "
            f"{upstream or '(empty body)'}",
            data,
        )

    def _parse_line(
        self, model: str, line: bytes, calls: list[protocol.ToolCall]
    ) -> list[ChatEvent]:
        obj = self.stream_object(model, line, "stream line")
        if "error" in obj:
            raise BackendError(
                protocol.STREAM_ERROR,
                f"Ollama at {self.base_url} reported an error mid-stream for model "
                f"{model!r}: {obj['error']}",
                self.error_data(model, http_status=200, upstream_error=str(obj["error"])),
            )
        events: list[ChatEvent] = []
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            events.append(TextDelta(content))
        raw_calls = message.get("tool_calls") if isinstance(message, dict) else None
        for raw in raw_calls if isinstance(raw_calls, list) else []:
            function = raw.get("function") if isinstance(raw, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise BackendError(
                    protocol.STREAM_ERROR,
                    f"Ollama at {self.base_url} sent a tool call without a function name: "
                    f"{json.dumps(raw)[:200]}",
                    self.error_data(model, http_status=200),
                )
            # Ollama's calls carry no id (newer versions may): one is made up.
            call_id = raw.get("id") if isinstance(raw.get("id"), str) else ""
            calls.append(
                make_tool_call(
                    call_id or f"call_{len(calls) + 1}",
                    function["name"],
                    function.get("arguments"),
                )
            )
        if obj.get("done"):
            events.append(
                ChatDone(
                    usage=protocol.Usage(
                        input_tokens=token_count(obj.get("prompt_eval_count")),
                        output_tokens=token_count(obj.get("eval_count")),
                    ),
                    finish_reason=str(obj.get("done_reason") or "stop"),
                    model=str(obj.get("model") or model),
                )
            )
        return events


def _message(m: protocol.Message) -> dict[str, Any]:
    """A conversation message in Ollama's shape, tool turns included."""
    if m.role == "tool":
        return {"role": "tool", "content": m.content, "tool_name": m.name or ""}
    out: dict[str, Any] = dict(m.to_chat())
    if m.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
        ]
    return out
