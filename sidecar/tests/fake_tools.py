"""The deterministic tool-calling "model" both fakes (Ollama, OpenAI) share.

Only when the request offers ``tools``:

* the last user message's markers ``[[call:NAME {json arguments}]]`` (any
  number; the arguments may be left out) are the calls the model makes when
  the last message is that user message;
* when the last messages are tool results, the model answers with text
  quoting them: ``"Tool results: " + " | ".join(contents)``; with the marker
  ``[[loop]]`` in the user message it makes the same calls again instead
  (a model that never stops calling tools).

Without ``tools`` the markers are plain text.
"""

from __future__ import annotations

import json
import re
from typing import Any

CALL_MARKER = re.compile(r"\[\[call:([A-Za-z0-9_.-]+)\s*(\{.*?\})?\]\]")
LOOP_MARKER = "[[loop]]"
ANSWER_PREFIX = "Tool results: "


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def planned_calls(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls the fake model makes for this request (none: it answers text)."""
    messages = body.get("messages") or []
    if not body.get("tools") or not messages:
        return []
    user = _last_user(messages)
    calls = [(name, json.loads(args or "{}")) for name, args in CALL_MARKER.findall(user)]
    role = messages[-1].get("role")
    if role == "user" or (role == "tool" and LOOP_MARKER in user):
        return calls
    return []


def tool_answer(body: dict[str, Any]) -> str | None:
    """The text answer to trailing tool results, or None when the last message is not one."""
    messages = body.get("messages") or []
    if not body.get("tools") or not messages or messages[-1].get("role") != "tool":
        return None
    results: list[str] = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        results.append(str(m.get("content") or ""))
    return ANSWER_PREFIX + " | ".join(reversed(results))
