from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.policy import units


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (units.parse_duration, "500ms", 0.5),
        (units.parse_duration, "1.5s", 1.5),
        (units.parse_duration, "2min", 120.0),
        (units.parse_memory, "24GiB", 24 * 2**30),
        (units.parse_memory, "80GB", 80e9),
        (units.parse_rate, "40rps", 40.0),
        (units.parse_rate, "40req/s", 40.0),
        (units.parse_rate, "600rpm", 10.0),
        (units.parse_price, "$2.99/h", 2.99),
        (units.parse_power, "0.35kW", 350.0),
        (units.parse_intensity, "344gCO2e/kWh", 344.0),
        (units.parse_token_rate, "8000tok/s", 8000.0),
    ],
)
def test_parse(parse, text: str, value: float) -> None:
    assert parse(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", [500, 1.5, True, None, "500", "500 parsecs", "ms", "-5ms", "1e999ms", ["1s"]])
def test_strict(bad: object) -> None:
    with pytest.raises(ValueError):
        units.parse_duration(bad)


def test_bare_number_message_names_the_unit() -> None:
    with pytest.raises(ValueError, match=r"expected a duration with its unit, e.g. '500ms' \(bare number 500"):
        units.parse_duration(500)


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e7, allow_nan=False))
def test_format_parse_round_trip(x: float) -> None:
    for parse, fmt in [
        (units.parse_duration, units.format_duration),
        (units.parse_memory, units.format_memory),
        (units.parse_rate, units.format_rate),
        (units.parse_price, units.format_price),
        (units.parse_power, units.format_power),
        (units.parse_token_rate, units.format_token_rate),
    ]:
        assert parse(fmt(x)) == pytest.approx(x, rel=1e-9)
