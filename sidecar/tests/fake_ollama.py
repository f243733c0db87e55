"""A protocol-faithful fake of Ollama's ``POST /api/chat`` for tests.

Behaviour (deterministic, so tests on both the Python and C++ side can assert it):

* Known models: ``llama3.2:latest`` and ``tiny``. Any other model gets HTTP 404
  with ``{"error":"model \\"<name>\\" not found, try pulling it first"}``, as Ollama does.
* A request body that is not what Ollama accepts (not JSON, no model, no
  messages, ``stream`` not a bool, ``options`` not an object) gets HTTP 400
  ``{"error": "..."}``.
* The reply to any prompt is streamed as ``application/x-ndjson``: four lines
  with ``message.content`` "Hello", " from", " fake", " Ollama" (``done:false``),
  then a final line with ``done:true``, ``done_reason:"stop"``,
  ``prompt_eval_count:12``, ``eval_count:4`` and the duration fields. With
  ``options.num_predict`` = n < 4 only the first n chunks are sent and the
  final line says ``done_reason:"length"``, ``eval_count:n``.
* With ``"stream": false`` one JSON object carries the whole reply.
* Markers in the last message's content change the behaviour:
  ``[[hold]]`` sends the first chunk, then holds the stream open until the
  client disconnects (or ``release`` is set, or 60 s pass);
  ``[[midstream-error]]`` sends two chunks and then the line
  ``{"error":"fake mid-stream failure"}`` (HTTP status stays 200, like Ollama);
  ``[[http-500]]`` answers HTTP 500 ``{"error":"fake server failure"}``;
  ``[[disconnect]]`` sends two chunks and closes the connection mid-stream.
  ``[[finish:REASON]]`` makes the final line's ``done_reason`` REASON (Ollama
  also says ``load`` and ``unload``).
* ``format`` (structured output), when present, must be ``"json"`` or a JSON
  schema object (else HTTP 400, as Ollama answers ``invalid format``).
* ``POST /api/embed`` {model, input (a string or strings), dimensions?}
  answers like Ollama: ``{"model", "embeddings": [[...]], "total_duration",
  "load_duration", "prompt_eval_count"}``, one unit-length vector of
  ``EMBED_SIZE`` values (or ``dimensions``) per input, made from the text's
  length and word count (``embedding_of``); ``prompt_eval_count`` is the
  inputs' words. An empty input list is HTTP 400.
* ``GET /api/version`` and ``GET /api/tags`` answer like Ollama; each tag
  carries ``model``, ``modified_at``, ``size``, ``digest`` and ``details``
  {parent_model, format, family, families, parameter_size,
  quantization_level} from ``MODEL_FACTS``.
* ``POST /api/show`` ``{"model"}`` (or the older ``{"name"}``; a name without a
  tag means ``:latest``) answers like Ollama: ``modelfile``, ``parameters``
  (the Modelfile's ``PARAMETER`` lines as ``name value`` text), ``template``,
  ``details``, ``model_info`` (GGUF keys: ``general.architecture``,
  ``general.parameter_count``, ``<arch>.context_length``, ...),
  ``capabilities``, ``modified_at``. Unknown model: 404 ``{"error": "model
  'x' not found"}``; no name: 400. With ``show_status`` set on the fake it
  answers that status with ``{"error": "fake show failure"}``. Bodies are
  recorded in ``FakeOllama.shows``.
* Tools (see ``fake_tools``): with ``tools`` in the body, ``[[call:NAME
  {json}]]`` markers in the last user message make the reply one line with
  ``message.tool_calls: [{"function": {"index", "name", "arguments":
  {object}}}]`` and empty content, then the final line; after ``role: "tool"``
  messages (which need ``tool_name``) the reply is the text ``"Tool results: "``
  followed by the results joined by ``" | "``, in two chunks.

Every received POST body (``/api/chat``, ``/api/embed``) is recorded in
``FakeOllama.requests``; the
time a held stream's client hung up in ``FakeOllama.disconnected_at`` (monotonic).

Run standalone: ``python fake_ollama.py --port 0``: prints ``PORT=<n>`` as
its first stdout line, then serves until killed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import time
from typing import Any

from fake_http import FakeHandler, FakeServer

from fake_tools import planned_calls, tool_answer

KNOWN_MODELS = ("llama3.2:latest", "tiny")
CHUNKS = ("Hello", " from", " fake", " Ollama")
PROMPT_EVAL_COUNT = 12
HOLD_MARKER = "[[hold]]"
MIDSTREAM_ERROR_MARKER = "[[midstream-error]]"
MIDSTREAM_ERROR = "fake mid-stream failure"
HTTP_500_MARKER = "[[http-500]]"
HTTP_500_ERROR = "fake server failure"
DISCONNECT_MARKER = "[[disconnect]]"
FINISH_MARKER = re.compile(r"\[\[finish:(\w+)\]\]")
EMBED_SIZE = 8
CREATED_AT = "2024-01-01T00:00:00.000000Z"
HOLD_LIMIT_S = 60.0
MODIFIED_AT = "2024-09-25T12:00:00.000000000Z"
SHOW_ERROR = "fake show failure"
_UNREADABLE = object()  # a request body that is not JSON (already answered 400)
# What /api/tags and /api/show say about each model. llama3.2's numbers are the
# real model's; tiny's Modelfile sets num_ctx (a PARAMETER line).
MODEL_FACTS: dict[str, dict[str, Any]] = {
    "llama3.2:latest": {
        "size": 2019393189,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
        "parameters": {"stop": ['"<|start_header_id|>"', '"<|end_header_id|>"', '"<|eot_id|>"']},
        "model_info": {
            "general.architecture": "llama",
            "general.basename": "Llama-3.2",
            "general.file_type": 15,
            "general.parameter_count": 3212749888,
            "general.quantization_version": 2,
            "llama.attention.head_count": 24,
            "llama.attention.head_count_kv": 8,
            "llama.block_count": 28,
            "llama.context_length": 131072,
            "llama.embedding_length": 3072,
            "llama.vocab_size": 128256,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": None,
        },
        "capabilities": ["completion", "tools"],
    },
    "tiny": {
        "size": 397821319,
        "digest": "130d2e7b2fc1f4e5ff21dd4f42f4b8ab4fca8e9a2e3ba4e2c10e8b6ae8fd0d2e",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "qwen2",
            "families": ["qwen2"],
            "parameter_size": "494.03M",
            "quantization_level": "Q8_0",
        },
        "parameters": {"num_ctx": ["4096"], "stop": ['"<|im_end|>"']},
        "model_info": {
            "general.architecture": "qwen2",
            "general.file_type": 7,
            "general.parameter_count": 494032768,
            "qwen2.block_count": 24,
            "qwen2.context_length": 32768,
            "qwen2.embedding_length": 896,
        },
        "capabilities": ["completion"],
    },
}


class _Handler(FakeHandler):
    owner: FakeOllama
    log_name = "fake_ollama"
    json_content_type = "application/json; charset=utf-8"

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._send_json(200, {"version": "0.0.0-fake"})
        elif self.path == "/api/tags":
            self._send_json(200, {"models": [_tag(m) for m in KNOWN_MODELS]})
        else:
            self._send_json(404, {"error": "404 page not found"})

    def do_POST(self) -> None:
        if self.path == "/api/show":
            self._show()
            return
        if self.path not in ("/api/chat", "/api/embed"):
            self._send_json(404, {"error": "404 page not found"})
            return
        body = self._read_body(self.owner.requests)
        if body is _UNREADABLE:
            return
        if self.path == "/api/embed":
            self._embed(body)
            return
        problem = _validate(body)
        if problem:
            self._send_json(400, {"error": problem})
            return
        model = body["model"]
        if model not in KNOWN_MODELS:
            self._send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        options = body.get("options") or {}
        num_predict = options.get("num_predict", -1)
        chunks = list(CHUNKS)
        done_reason = "stop"
        if isinstance(num_predict, int) and 0 <= num_predict < len(chunks):
            chunks = chunks[:num_predict]
            done_reason = "length"
        last = body["messages"][-1].get("content", "") if body["messages"] else ""
        forced = FINISH_MARKER.search(last)
        if forced:
            done_reason = forced.group(1)
        if HTTP_500_MARKER in last:
            self._send_json(500, {"error": HTTP_500_ERROR})
            return
        calls = planned_calls(body)
        answer = tool_answer(body)
        if answer is not None and not calls:
            # Two chunks: the prefix and the quoted results.
            chunks = [answer[:14], answer[14:]]
        if body.get("stream", True) is False:
            self._send_json(200, _final_line(model, done_reason, len(chunks), "".join(chunks)))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if calls:
                line = _chunk_line(model, "")
                line["message"]["tool_calls"] = [
                    {"function": {"index": i, "name": name, "arguments": args}}
                    for i, (name, args) in enumerate(calls)
                ]
                self._line(line)
                self._line(_final_line(model, "stop", len(calls), ""))
                self._end()
                return
            if DISCONNECT_MARKER in last:
                for text in chunks[:2]:
                    self._line(_chunk_line(model, text))
                # Abrupt close: no final line, no terminating chunk.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if MIDSTREAM_ERROR_MARKER in last:
                for text in chunks[:2]:
                    self._line(_chunk_line(model, text))
                self._line({"error": MIDSTREAM_ERROR})
                self._end()
                return
            for i, text in enumerate(chunks):
                self._line(_chunk_line(model, text))
                if i == 0 and HOLD_MARKER in last and not self._hold():
                    return
            self._line(_final_line(model, done_reason, len(chunks), ""))
            self._end()
        except (BrokenPipeError, ConnectionResetError):
            self.owner.disconnected_at = time.monotonic()
            self.owner.client_disconnected.set()

    def _read_body(self, record: list[Any]) -> Any:
        """The request's JSON body, appended to ``record``; ``_UNREADABLE``
        (after answering 400, as Ollama does) when it is not JSON."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_json(400, {"error": "invalid character in request body"})
            return _UNREADABLE
        with self.owner.lock:
            record.append(body)
        return body

    def _show(self) -> None:
        body = self._read_body(self.owner.shows)
        if body is _UNREADABLE:
            return
        if self.owner.show_status is not None:
            self._send_json(self.owner.show_status, {"error": SHOW_ERROR})
            return
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            self._send_json(400, {"error": "model is required"})
            return
        full = name if ":" in name else f"{name}:latest"
        facts = MODEL_FACTS.get(full) or MODEL_FACTS.get(name)
        if facts is None:
            self._send_json(404, {"error": f"model '{name}' not found"})
            return
        # Ollama prints each PARAMETER as "name" padded to 30 columns, then the value.
        parameters = "\n".join(
            f"{key:<30} {value}" for key, values in facts["parameters"].items() for value in values
        )
        self._send_json(
            200,
            {
                "license": "fake license",
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {full}\n',
                "parameters": parameters,
                "template": "{{ .Prompt }}",
                "details": facts["details"],
                "model_info": facts["model_info"],
                "capabilities": facts["capabilities"],
                "modified_at": MODIFIED_AT,
            },
        )

    def _line(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _hold(self) -> bool:
        """Block until release (True) or client disconnect (False)."""
        self.owner.holding.set()
        return self._wait_or_disconnect(HOLD_LIMIT_S, self.owner.release)

    def _embed(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self._send_json(400, {"error": "model is required"})
            return
        if body["model"] not in KNOWN_MODELS:
            model = body["model"]
            self._send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            self._send_json(400, {"error": "input is required"})
            return
        size = body.get("dimensions") or EMBED_SIZE
        self._send_json(
            200,
            {
                "model": body["model"],
                "embeddings": [embedding_of(text, size) for text in inputs],
                "total_duration": 5_000_000,
                "load_duration": 1_000_000,
                "prompt_eval_count": sum(len(text.split()) for text in inputs),
            },
        )


def embedding_of(text: str, size: int = 0) -> list[float]:
    """The fake's embedding of ``text``: unit length, like Ollama's."""
    size = size or EMBED_SIZE
    raw = [float(len(text) % (i + 2) + 1) for i in range(size)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


class FakeOllama(FakeServer):
    """Start with ``with FakeOllama() as fake:``; ``fake.host`` is ``127.0.0.1:<port>``."""

    handler_class = _Handler

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        # Every POST /api/show body, in order.
        self.shows: list[Any] = []
        # When set, /api/show fails with this HTTP status.
        self.show_status: int | None = None


def _tag(name: str) -> dict[str, Any]:
    """One ``GET /api/tags`` entry, as Ollama lists it."""
    facts = MODEL_FACTS[name]
    return {
        "name": name,
        "model": name,
        "modified_at": MODIFIED_AT,
        "size": facts["size"],
        "digest": facts["digest"],
        "details": facts["details"],
    }


def _validate(body: Any) -> str:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages must be an array"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return "each message needs a role"
        if not isinstance(m.get("content", ""), str):
            return "message content must be a string"
        if m["role"] == "tool" and not isinstance(m.get("tool_name"), str):
            return "a tool message needs tool_name"
        for call in m.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                return "each tool call needs function.name"
            if not isinstance(function.get("arguments"), dict):
                return "tool call arguments must be an object"
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools must be an array"
        for t in tools:
            function = t.get("function") if isinstance(t, dict) else None
            if t.get("type") != "function" or not isinstance(function, dict):
                return "each tool needs type function and a function object"
            if not isinstance(function.get("name"), str):
                return "each tool function needs a name"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream must be a boolean"
    if "options" in body and not isinstance(body["options"], dict):
        return "options must be an object"
    if "format" in body and body["format"] != "json" and not isinstance(body["format"], dict):
        return "invalid format"
    return ""


def _chunk_line(model: str, text: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": text},
        "done": False,
    }


def _final_line(model: str, done_reason: str, eval_count: int, content: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": content},
        "done_reason": done_reason,
        "done": True,
        "total_duration": 5_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": PROMPT_EVAL_COUNT,
        "prompt_eval_duration": 1_000_000,
        "eval_count": eval_count,
        "eval_duration": 3_000_000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Ollama /api/chat server for tests")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    args = parser.parse_args()
    FakeOllama(args.port).serve_until_killed()


if __name__ == "__main__":
    main()
