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
  slow_init       like echo, but init takes FAKE_SIDECAR_INIT_DELAY_MS.
  init_not_found  init fails with -32001 (model not found).
  no_health       like hang, and never answers "health".
  fault           like echo, but a complete with stream: true answers with
                  the protocol fault FAKE_SIDECAR_FAULT names (see
                  send_fault); only the first one with
                  FAKE_SIDECAR_FAULT_MARKER (see fault_due).
Every mode answers "pid" with its process id. With
FAKE_SIDECAR_MAX_SEQUENCES=N, init reports capabilities.max_sequences N (as
the batching gguf backend does). With
FAKE_SIDECAR_CANCEL_REPLY=never, $/cancelRequest is recorded but never
answered.

With FAKE_SIDECAR_SPAWN_STDERR_CHILD=1 the sidecar first starts `sleep 300`
that inherits its stderr (as an MCP server does: the sidecar's stderr is its
error log) and writes "stderr child <child pid> of <own pid>" to stderr.
"""

import json
import os
import signal
import subprocess
import sys
import threading

MODE = os.environ.get("FAKE_SIDECAR_MODE", "echo")
FAULT = os.environ.get("FAKE_SIDECAR_FAULT", "")
# With FAKE_SIDECAR_FAULT_MARKER=<path> only the first streamed complete is
# faulty, across processes: the fault creates the file, and a sidecar that
# finds it behaves.
FAULT_MARKER = os.environ.get("FAKE_SIDECAR_FAULT_MARKER", "")


def fault_due():
    if not FAULT_MARKER:
        return True
    try:
        fd = os.open(FAULT_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True
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


def raw(line):
    with out_lock:
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.flush()


def send_fault(rid, params):
    """The protocol fault FAULT for request rid; True if the call got no
    valid end (so the caller must not send one)."""
    done = {"usage": {"input_tokens": 1, "output_tokens": 1}, "finish_reason": "stop",
            "model": "fake"}
    ok = {"content": "ok", "model": "fake", "finish_reason": "stop",
          "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}
    if FAULT == "jsonrpc_number":
        raw(b'{"jsonrpc": 2.0, "id": %d, "result": {}}' % rid)
        return True
    if FAULT == "no_result_no_error":
        raw(b'{"jsonrpc": "2.0", "id": %d}' % rid)
        return True
    if FAULT == "content_number":
        raw(b'{"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":%d,"content":5}}'
            % rid)
        return True
    if FAULT == "non_utf8":
        raw(b'{"jsonrpc":"2.0","method":"stream.chunk","params":{"request_id":%d,'
            b'"content":"\xff\xfe bad"}}' % rid)
        return True
    if FAULT == "usage_huge":
        notify("stream.done", {"request_id": rid, "usage": {"input_tokens": 1e20},
                               "finish_reason": "stop", "model": "fake"})
        return True
    # Faults that name no call: the line is dropped, then the call ends well.
    if FAULT == "id_object":
        raw(b'{"jsonrpc": "2.0", "id": {}, "result": {}}')
    elif FAULT == "params_string":
        raw(b'{"jsonrpc": "2.0", "method": "stream.chunk", "params": "text"}')
    elif FAULT == "unknown_id":
        reply(rid + 100000, ok)
    elif FAULT == "duplicate_done":
        notify("stream.chunk", {"request_id": rid, "content": "once", "done": False})
        notify("stream.done", {"request_id": rid, **done})
        notify("stream.done", {"request_id": rid, **done})
    elif FAULT == "half_line_eof":
        with out_lock:
            sys.stdout.write('{"jsonrpc": "2.0", "id": ')
            sys.stdout.flush()
        os._exit(5)
    reply(rid, ok)
    return True


def handle(msg):
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method == "pid":
        reply(rid, {"pid": os.getpid()})
        return
    if method == "health" and MODE == "no_health":
        return
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
        if MODE == "init_not_found":
            error(rid, -32001, 'model "fake" not found: run `ollama pull fake`')
            return
        if MODE == "slow_init":
            threading.Event().wait(int(os.environ.get("FAKE_SIDECAR_INIT_DELAY_MS", "2000")) / 1000)
        result = {"ready": True, "version": "fake-1", "message": MODE}
        if MODE != "seed":
            result["stream_request_id"] = True
        if "FAKE_SIDECAR_MAX_SEQUENCES" in os.environ:
            result["capabilities"] = {
                "max_sequences": int(os.environ["FAKE_SIDECAR_MAX_SEQUENCES"])
            }
        reply(rid, result)
        return
    if method == "$/cancelRequest":
        cancelled.append(params.get("id"))
        # FAKE_SIDECAR_CANCEL_REPLY=never: an engine that never stops (the
        # cancel is recorded, never answered).
        if os.environ.get("FAKE_SIDECAR_CANCEL_REPLY") != "never":
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
        if MODE in ("hang", "no_health"):
            return
        if MODE == "fault" and params.get("stream") and fault_due():
            send_fault(rid, params)
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


def spawn_stderr_child():
    child = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL)
    sys.stderr.write(f"stderr child {child.pid} of {os.getpid()}\n")
    sys.stderr.flush()


def main():
    if os.environ.get("FAKE_SIDECAR_SPAWN_STDERR_CHILD") == "1":
        spawn_stderr_child()
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
