"""StopFilter: streamed text cut before the first stop string, whatever the pieces."""

from __future__ import annotations

import pytest

from llmbridge_sidecar.backends.base import StopFilter


def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    f = StopFilter(stops)
    out = [f.feed(p) for p in pieces]
    out.append(f.flush() if not f.stopped else "")
    return out, f.stopped


@pytest.mark.parametrize(
    ("pieces", "stops", "text", "stopped"),
    [
        (["Hello", " wor", "ld"], (), "Hello world", False),
        (["Hello", " wor", "ld"], ("wor",), "Hello ", True),
        (["Hel", "lo ", "END", " more"], ("END",), "Hello ", True),
        (["ab", "cE", "N", "Dxyz"], ("END",), "abc", True),
        (["a", "E", "N", "x"], ("END",), "aENx", False),  # a false start goes out
        (["one two", " three"], ("two", "one"), "", True),  # the earliest stop wins
        (["x", "E"], ("END",), "xE", False),  # the held tail goes out at the end
    ],
)
def test_cuts_before_the_first_stop(
    pieces: list[str], stops: tuple[str, ...], text: str, stopped: bool
) -> None:
    out, did_stop = run(pieces, stops)
    assert "".join(out) == text
    assert did_stop is stopped


def test_nothing_goes_out_after_a_stop() -> None:
    f = StopFilter(("END",))
    assert f.feed("aEND") == "a"
    assert f.feed("more") == ""
    assert f.stopped
