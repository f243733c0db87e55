"""What the protocol-faithful HTTP fakes (fake_ollama.py, fake_openai.py) share:
a real HTTP server on 127.0.0.1 in a thread, the events tests wait on, and the
handler helpers (JSON replies, waiting for a release or a client hang-up)."""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


class FakeHandler(BaseHTTPRequestHandler):
    owner: Any  # the FakeServer; subclasses narrow the type
    protocol_version = "HTTP/1.1"
    log_name: ClassVar[str] = "fake"
    json_content_type: ClassVar[str] = "application/json"

    def setup(self) -> None:
        super().setup()
        with self.owner.lock:
            self.owner.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_name}: " + (format % args) + "\n")

    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", self.json_content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _disconnected(self) -> None:
        self.owner.disconnected_at = time.monotonic()
        self.owner.client_disconnected.set()
        self.close_connection = True

    def _wait_or_disconnect(self, limit_s: float, until: threading.Event | None = None) -> bool:
        """Wait up to ``limit_s`` (or until ``until`` is set): True, or False
        as soon as the client closes the connection."""
        sock: socket.socket = self.connection
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and not (until is not None and until.is_set()):
            # A readable socket that yields no bytes is a closed connection
            # (the client has nothing more to send us).
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable and sock.recv(1, socket.MSG_PEEK) == b"":
                self._disconnected()
                return False
        return True


class FakeServer:
    """Start with ``with Fake() as fake:``; ``fake.host`` is ``127.0.0.1:<port>``.
    Subclasses set ``handler_class``."""

    handler_class: ClassVar[type[FakeHandler]]

    def __init__(self, port: int = 0) -> None:
        # Every request body the fake received, in order.
        self.requests: list[dict[str, Any]] = []
        # TCP connections accepted (a client that reuses connections opens few).
        self.connections = 0
        self.lock = threading.Lock()
        # Set when a [[hold]] stream has sent its first chunk.
        self.holding = threading.Event()
        # Set (and disconnected_at stamped) when a held stream's client hung up.
        self.client_disconnected = threading.Event()
        self.disconnected_at = 0.0
        # Set by a test to let held streams finish normally.
        self.release = threading.Event()
        handler = type("Handler", (self.handler_class,), {"owner": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def serve_until_killed(self) -> None:
        """The CLI: ``PORT=<n>`` as the first stdout line, then serve."""
        print(f"PORT={self.port}", flush=True)
        try:
            self.server.serve_forever()
        except KeyboardInterrupt:
            pass
