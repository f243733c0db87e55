"""Wire contract between the llmbridge C++ bridge and this sidecar.

JSON-RPC 2.0, one JSON object per line on stdin/stdout. Methods:

* ``init`` {backend, model, host?, mcp_servers?, options?} -> {ready, version,
  message, stream_request_id: true, capabilities, mcp?}. HTTP backends are
  checked here: reachable (else -32003) and serving the model (else -32001).
  ``options.startup_timeout_s`` (default 30) bounds the wait for a server that
  is still loading, and for each MCP server to connect; ``options.read_timeout_s``
  (default 300) bounds the silence between two stream lines;
  ``options.mcp_strict`` (default false) makes an MCP server that cannot
  connect fail init with -32003; ``options.max_connections`` (default 1024)
  caps an HTTP backend's pool of keep-alive connections (more concurrent
  requests wait for a free one). Other options go to the backend. MCP: see
  ``mcp_client``; the result gains ``mcp: {servers: {name: status}}``.
* ``complete`` {messages, model?, system_prompt?, max_tokens?, temperature?,
  stream?, options?, use_tools?, max_tool_iterations?, tool_timeout_s?} ->
  CompleteResult; with ``stream: true`` it first sends ``stream.chunk``
  notifications (and ``stream.tool_call`` / ``stream.tool_result`` around each
  MCP tool call), then ``stream.done``, each carrying ``request_id``. See
  ``tool_loop`` for the tool-calling loop. ``result_content: false`` with
  ``stream: true`` leaves the streamed text out of the response (the bridge
  sends it: the chunks already carried the text).
  Typed sampling controls (all optional): ``stop`` [str], ``seed``,
  ``top_p``, ``top_k``, ``min_p``, ``presence_penalty``,
  ``frequency_penalty``, ``repeat_penalty``, ``logit_bias`` {"token id":
  bias}; each backend sends them under its own names or refuses one it cannot
  honour (-32602 naming the field and the backend); a typed control wins over
  the same key in ``options``. ``response_format``: ``{"json_object": {}}`` or
  ``{"json_schema": {"schema": {...}, "name"?, "strict"?}}`` (an invalid
  schema is -32602 before the backend is called). The result and
  ``stream.done`` carry ``finish_reason``, normalised to ``stop``,
  ``length``, ``tool_calls``, ``cancelled`` or ``error``, and
  ``raw_finish_reason``, the backend's own word.
* ``embed`` {inputs: [str], model?, dimensions?, normalize?, timeout_s?} ->
  {"embeddings": [[float]], "model", "usage"}: one vector per input, in order.
* ``count_tokens`` {messages, model?, system_prompt?} -> {"input_tokens"}: the
  prompt's tokens with the model's chat template, as ``complete`` would send
  it. A backend that cannot tell (Ollama) answers -32601.
* ``tools`` {} -> {"tools": [{server, name, description, input_schema}],
  "servers": {name: status}}; reconnects servers that are down.
* ``shutdown`` -> {"success": true}: in-flight requests are cancelled (each
  still gets its -32800 reply), backend clients are closed, the process exits 0.
* ``models`` {} -> {"backend", "model": {"name", "details"} | null, "models":
  [{"name", ...the engine's own fields, "details"}]}: ``model`` is the one init
  configured, ``details`` the normalised facts of ``model_details``.
* ``health`` {} -> {"ok", "backend", "model", "message", "http_status"?,
  "mcp"?}; never an error, so a health checker can always read it. ``mcp``
  ({servers: {name: status}}, when MCP servers are configured) does not
  change ``ok``.
* notification ``$/cancelRequest`` {id}: the request gets one -32800 reply.
* notification ``stream.start`` (the Go seed client's form of streaming):
  same params as ``complete``; notifications carry no ``request_id`` and a
  failure ends the stream with ``stream.error`` {code, message, data}.

Parsing here never raises anything but ``BackendError`` so the server can
always answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from .errors import BackendError

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Application codes shared with the Go seed (-32000..-32099 is the implementation range).
BACKEND_ERROR = -32000
MODEL_NOT_FOUND = -32001
STREAM_ERROR = -32002
CONNECTION_ERROR = -32003
# LSP's RequestCancelled: the reply to a request cancelled by $/cancelRequest.
REQUEST_CANCELLED = -32800

JSONRPC_VERSION = "2.0"

# The seed's StartupTimeout; the bridge passes its own in init options.
DEFAULT_STARTUP_TIMEOUT_S = 30.0
# Longest silence between two lines of a backend's stream (CPU prompt
# evaluation can take minutes).
DEFAULT_READ_TIMEOUT_S = 300.0
# An HTTP backend's connection pool: one connection per concurrent stream,
# kept alive between requests.
DEFAULT_MAX_CONNECTIONS = 1024
# The tool-calling loop's defaults (complete's use_tools).
DEFAULT_MAX_TOOL_ITERATIONS = 8
DEFAULT_TOOL_TIMEOUT_S = 30.0

# Request ids the sidecar accepts: JSON numbers (integers) and strings.
RequestId = int | str


def response(request_id: RequestId | None, result: Any) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC_VERSION, "id": request_id, "result": result}


def error_response(request_id: RequestId | None, error: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC_VERSION, "id": request_id, "error": error}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC_VERSION, "method": method, "params": params}


def stream_chunk_line(request_id: RequestId | None, content: str) -> bytes:
    """One ``stream.chunk`` notification, encoded as its wire line (with newline).

    The per-token hot path: the same bytes the transport's generic encoder
    makes of ``notification("stream.chunk", {"request_id": ..., "content": ...,
    "done": False})``, about ten times faster (see BENCHMARKS.md).
    ``request_id`` None (the seed's ``stream.start``) leaves the tag out.
    """
    if request_id is None:
        tag = ""
    elif isinstance(request_id, str):
        tag = f'"request_id":{encode_basestring(request_id)},'
    else:
        tag = f'"request_id":{int(request_id)},'
    return utf8_line(
        '{"jsonrpc":"2.0","method":"stream.chunk","params":{'
        f'{tag}"content":{encode_basestring(content)},"done":false}}}}\n'
    )


def utf8_line(text: str) -> bytes:
    """The UTF-8 bytes of an encoded JSON message, whatever its strings hold.

    A Python string can hold a lone surrogate (JSON's ``"\\ud800"`` escape
    decodes to one), which UTF-8 cannot encode. It is written back as the
    same JSON escape (``backslashreplace`` yields exactly ``\\ud800``, and
    lone surrogates only ever occur inside JSON strings), so the line is
    valid UTF-8 and a request id holding one is echoed unchanged.
    """
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    # Prompt tokens whose KV came from a prefix cache (of input_tokens); None:
    # the backend cannot tell, and the key is left out.
    cached_tokens: int | None = None

    def to_wire(self) -> dict[str, int]:
        wire = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if self.cached_tokens is not None:
            wire["cached_tokens"] = self.cached_tokens
        return wire


@dataclass(frozen=True)
class ToolCall:
    """One tool call a model asked for, in no backend's format.

    ``arguments`` is the parsed object; ``raw_arguments`` the text the backend
    sent when it sent text (OpenAI streams a JSON string), echoed back to it
    unchanged. ``arguments_error`` says why the text was not a JSON object.
    """

    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str | None = None
    arguments_error: str | None = None


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None
    # Only in messages the tool loop adds: an assistant turn's tool calls, and
    # the id of the call a ``role: "tool"`` message answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def to_chat(self) -> dict[str, str]:
        """The OpenAI/Ollama chat shape; ``name`` only when set."""
        out = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class InitParams:
    backend: str
    model: str
    host: str | None = None
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    options: dict[str, Any] = field(default_factory=dict)
    mcp_servers: dict[str, Any] = field(default_factory=dict)
    mcp_strict: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@dataclass(frozen=True)
class Sampling:
    """The typed sampling controls of ``complete``; None / empty: not set."""

    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    def given(self) -> dict[str, Any]:
        """The controls the request set, by their wire names (``stop`` as a list)."""
        out: dict[str, Any] = {}
        for name in SAMPLING_FIELDS:
            value = getattr(self, name)
            if value is None or (isinstance(value, (tuple, dict)) and not value):
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


# The typed sampling controls, in the order they are checked.
SAMPLING_FIELDS = (
    "stop",
    "seed",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
)
MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output: any JSON object, or JSON that fits ``schema``."""

    schema: dict[str, Any] | None = None  # None: any JSON object (json_object)
    name: str = ""
    strict: bool = False


@dataclass(frozen=True)
class CompleteParams:
    messages: tuple[Message, ...]
    model: str = ""
    system_prompt: str = ""
    max_tokens: int = 0
    temperature: float | None = None
    stream: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    use_tools: bool = False
    max_tool_iterations: int = DEFAULT_MAX_TOOL_ITERATIONS
    tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    # False: the response to a streamed request leaves out "content" (the
    # stream carried it; the bridge asks for this to save re-sending it).
    result_content: bool = True
    # The caller's remaining deadline (the bridge sends its gRPC deadline):
    # past it the backend's work is stopped and the request fails.
    timeout_s: float | None = None
    sampling: Sampling = field(default_factory=Sampling)
    response_format: ResponseFormat | None = None

    def chat_messages(self) -> list[Message]:
        """Messages with ``system_prompt`` as a leading system message."""
        return _with_system_prompt(self.system_prompt, self.messages)


@dataclass(frozen=True)
class EmbedParams:
    inputs: tuple[str, ...]
    model: str = ""
    dimensions: int = 0  # 0: the model's own size
    normalize: bool = False
    timeout_s: float | None = None


@dataclass(frozen=True)
class CountTokensParams:
    messages: tuple[Message, ...]
    model: str = ""
    system_prompt: str = ""

    def chat_messages(self) -> list[Message]:
        """As ``CompleteParams.chat_messages``: what the model would be sent."""
        return _with_system_prompt(self.system_prompt, self.messages)


def _with_system_prompt(system_prompt: str, messages: tuple[Message, ...]) -> list[Message]:
    lead = [Message("system", system_prompt)] if system_prompt else []
    return lead + list(messages)


def invalid_params(field: str, why: str) -> BackendError:
    """-32602 naming the offending field, so the caller can fix its request."""
    return BackendError(INVALID_PARAMS, f"invalid params: '{field}' {why}", {"field": field})


def _params_object(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BackendError(INVALID_PARAMS, "invalid params: 'params' must be a JSON object")
    return params


def _opt_str(params: dict[str, Any], key: str, default: str = "", field: str | None = None) -> str:
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise invalid_params(field or key, "must be a string")
    return value


def _opt_object(params: dict[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_params(key, "must be a JSON object")
    return value


def _positive_seconds(value: Any, default: float, field: str) -> float:
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise invalid_params(field, "must be a positive number of seconds")
    return float(value)


def _pop_seconds(options: dict[str, Any], key: str, default: float) -> float:
    return _positive_seconds(options.pop(key, None), default, f"options.{key}")


def _opt_bool(params: dict[str, Any], key: str, field: str | None = None) -> bool:
    value = params.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid_params(field or key, "must be a boolean")
    return value


def parse_init(raw: Any) -> InitParams:
    params = _params_object(raw)
    backend = params.get("backend")
    if not isinstance(backend, str) or not backend:
        raise invalid_params("backend", "is required and must be a non-empty string")
    # The sidecar's own settings leave; the rest is the backend's.
    options = dict(_opt_object(params, "options"))
    startup = _pop_seconds(options, "startup_timeout_s", DEFAULT_STARTUP_TIMEOUT_S)
    read = _pop_seconds(options, "read_timeout_s", DEFAULT_READ_TIMEOUT_S)
    strict = _opt_bool(options, "mcp_strict", "options.mcp_strict")
    options.pop("mcp_strict", None)
    max_connections = options.pop("max_connections", DEFAULT_MAX_CONNECTIONS)
    if (
        isinstance(max_connections, bool)
        or not isinstance(max_connections, int)
        or max_connections < 1
    ):
        raise invalid_params("options.max_connections", "must be a positive integer")
    return InitParams(
        backend=backend,
        model=_opt_str(params, "model"),
        host=_opt_str(params, "host") or None,
        startup_timeout_s=startup,
        read_timeout_s=read,
        options=options,
        mcp_servers=_opt_object(params, "mcp_servers"),
        mcp_strict=strict,
        max_connections=max_connections,
    )


def parse_no_params(raw: Any) -> None:
    """``models`` and ``health`` take no params: absent, null, {} or []."""
    if raw in (None, {}, []):
        return
    if isinstance(raw, dict):
        raise invalid_params(next(iter(raw)), "is not a parameter of this method (it takes none)")
    raise invalid_params("params", "must be absent or an empty object")


def _parse_message(index: int, raw: Any) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise invalid_params(where, "must be an object with 'role' and 'content'")
    role = raw.get("role")
    if not isinstance(role, str) or not role:
        raise invalid_params(f"{where}.role", "is required and must be a non-empty string")
    content = raw.get("content", "")
    if not isinstance(content, str):
        raise invalid_params(f"{where}.content", "must be a string")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid_params(f"{where}.name", "must be a string")
    return Message(role=role, content=content, name=name or None)


def parse_complete(raw: Any) -> CompleteParams:
    params = _params_object(raw)
    messages = _parse_messages(params.get("messages"))

    max_tokens = params.get("max_tokens", 0)
    if max_tokens is None:
        max_tokens = 0
    # bool is an int subclass in Python; true is not a token count.
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise invalid_params("max_tokens", "must be a non-negative integer")

    temperature = params.get("temperature")
    if temperature is not None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise invalid_params("temperature", "must be a non-negative number")
        temperature = float(temperature)

    stream = _opt_bool(params, "stream")

    iterations = params.get("max_tool_iterations")
    if iterations is None:
        iterations = DEFAULT_MAX_TOOL_ITERATIONS
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise invalid_params("max_tool_iterations", "must be a non-negative integer")

    return CompleteParams(
        messages=messages,
        model=_opt_str(params, "model"),
        system_prompt=_opt_str(params, "system_prompt"),
        max_tokens=max_tokens,
        temperature=temperature,
        stream=stream,
        options=_opt_object(params, "options"),
        use_tools=_opt_bool(params, "use_tools"),
        result_content=params.get("result_content") is not False,
        max_tool_iterations=iterations,
        tool_timeout_s=_positive_seconds(
            params.get("tool_timeout_s"), DEFAULT_TOOL_TIMEOUT_S, "tool_timeout_s"
        ),
        timeout_s=_opt_timeout(params),
        sampling=_parse_sampling(params),
        response_format=_parse_response_format(params.get("response_format")),
    )


def _opt_timeout(params: dict[str, Any]) -> float | None:
    if params.get("timeout_s") is None:
        return None
    return _positive_seconds(params["timeout_s"], 0.0, "timeout_s")


def _parse_messages(messages: Any) -> tuple[Message, ...]:
    if not isinstance(messages, list) or not messages:
        raise invalid_params("messages", "is required and must be a non-empty array")
    return tuple(_parse_message(i, m) for i, m in enumerate(messages))


def _opt_number(params: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise invalid_params(key, f"must be a number from {lo:g} to {hi:g}")
    return float(value)


def _opt_int(params: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid_params(key, f"must be an integer from {lo} to {hi}")
    return value


def _parse_stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_STOP_STRINGS
        or not all(isinstance(s, str) and s for s in raw)
    ):
        raise invalid_params(
            "stop", f"must be an array of at most {MAX_STOP_STRINGS} non-empty strings"
        )
    return tuple(raw)


def _parse_logit_bias(raw: Any) -> dict[int, float]:
    if raw is None:
        return {}
    bias: dict[int, float] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            token = int(key) if isinstance(key, str) and key.isdigit() else None
            if (
                token is None
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not -100 <= value <= 100
            ):
                break
            bias[token] = float(value)
        else:
            return bias
    raise invalid_params(
        "logit_bias", 'must map token ids to biases from -100 to 100, e.g. {"42": -100}'
    )


def _parse_sampling(params: dict[str, Any]) -> Sampling:
    # The ranges the bridge checks too: a caller of the sidecar alone gets
    # the same answers.
    return Sampling(
        stop=_parse_stop(params.get("stop")),
        seed=_opt_int(params, "seed", 0, 2**32 - 1),
        top_p=_opt_number(params, "top_p", 0, 1),
        top_k=_opt_int(params, "top_k", 0, 2**31 - 1),
        min_p=_opt_number(params, "min_p", 0, 1),
        presence_penalty=_opt_number(params, "presence_penalty", -2, 2),
        frequency_penalty=_opt_number(params, "frequency_penalty", -2, 2),
        repeat_penalty=_opt_number(params, "repeat_penalty", 0, 100),
        logit_bias=_parse_logit_bias(params.get("logit_bias")),
    )


RESPONSE_FORMAT_SHAPE = 'must be {"json_object": {}} or {"json_schema": {"schema": {...}}}'


def _parse_response_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise invalid_params("response_format", RESPONSE_FORMAT_SHAPE)
    if "json_object" in raw:
        if raw["json_object"] not in (None, {}):
            raise invalid_params("response_format.json_object", "must be an empty object")
        return ResponseFormat()
    spec = raw.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid_params("response_format", RESPONSE_FORMAT_SHAPE)
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise invalid_params("response_format.json_schema.schema", "must be a JSON object")
    check_json_schema(schema)
    return ResponseFormat(
        schema=schema,
        name=_opt_str(spec, "name", "", "response_format.json_schema.name"),
        strict=_opt_bool(spec, "strict", "response_format.json_schema.strict"),
    )


def check_json_schema(schema: dict[str, Any]) -> None:
    """-32602 unless ``schema`` is a valid JSON schema (of the draft it names,
    2020-12 when it names none): checked before any backend sees it."""
    # Imported here: only requests with a schema pay for it.
    import jsonschema

    validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise invalid_params(
            "response_format.json_schema.schema",
            f"is not a valid JSON schema: {e.message} (at {where})",
        ) from None


def parse_embed(raw: Any) -> EmbedParams:
    params = _params_object(raw)
    inputs = params.get("inputs")
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(t, str) and t for t in inputs)
    ):
        raise invalid_params("inputs", "is required: a non-empty array of non-empty strings")
    return EmbedParams(
        inputs=tuple(inputs),
        model=_opt_str(params, "model"),
        dimensions=_opt_int(params, "dimensions", 0, 2**31 - 1) or 0,
        normalize=_opt_bool(params, "normalize"),
        timeout_s=_opt_timeout(params),
    )


def parse_count_tokens(raw: Any) -> CountTokensParams:
    params = _params_object(raw)
    return CountTokensParams(
        messages=_parse_messages(params.get("messages")),
        model=_opt_str(params, "model"),
        system_prompt=_opt_str(params, "system_prompt"),
    )
