"""JSON on the hot path: orjson, with the standard library's results.

Every message the sidecar reads or writes, every request body it sends to a
backend and every event it parses from one goes through ``loads`` and
``dumps``. orjson does them several times faster (see BENCHMARKS.md); where
it refuses something the standard library accepts, the standard library
does the work, so results never differ from ``json``'s:

* ``loads``: orjson rejects NaN/Infinity literals, lone surrogate escapes
  (``"\\ud800"``), non-UTF-8 encodings and nesting deeper than 1,024, and it
  reads integers outside [-2**63, 2**64) as floats; so text with a run of 19
  digits (-2**63 - 1 has 19) goes to ``json.loads`` at once, and so does what orjson
  rejects (``json.loads`` raises ``ValueError`` or ``RecursionError`` for
  what is really not JSON).
* ``dumps`` (compact, UTF-8, non-ASCII as is): orjson rejects strings with
  lone surrogates, non-string keys and integers past 64 bits; the standard
  encoder then writes them, lone surrogates as their JSON escape
  (``protocol.utf8_line``). One difference remains: a NaN or infinite float
  is written as ``null`` (``json`` writes ``NaN``, which is not JSON).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .protocol import utf8_line

# One encoder: json.dumps with non-default arguments builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# A number orjson may read as a float instead of an exact integer.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_STR = re.compile(r"[0-9]{19}")


def loads(data: bytes | str) -> Any:
    """Parse one JSON text; ``ValueError`` (or ``RecursionError``) when it is not JSON."""
    if isinstance(data, bytes):
        exact_ints_needed = _LONG_DIGITS.search(data) is not None
    else:
        exact_ints_needed = _LONG_DIGITS_STR.search(data) is not None
    if not exact_ints_needed:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def loads_event(data: bytes) -> Any:
    """``loads`` for a backend's stream events, without the long-integer check.

    The check (a regex scan, about 2 us for a 200-byte event: more than
    orjson's parse) keeps integers past 64 bits exact; an event's numbers are
    token counts and indexes, where such an integer is garbage either way.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return utf8_line(_ENCODER.encode(obj))
