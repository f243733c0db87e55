"""A protocol-faithful fake of an OpenAI-compatible server (vLLM, llama.cpp) for tests.

Behaviour (deterministic, so tests on both the Python and C++ side can assert it):

* ``GET /v1/models`` lists ``fake-model`` and ``tiny`` (OpenAI's list shape).
  The ``flavor`` adds an engine's own fields: ``"vllm"`` vLLM's ``root``,
  ``parent``, ``max_model_len`` (``VLLM_MAX_MODEL_LEN``) and ``permission``;
  ``"llama.cpp"`` lists only ``fake-model`` (llama-server serves one model),
  owned by ``llamacpp``, with ``meta`` {vocab_type, n_vocab, n_ctx_train,
  n_embd, n_params, size} (``LLAMA_CPP_META``), and answers ``GET /props``
  with ``default_generation_settings.n_ctx`` (``LLAMA_CPP_SLOT_CTX``),
  ``total_slots``, ``model_path``, ``chat_template``, ``modalities``,
  ``build_info`` (``props_status`` makes it fail with that HTTP status).
  Other flavors have no ``/props`` (404, like vLLM).
* ``GET /health``: 200 ``{"status":"ok"}``; while loading (``loading=True``,
  or ``--loading-s N`` on the command line) 503
  ``{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}``
  like llama.cpp's server; with ``health=False`` (``--no-health``) 404, like
  llama-cpp-python's server, which has no such route.
* ``POST /v1/chat/completions`` checks the body as OpenAI does (model,
  messages, ``stream`` a bool, ``stream_options`` only with ``stream: true``,
  ``max_tokens`` >= 1, ``temperature`` 0-2) and answers HTTP 400 in the
  ``{"error": {"message", "type", "param", "code"}}`` shape. Unknown model:
  HTTP 404 ``The model `x` does not exist.``, as vLLM does.
* The reply streams as SSE (``text/event-stream``): a role chunk, four
  content chunks "Hello", " from", " fake", " server", a chunk with
  ``finish_reason: "stop"``, then (only with ``stream_options.include_usage``)
  a chunk with ``choices: []`` and ``usage`` {prompt_tokens 12,
  completion_tokens 4, total_tokens 16}, then ``data: [DONE]``. With
  ``max_tokens`` = n < 4 only n chunks are sent and finish_reason is
  ``"length"``. With ``"stream": false`` one ``chat.completion`` object.
* Markers in the last message's content change the behaviour:
  ``[[hold]]`` sends the first content chunk, then holds the stream open until
  the client disconnects (or ``release`` is set, or 60 s pass);
  ``[[slow]]`` waits ``slow_s`` (default 1 s) before the first content chunk;
  ``[[midstream-error]]`` sends two chunks, then
  ``data: {"error":{"message":"fake mid-stream failure",...}}`` and ``[DONE]``;
  ``[[disconnect]]`` sends two chunks and closes the connection mid-stream;
  ``[[http-NNN]]`` answers HTTP NNN ``{"error":{"message":"fake error NNN",...}}``;
  ``[[flat-error]]`` answers HTTP 400 in vLLM < 0.10.1's flat shape
  ``{"object":"error","message":"fake flat error",...}``.

  ``[[finish:REASON]]`` ends the stream with ``finish_reason`` REASON (vLLM
  also says ``abort``, servers in general ``content_filter``).
* Typed fields are checked as the servers check them: ``logit_bias`` an
  object of token-id strings to numbers, ``stop`` a string or strings,
  ``response_format`` of type ``text``, ``json_object`` (optionally with
  ``schema``, llama.cpp's form) or ``json_schema`` with ``json_schema.schema``
  an object; else HTTP 400.
* ``POST /v1/embeddings`` {model, input (a string or strings),
  encoding_format?, dimensions?} answers ``{"object": "list", "data":
  [{"object": "embedding", "index", "embedding"}], "model", "usage":
  {prompt_tokens, total_tokens}}`` with the fake Ollama's vectors
  (``embedding_of``) and the inputs' words as prompt_tokens.
* Token counting, in both servers' forms: ``POST /apply-template``
  {messages} -> ``{"prompt"}`` (ChatML, ending with the assistant's turn)
  and ``POST /tokenize`` {content, add_special?} -> ``{"tokens"}``
  (llama-server: one token per whitespace-separated piece, plus a BOS with
  add_special); ``POST /tokenize`` {model, messages} -> ``{"count",
  "max_model_len", "tokens"}`` (vLLM: the template applied, then the same
  counting, no BOS). With ``tokenize=False`` (``--no-tokenize``) these routes
  are 404, as on llama-cpp-python's server.
* Tools (see ``fake_tools``): with ``tools`` in the body, ``[[call:NAME
  {json}]]`` markers in the last user message make the reply stream tool
  calls the way OpenAI does: per call a chunk with ``delta.tool_calls:
  [{"index": i, "id": "call_fake_<i>", "type": "function", "function":
  {"name", "arguments": ""}}]``, then the arguments' JSON text in three
  pieces (``{"index": i, "function": {"arguments": piece}}``), then
  ``finish_reason: "tool_calls"``. After ``role: "tool"`` messages (checked as
  OpenAI does: ``tool_call_id`` answering a preceding assistant
  ``tool_calls`` entry, ``arguments`` a string) the reply is the text
  ``"Tool results: "`` followed by the results joined by ``" | "``.

Every received POST body is recorded in ``FakeOpenAI.requests``; the time a
held stream's client hung up in ``FakeOpenAI.disconnected_at`` (monotonic).

Run standalone: ``python fake_openai.py --port 0``: prints ``PORT=<n>`` as its
first stdout line, then serves until killed.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import re
import socket
import threading
from typing import Any

from fake_http import FakeHandler, FakeServer

from fake_ollama import embedding_of
from fake_tools import planned_calls, tool_answer

KNOWN_MODELS = ("fake-model", "tiny")
CHUNKS = ("Hello", " from", " fake", " server")
PROMPT_TOKENS = 12
HOLD_MARKER = "[[hold]]"
SLOW_MARKER = "[[slow]]"
MIDSTREAM_ERROR_MARKER = "[[midstream-error]]"
MIDSTREAM_ERROR = "fake mid-stream failure"
DISCONNECT_MARKER = "[[disconnect]]"
FLAT_ERROR_MARKER = "[[flat-error]]"
# The whole streamed answer in one write (a server ahead of its reader).
BURST_MARKER = "[[burst]]"
FLAT_ERROR = "fake flat error"
HTTP_MARKER = re.compile(r"\[\[http-(\d{3})\]\]")
FINISH_MARKER = re.compile(r"\[\[finish:(\w+)\]\]")
CREATED = 1_700_000_000
COMPLETION_ID = "chatcmpl-fake"
HOLD_LIMIT_S = 60.0
VLLM_MAX_MODEL_LEN = 4096
# SmolLM2-135M's numbers, as llama-server reports them for its Q4_1 file.
LLAMA_CPP_META = {
    "vocab_type": 2,
    "n_vocab": 49152,
    "n_ctx_train": 8192,
    "n_embd": 576,
    "n_params": 134515008,
    "size": 96576768,
}
LLAMA_CPP_SLOT_CTX = 2048
LLAMA_CPP_MODEL_PATH = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def _error_body(message: str, type_: str, code: int | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Handler(FakeHandler):
    owner: FakeOpenAI
    log_name = "fake_openai"

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": _model_list(self.owner.flavor)})
        elif self.path == "/props" and self.owner.flavor == "llama.cpp":
            if self.owner.props_status is not None:
                self._send_json(
                    self.owner.props_status,
                    _error_body("fake props failure", "server_error", self.owner.props_status),
                )
            else:
                self._send_json(200, _props())
        elif self.path == "/health" and self.owner.health_route:
            if self.owner.loaded.is_set():
                self._send_json(200, {"status": "ok"})
            else:
                self.owner.health_polled_while_loading.set()
                self._send_json(
                    503,
                    {
                        "error": {
                            "code": 503,
                            "message": "Loading model",
                            "type": "unavailable_error",
                        }
                    },
                )
        else:
            self._send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        routes = {
            "/v1/chat/completions": self._chat,
            "/v1/embeddings": self._embeddings,
        }
        if self.owner.tokenize_routes:
            routes["/tokenize"] = self._tokenize
            routes["/apply-template"] = self._apply_template
        route = routes.get(self.path)
        if route is None:
            self._send_json(404, {"detail": "Not Found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_json(400, _error_body("invalid JSON body", "invalid_request_error", 400))
            return
        with self.owner.lock:
            self.owner.requests.append(body)
        if not isinstance(body, dict):
            self._send_json(
                400, _error_body("body must be an object", "invalid_request_error", 400)
            )
            return
        route(body)

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) for t in inputs)
        ):
            self._send_json(400, _error_body("input must be text", "invalid_request_error", 400))
            return
        model = body.get("model")
        if model not in KNOWN_MODELS:
            self._send_json(
                404,
                _error_body(f"The model `{model}` does not exist.", "NotFoundError", 404, "model"),
            )
            return
        size = body.get("dimensions") or 0
        words = sum(len(t.split()) for t in inputs)
        self._send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": embedding_of(t, size)}
                    for i, t in enumerate(inputs)
                ],
                "model": model,
                "usage": {"prompt_tokens": words, "total_tokens": words},
            },
        )

    def _apply_template(self, body: dict[str, Any]) -> None:
        self._send_json(200, {"prompt": chatml(body.get("messages") or [])})

    def _tokenize(self, body: dict[str, Any]) -> None:
        if "messages" in body:  # vLLM's chat form
            count = len(chatml(body["messages"]).split())
            self._send_json(
                200, {"count": count, "max_model_len": 4096, "tokens": list(range(count))}
            )
            return
        content = body.get("content")
        if not isinstance(content, str):
            self._send_json(400, _error_body("content is required", "invalid_request_error", 400))
            return
        count = len(content.split()) + (1 if body.get("add_special") else 0)
        self._send_json(200, {"tokens": list(range(count))})

    def _chat(self, body: dict[str, Any]) -> None:
        problem, param = _validate(body)
        if problem:
            self._send_json(400, _error_body(problem, "invalid_request_error", 400, param))
            return
        model = body["model"]
        if model not in KNOWN_MODELS:
            self._send_json(
                404,
                _error_body(f"The model `{model}` does not exist.", "NotFoundError", 404, "model"),
            )
            return
        last = body["messages"][-1].get("content", "")
        forced = HTTP_MARKER.search(last)
        if forced:
            status = int(forced.group(1))
            self._send_json(status, _error_body(f"fake error {status}", "server_error", status))
            return
        if FLAT_ERROR_MARKER in last:
            self._send_json(
                400,
                {
                    "object": "error",
                    "message": FLAT_ERROR,
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                },
            )
            return
        calls = planned_calls(body)
        answer = tool_answer(body)
        chunks = [answer[:14], answer[14:]] if answer is not None and not calls else list(CHUNKS)
        forced_finish = FINISH_MARKER.search(last)
        finish_reason = forced_finish.group(1) if forced_finish else "stop"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens < len(chunks):
            chunks = chunks[:max_tokens]
            finish_reason = "length"
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(chunks),
            "total_tokens": PROMPT_TOKENS + len(chunks),
        }
        if not body.get("stream", False):
            self._send_json(200, _completion(model, "".join(chunks), finish_reason, usage))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if calls:
                self._stream_tool_calls(model, calls, body)
                return
            self._event(_chunk(model, {"role": "assistant", "content": ""}, None))
            if SLOW_MARKER in last and not self._wait_or_disconnect(self.owner.slow_s):
                return
            if MIDSTREAM_ERROR_MARKER in last or DISCONNECT_MARKER in last:
                for text in chunks[:2]:
                    self._event(_chunk(model, {"content": text}, None))
                if DISCONNECT_MARKER in last:
                    # Abrupt close: no terminating chunk, no [DONE].
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._event(_error_body(MIDSTREAM_ERROR, "server_error", 500))
                self._data("[DONE]")
                self._end()
                return
            burst = io.BytesIO()
            if BURST_MARKER in last:
                real_wfile, self.wfile = self.wfile, burst
            for i, text in enumerate(chunks):
                self._event(_chunk(model, {"content": text}, None))
                if i == 0 and HOLD_MARKER in last:
                    self.owner.holding.set()
                    if not self._wait_or_disconnect(HOLD_LIMIT_S, self.owner.release):
                        return
            self._event(_chunk(model, {}, finish_reason))
            stream_options = body.get("stream_options") or {}
            if stream_options.get("include_usage"):
                event = _chunk(model, {}, None)
                event["choices"] = []
                event["usage"] = usage
                self._event(event)
            self._data("[DONE]")
            self._end()
            if BURST_MARKER in last:
                self.wfile = real_wfile
                self.wfile.write(burst.getvalue())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._disconnected()

    def _stream_tool_calls(
        self, model: str, calls: list[tuple[str, dict[str, Any]]], body: dict[str, Any]
    ) -> None:
        self._event(_chunk(model, {"role": "assistant", "content": None}, None))
        for i, (name, args) in enumerate(calls):
            head = {
                "index": i,
                "id": f"call_fake_{i}",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            self._event(_chunk(model, {"tool_calls": [head]}, None))
            text = json.dumps(args)
            cut = [0, len(text) // 3, 2 * len(text) // 3, len(text)]
            for a, b in itertools.pairwise(cut):
                piece = {"index": i, "function": {"arguments": text[a:b]}}
                self._event(_chunk(model, {"tool_calls": [piece]}, None))
        self._event(_chunk(model, {}, "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            event = _chunk(model, {}, None)
            event["choices"] = []
            event["usage"] = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": len(calls),
                "total_tokens": PROMPT_TOKENS + len(calls),
            }
            self._event(event)
        self._data("[DONE]")
        self._end()

    def _data(self, payload: str) -> None:
        data = f"data: {payload}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, obj: Any) -> None:
        self._data(json.dumps(obj))

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class FakeOpenAI(FakeServer):
    """Start with ``with FakeOpenAI() as fake:``; ``fake.host`` is ``127.0.0.1:<port>``."""

    handler_class = _Handler

    def __init__(
        self,
        port: int = 0,
        loading: bool = False,
        health: bool = True,
        slow_s: float = 1.0,
        flavor: str = "generic",
        tokenize: bool = True,
    ) -> None:
        super().__init__(port)
        self.health_route = health
        self.tokenize_routes = tokenize
        # "generic", "vllm" or "llama.cpp": whose model list (and /props) to serve.
        self.flavor = flavor
        # When set, llama.cpp's /props fails with this HTTP status.
        self.props_status: int | None = None
        self.slow_s = slow_s
        # Cleared while the "model" loads; set by finish_loading().
        self.loaded = threading.Event()
        if not loading:
            self.loaded.set()
        # Set on every /health request answered 503 (so a test can see the wait).
        self.health_polled_while_loading = threading.Event()

    def finish_loading(self) -> None:
        self.loaded.set()


def _model_list(flavor: str) -> list[dict[str, Any]]:
    """``/v1/models``' ``data``, in the shape of the flavor's engine."""
    if flavor == "llama.cpp":
        return [
            {
                "id": KNOWN_MODELS[0],
                "object": "model",
                "created": CREATED,
                "owned_by": "llamacpp",
                "meta": LLAMA_CPP_META,
            }
        ]
    if flavor == "vllm":
        return [
            {
                "id": m,
                "object": "model",
                "created": CREATED,
                "owned_by": "vllm",
                "root": m,
                "parent": None,
                "max_model_len": VLLM_MAX_MODEL_LEN,
                "permission": [
                    {
                        "id": f"modelperm-fake-{m}",
                        "object": "model_permission",
                        "created": CREATED,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for m in KNOWN_MODELS
        ]
    return [
        {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in KNOWN_MODELS
    ]


def _props() -> dict[str, Any]:
    """llama-server's ``GET /props`` (one slot, default sampling settings)."""
    return {
        "default_generation_settings": {
            "id": 0,
            "id_task": -1,
            "n_ctx": LLAMA_CPP_SLOT_CTX,
            "speculative": False,
            "is_processing": False,
            "params": {"n_predict": -1, "seed": 4294967295, "temperature": 0.8, "top_k": 40},
            "prompt": "",
            "next_token": {
                "has_next_token": True,
                "has_new_line": False,
                "n_remain": -1,
                "n_decoded": 0,
                "stopping_word": "",
            },
        },
        "total_slots": 1,
        "model_path": LLAMA_CPP_MODEL_PATH,
        "chat_template": "{{ messages }}",
        "chat_template_caps": {},
        "modalities": {"vision": False, "audio": False},
        "build_info": "b0-fake",
        "is_sleeping": False,
    }


