#!/usr/bin/env python3
"""A purpose-built sidecar for the bridge's real-process tests (stdlib only).

FAKE_SIDECAR_MODE picks the behaviour:
  echo            tagged streams (request_id): each complete streams the words
                  of the last message back, one chunk per word, then
                  stream.done and the response. Tells init stream_request_id.
  seed            written only from the seed's text: stream notifications
                  carry no request_id, the init result does not mention it,
                  and a second complete arriving while a stream runs is a
                  protocol violation (the chunks would be misrouted): the
                  sidecar then exits with code 7.
  hang            init works; complete never answers; $/cancelRequest gets
                  the -32800 reply. Method "stats" returns the cancelled ids.
  crash_mid_stream   one chunk, then the process exits with code 3 after
                  writing "fatal: simulated crash" to stderr.
  garbage         prints non-JSON lines and a bad JSON-RPC object on stdout
                  before every reply; otherwise like echo.
  huge_line       a complete whose last message is "huge" gets a response
                  line of FAKE_SIDECAR_HUGE_BYTES bytes; others like echo.
  init_hang       never answers init.
  init_exit       writes "cannot load model" to stderr and exits 4 on init.
  no_read         answers init, then never reads stdin again.
  stderr_flood    writes FAKE_SIDECAR_FLOOD_BYTES to stderr before each reply.
  ignore_stop     like echo, but ignores shutdown, stdin EOF and SIGTERM.
"""

import json
import os
import signal
import sys
import threading

MODE = os.environ.get("FAKE_SIDECAR_MODE", "echo")
out_lock = threading.Lock()
cancelled = []
active_stream = [False]


def send(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def reply(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def error(rid, code, message):
    send({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})


def notify(method, params):
    send({"jsonrpc": "2.0", "method": method, "params": params})


def last_text(params):
    messages = params.get("messages") or [{}]
    return messages[-1].get("content", "")


def stream_words(rid, params, tagged, before_done=None):
    words = last_text(params).split()
    extra = {"request_id": rid} if tagged else {}
    for w in words:
        notify("stream.chunk", {**extra, "content": w + " ", "done": False})
    if before_done:
        before_done()
    usage = {"input_tokens": len(words), "output_tokens": len(words),
             "total_tokens": 2 * len(words)}
    notify("stream.done", {**extra, "usage": usage, "finish_reason": "stop", "model": "fake"})
    return {"content": " ".join(words) + " ", "model": "fake", "finish_reason": "stop",
            "usage": usage}


def handle(msg):
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if MODE == "stderr_flood":
        sys.stderr.write("x" * int(os.environ.get("FAKE_SIDECAR_FLOOD_BYTES", "1000000")) + "\n")
        sys.stderr.flush()
    if MODE == "garbage":
        with out_lock:
            sys.stdout.write("this is not json\n{\"broken\": \n[1,2,3]\n")
            sys.stdout.flush()
        send({"jsonrpc": "1.0", "surprise": True})
    if method == "init":
        if MODE == "init_hang":
            return
        if MODE == "init_exit":
            sys.stderr.write("cannot load model\n")
            sys.stderr.flush()
            os._exit(4)
        result = {"ready": True, "version": "fake-1", "message": MODE}
        if MODE != "seed":
            result["stream_request_id"] = True
        reply(rid, result)
        return
    if method == "$/cancelRequest":
        cancelled.append(params.get("id"))
        error(params.get("id"), -32800, "request cancelled")
        return
    if method == "stats":
        reply(rid, {"cancelled": cancelled})
        return
    if method == "shutdown":
        if MODE == "ignore_stop":
            return
        reply(rid, {"success": True})
        os._exit(0)
    if method == "complete":
        if MODE == "hang":
            return
        if MODE == "crash_mid_stream":
            notify("stream.chunk", {"request_id": rid, "content": "partial", "done": False})
            sys.stderr.write("fatal: simulated crash\n")
            sys.stderr.flush()
            os._exit(3)
        if MODE == "huge_line" and last_text(params) == "huge":
            size = int(os.environ.get("FAKE_SIDECAR_HUGE_BYTES", "2000000"))
            reply(rid, {"content": "h" * size})
            return
        if MODE == "seed":
            if active_stream[0]:
                sys.stderr.write("protocol violation: overlapping streams\n")
                os._exit(7)
            active_stream[0] = True
            # Give an overlapping request the chance to arrive, if the
            # bridge sent one.
            threading.Event().wait(0.05)
            # stream.done ends the stream for the client: from then on a
            # new one may start.
            def finished():
                active_stream[0] = False

            result = stream_words(rid, params, tagged=False, before_done=finished)
            reply(rid, result)
            return
        if params.get("stream"):
            reply(rid, stream_words(rid, params, tagged=True))
        else:
            text = last_text(params)
            reply(rid, {"content": text, "model": "fake", "finish_reason": "stop",
                        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}})
        return
    if rid is not None:
        error(rid, -32601, f"method not found: {method}")


def main():
    if MODE == "ignore_stop":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if MODE == "no_read" and msg.get("method") == "init":
            handle(msg)
            threading.Event().wait()  # never read stdin again
        # One thread per message, like a real sidecar's task per request:
        # overlapping streams really overlap, and cancels arrive mid-call.
        threading.Thread(target=handle, args=(msg,), daemon=True).start()
    if MODE == "ignore_stop":
        threading.Event().wait()


if __name__ == "__main__":
    main()
