#!/usr/bin/env python3
"""A FAST fake OpenAI-compatible server for benchmarks (not for tests).

It speaks the same wire format as sidecar/tests/fake_openai.py (vLLM /
llama.cpp server: ``GET /v1/models``, ``GET /health``, ``POST
/v1/chat/completions`` streaming SSE over chunked HTTP/1.1 with a role chunk,
content chunks, a finish chunk, a usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``), but answers at
once and costs as little CPU as possible, so that what a benchmark measures is
the client's and the relays' cost, not the fake's:

* one asyncio ``Protocol``; HTTP/1.1 keep-alive and pipelining; no threads;
* ``GET /stats`` answers ``{"connections": N}``, the TCP connections accepted
  so far (a benchmark's check that its client reuses connections);
* the answer has ``max_tokens`` content chunks of ``"tok "`` (1 when absent:
  a one-chunk answer), finish reason ``length``; the whole response is built
  once per (model, chunks, usage, stream) and cached as bytes.

Run: ``python bench/fast_openai.py --port 0`` prints ``PORT=<n>`` on its first
stdout line, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

MODELS = ("fake-model", "tiny")
CHUNK_TEXT = "tok "
CREATED = 1_700_000_000
PROMPT_TOKENS = 12
MAX_HEADER_BYTES = 64 * 1024


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _plain(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fast",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _sse_response(model: str, chunks: int, include_usage: bool) -> bytes:
    events = [_chunk(model, {"role": "assistant", "content": ""}, None)]
    events += [_chunk(model, {"content": CHUNK_TEXT}, None) for _ in range(chunks)]
    events.append(_chunk(model, {}, "length"))
    if include_usage:
        usage = _chunk(model, {}, None)
        usage["choices"] = []
        usage["usage"] = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": chunks,
            "total_tokens": PROMPT_TOKENS + chunks,
        }
        events.append(usage)
    out = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    ]
    payloads = [b"data: " + _json(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    for p in payloads:
        out.append(b"%x\r\n%s\r\n" % (len(p), p))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def _completion_response(model: str, chunks: int) -> bytes:
    return _plain(
        "200 OK",
        _json(
            {
                "id": "chatcmpl-fast",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": CHUNK_TEXT * chunks},
                        "logprobs": None,
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": chunks,
                    "total_tokens": PROMPT_TOKENS + chunks,
                },
            }
        ),
    )


MODELS_RESPONSE = _plain(
    "200 OK",
    _json(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in MODELS
            ],
        }
    ),
)
HEALTH_RESPONSE = _plain("200 OK", b'{"status":"ok"}')
NOT_FOUND = _plain("404 Not Found", b'{"detail":"Not Found"}')
_cache: dict[tuple[str, int, bool, bool], bytes] = {}
connections_accepted = 0


def chat_response(body: bytes) -> bytes:
    try:
        req = json.loads(body)
        model = req["model"]
        stream = req.get("stream") is True
        chunks = int(req.get("max_tokens") or 1)
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return _plain("400 Bad Request", b'{"error":{"message":"bad request","code":400}}')
    if model not in MODELS:
        msg = _json({"error": {"message": f"The model `{model}` does not exist.", "code": 404}})
        return _plain("404 Not Found", msg)
    key = (model, chunks, usage, stream)
    cached = _cache.get(key)
    if cached is None:
        cached = (
            _sse_response(model, chunks, usage) if stream else _completion_response(model, chunks)
        )
        _cache[key] = cached
    return cached


class HttpProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1: parses each request in the buffer, answers in order."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        global connections_accepted
        self.transport = transport
        connections_accepted += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._close()
                break
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = [*lines[0].split(" "), "", ""][:3]
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                break
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            out.append(self._answer(method, path, body))
            if close:
                assert self.transport is not None
                self.transport.write(b"".join(out))
                self._close()
                return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _answer(self, method: str, path: str, body: bytes) -> bytes:
        if method == "POST" and path == "/v1/chat/completions":
            return chat_response(body)
        if method == "GET" and path == "/v1/models":
            return MODELS_RESPONSE
        if method == "GET" and path == "/health":
            return HEALTH_RESPONSE
        if method == "GET" and path == "/stats":
            return _plain("200 OK", _json({"connections": connections_accepted}))
        return NOT_FOUND

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, "127.0.0.1", port, backlog=4096)
    print(f"PORT={server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