def _validate(body: Any) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        return "request body must be a JSON object", None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty array", "messages"
    call_ids: set[str] = set()
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            return "each message needs a valid role", "messages"
        content = m.get("content", "")
        if not isinstance(content, str) and not (content is None and m.get("tool_calls")):
            return "message content must be a string", "messages"
        for call in m.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if (
                m["role"] != "assistant"
                or not isinstance(call.get("id"), str)
                or call.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str)
            ):
                return "invalid tool_calls entry", "messages"
            call_ids.add(call["id"])
        if m["role"] == "tool" and m.get("tool_call_id") not in call_ids:
            return (
                "messages with role 'tool' must be a response to a preceding message "
                "with 'tool_calls'",
                "messages",
            )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return "stream must be a boolean", "stream"
    if "stream_options" in body:
        if not stream:
            return "stream_options is only allowed when stream is true", "stream_options"
        options = body["stream_options"]
        if not isinstance(options, dict) or not isinstance(options.get("include_usage"), bool):
            return "stream_options.include_usage must be a boolean", "stream_options"
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        return "max_tokens must be a positive integer", "max_tokens"
    bias = body.get("logit_bias")
    if bias is not None and (
        not isinstance(bias, dict)
        or not all(k.isdigit() and isinstance(v, (int, float)) for k, v in bias.items())
    ):
        return "logit_bias must map token ids to numbers", "logit_bias"
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) for x in stop))
    ):
        return "stop must be a string or strings", "stop"
    problem = _response_format_problem(body.get("response_format"))
    if problem:
        return problem, "response_format"
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        return "temperature must be between 0 and 2", "temperature"
    return "", None


