"""StopMatcher (pure): whatever way the text arrives in pieces, what it lets out is the text
before the earliest stop string, and nothing that could still start one is let out early."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.runtime.request import StopMatcher

ALPHABET = "abc\n:"


def expected(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@given(pieces=st.lists(st.text(ALPHABET, max_size=4), max_size=12),
       stops=st.lists(st.text(ALPHABET, min_size=1, max_size=4), min_size=1, max_size=4))
def test_output_is_the_text_before_the_earliest_stop(pieces: list[str], stops: list[str]) -> None:
    m = StopMatcher(tuple(stops))
    out = ""
    for p in pieces:
        out += m.feed(p)
        seen = "".join(pieces)[: len(out)]
        assert out == seen  # only a prefix of the text, never anything else
    stopped = m.stopped
    if not stopped:
        out += m.flush()
    assert (out, stopped) == expected("".join(pieces), tuple(stops))


def test_holds_back_a_possible_start_until_decided() -> None:
    m = StopMatcher(("Observation:",))
    assert m.feed("Thought: look it up\nObs") == "Thought: look it up\n"
    assert m.feed("erv") == ""
    assert m.feed("ation: 42") == "" and m.stopped
    m = StopMatcher(("Observation:",))
    assert m.feed("Obs") == "" and m.feed("cure") == "Obscure" and not m.stopped
