"""A minimal MCP server that speaks only protocol version 2024-11-05, over stdio.

Written without the SDK on purpose, as an old server would be: it does not
know ``server/discover`` (method not found), answers ``initialize`` with
``"protocolVersion": "2024-11-05"`` whatever the client asks for, and has one
tool, ``shout(text)``, which returns the text in capitals. The sidecar's
client must fall back to the handshake and accept the older version.
"""

from __future__ import annotations

import json
import sys
from typing import Any

VERSION = "2024-11-05"
TOOL = {
    "name": "shout",
    "description": "Return the text in capitals.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
}


def answer(msg: dict[str, Any]) -> dict[str, Any] | None:
    method = msg.get("method")
    if "id" not in msg:
        return None  # notifications (initialized, cancelled) need no answer
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": msg["id"]}
    if method == "initialize":
        reply["result"] = {
            "protocolVersion": VERSION,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "legacy-test", "version": "0.1"},
        }
    elif method == "tools/list":
        reply["result"] = {"tools": [TOOL]}
    elif method == "tools/call":
        text = str(msg.get("params", {}).get("arguments", {}).get("text", ""))
        reply["result"] = {"content": [{"type": "text", "text": text.upper()}], "isError": False}
    elif method == "ping":
        reply["result"] = {}
    else:
        reply["error"] = {"code": -32601, "message": f"Method not found: {method}"}
    return reply


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = answer(json.loads(line))
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