def _response_format_problem(fmt: Any) -> str:
    if fmt is None:
        return ""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text" or (kind == "json_object" and isinstance(fmt.get("schema", {}), dict)):
        return ""
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        return ""
    return "response_format must be text, json_object or json_schema with a schema object"


def chatml(messages: list[Any]) -> str:
    """The fake's chat template (ChatML), with the assistant's turn opened."""
    turns = "".join(
        f"<|im_start|>{m.get('role')}\n{m.get('content')}<|im_end|>\n"
        for m in messages
        if isinstance(m, dict)
    )
    return turns + "<|im_start|>assistant\n"


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _completion(
    model: str, content: str, finish_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server for tests")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--loading-s",
        type=float,
        default=0.0,
        help="answer /health with 503 'Loading model' for this many seconds",
    )
    parser.add_argument(
        "--no-health", action="store_true", help="no /health route (like llama-cpp-python)"
    )
    parser.add_argument(
        "--no-tokenize",
        action="store_true",
        help="no /tokenize or /apply-template (like llama-cpp-python)",
    )
    parser.add_argument(
        "--flavor",
        choices=("generic", "vllm", "llama.cpp"),
        default="generic",
        help="whose /v1/models fields (and /props) to serve",
    )
    args = parser.parse_args()
    fake = FakeOpenAI(
        args.port,
        loading=args.loading_s > 0,
        health=not args.no_health,
        flavor=args.flavor,
        tokenize=not args.no_tokenize,
    )
    if args.loading_s > 0:
        threading.Timer(args.loading_s, fake.finish_loading).start()
    fake.serve_until_killed()


if __name__ == "__main__":
    main()
