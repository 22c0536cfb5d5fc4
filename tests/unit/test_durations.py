"""One duration grammar and one formatter (issue 11, item 4): policies wrote ``10min``, rollouts
``10m``; now every parser reads both (and ``1h30m``), and one formatter writes them back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.policy import units
from hub.rollout import spec


@pytest.mark.parametrize(("text", "seconds"), [
    ("10min", 600), ("10m", 600), ("1h30m", 5400), ("1h 30min", 5400), ("90s", 90), ("500ms", 0.5),
    ("1.5s", 1.5), ("250us", 250e-6), ("2h", 7200), ("1d", 86400), ("1.5h", 5400),
])
def test_policies_and_rollouts_read_the_same_grammar(text: str, seconds: float) -> None:
    assert units.parse_duration(text) == pytest.approx(seconds, rel=1e-12)
    assert spec.parse_duration(text) == pytest.approx(seconds, rel=1e-12)


def test_one_formatter_and_old_spellings_are_aliases() -> None:
    assert spec.format_duration is units.format_duration
    assert [units.format_duration(s) for s in (600, 5400, 7200, 86400, 90, 0.5, 0.25, 3e-6)] == [
        "10m", "90m", "2h", "1d", "90s", "500ms", "250ms", "3us"]
    a = spec.RolloutSpec.model_validate({"service": "s", "toVersion": "v2", "minSuccessTime": "10min"})
    b = spec.RolloutSpec.model_validate({"service": "s", "toVersion": "v2", "minSuccessTime": "10m"})
    assert a.min_success_time == b.min_success_time == 600


@pytest.mark.parametrize("bad", ["10", "m", "10mm", "1h30", "-5m", "10 minutes", "", "1e999s"])
def test_both_refuse_what_is_not_a_duration(bad: str) -> None:
    for parse in (units.parse_duration, spec.parse_duration):
        with pytest.raises(ValueError):
            parse(bad)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e8, allow_nan=False, allow_infinity=False))
def test_what_the_formatter_writes_parses_back_exactly(x: float) -> None:
    text = units.format_duration(x)
    assert units.parse_duration(text) == x
    assert spec.parse_duration(text) == x
