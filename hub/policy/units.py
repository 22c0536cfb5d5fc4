"""Quantities with units, parsed strictly from strings.

The scheme, used by every resource: **a physical quantity is a string that
carries its unit** (``"500ms"``, ``"40rps"``, ``"24GiB"``, ``"$2.99/h"``,
``"72W"``, ``"344gCO2e/kWh"``, ``"8000tok/s"``). Bare numbers are rejected
for these fields because they are ambiguous (is ``500`` milliseconds or
seconds?). Plain counts (GPUs, replicas, tokens per request, priorities)
are integers or numbers without a unit and say so in their field name.

Parsed values are held as floats in one canonical unit per dimension:
seconds, bytes, requests/s, USD/hour, watts, gCO2e/kWh, tokens/s. The
serialisers below write them back in a canonical unit string, so a bundle's
canonical JSON loads again through the same parsers.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Callable

from pydantic import BeforeValidator, PlainSerializer

_NUM = r"(?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _make_parser(
    kind: str, units: dict[str, float], example: str, prefix: str = "", suffix_re: str | None = None
) -> Callable[[object], float]:
    """Build a strict parser for ``<prefix><number><unit>`` strings."""
    alternatives = "|".join(re.escape(u) for u in sorted(units, key=len, reverse=True))
    pattern = re.compile(
        rf"^\s*{re.escape(prefix)}{_NUM}\s*(?P<unit>{alternatives})\s*$"
    )
    allowed = ", ".join(units)

    def parse(value: object) -> float:
        if isinstance(value, bool) or isinstance(value, (int, float)):
            raise ValueError(
                f"expected a {kind} with its unit, e.g. '{example}' "
                f"(bare number {value!r} is ambiguous; units: {allowed})"
            )
        if not isinstance(value, str):
            raise ValueError(f"expected a {kind} string such as '{example}', got {type(value).__name__}")
        match = pattern.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a {kind}; write it like '{example}' (units: {allowed})")
        number = _number(match.group("num"))
        return number * units[match.group("unit")]

    parse.__name__ = f"parse_{kind.replace(' ', '_')}"
    return parse


DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
"""The one duration grammar (policies, rollouts, CLI flags): one or more ``<number><unit>`` parts,
``500ms``, ``1.5s``, ``10m``, ``2h``, ``1h30m``, ``1d``. ``min`` is kept as an alias of ``m``
(policies used to write ``10min``, rollouts ``10m``: both mean ten minutes everywhere)."""
MEMORY_UNITS = {
    "B": 1.0,
    "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
    "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30, "TiB": 2.0**40,
}
RATE_UNITS = {"rps": 1.0, "req/s": 1.0, "rpm": 1.0 / 60.0}
POWER_UNITS = {"W": 1.0, "kW": 1e3}
INTENSITY_UNITS = {"gCO2e/kWh": 1.0}
TOKEN_RATE_UNITS = {"tok/s": 1.0}
PRICE_UNITS = {"/h": 1.0, "/hour": 1.0}

_DURATION_UNIT = "|".join(sorted(DURATION_UNITS, key=len, reverse=True))
_DURATION_PART = re.compile(rf"(?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>{_DURATION_UNIT})\s*")
_DURATION_LIST = ", ".join(u for u in DURATION_UNITS if u != "min") + " (min = m)"


def duration_seconds(text: str, example: str = "500ms") -> float:
    """Seconds of a duration string in the one grammar (:data:`DURATION_UNITS`); >= 0.

    Raises ValueError naming ``example`` for anything else. Callers that need a positive
    duration check that themselves; callers that accept non-strings word their own message."""
    body = text.strip()
    pos, seconds = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            break
        seconds += _number(match.group("num")) * DURATION_UNITS[match.group("unit")]
        pos = match.end()
    if not body or pos != len(body) or not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a duration; write it like '{example}', '2h' or '1h30m' "
                         f"(units: {_DURATION_LIST})")
    return seconds


_parse_duration_quantity = _make_parser("duration", DURATION_UNITS, "500ms")


def parse_duration(value: object) -> float:
    """A policy duration (``500ms``, ``2min``, ``1h30m``) -> seconds; bare numbers are refused."""
    if not isinstance(value, str):
        return _parse_duration_quantity(value)  # raises its bare-number / wrong-type message
    return duration_seconds(value, "500ms")
parse_memory = _make_parser("memory size", MEMORY_UNITS, "24GiB")
parse_rate = _make_parser("request rate", RATE_UNITS, "40rps")
parse_power = _make_parser("power", POWER_UNITS, "72W")
parse_intensity = _make_parser("carbon intensity", INTENSITY_UNITS, "344gCO2e/kWh")
parse_token_rate = _make_parser("token rate", TOKEN_RATE_UNITS, "8000tok/s")
parse_price = _make_parser("price per hour", PRICE_UNITS, "$2.99/h", prefix="$")


def _g(value: float) -> str:
    """Shortest exact-enough decimal for a float (12 significant digits)."""
    return f"{value:.12g}"


def format_duration(seconds: float) -> str:
    """Seconds -> the one duration grammar: the largest unit that holds it as a whole number
    (``2h``, ``10m``, ``90s``, ``250ms``), else milliseconds to 12 significant digits, else the exact
    seconds; whatever it writes parses back to the same float (policies' canonical JSON relies on it)."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms", "us"):
        if unit == "us" and seconds >= 1e-3:
            break  # 123.456ms reads better than 123456us
        n = seconds / DURATION_UNITS[unit]
        if n >= 1 and float(n).is_integer() and int(n) * DURATION_UNITS[unit] == seconds:
            return f"{int(n)}{unit}"
    text = f"{_g(seconds * 1000.0)}ms"
    if duration_seconds(text) == seconds:
        return text
    return f"{float(seconds)!r}s"


def format_memory(nbytes: float) -> str:
    for unit in ("TiB", "TB", "GiB", "GB", "MiB", "MB", "KiB", "KB"):
        size = MEMORY_UNITS[unit]
        if nbytes >= size and float(nbytes / size).is_integer():
            return f"{int(nbytes / size)}{unit}"
    return f"{_g(nbytes)}B"


def format_rate(rps: float) -> str:
    return f"{_g(rps)}rps"


def format_power(watts: float) -> str:
    return f"{_g(watts)}W"


def format_intensity(g_per_kwh: float) -> str:
    return f"{_g(g_per_kwh)}gCO2e/kWh"


def format_token_rate(tps: float) -> str:
    return f"{_g(tps)}tok/s"


def format_price(usd_per_hour: float) -> str:
    return f"${_g(usd_per_hour)}/h"


def _positive(parse: Callable[[object], float], allow_zero: bool = False) -> Callable[[object], float]:
    def check(value: object) -> float:
        number = parse(value)
        if number < 0 or (number == 0 and not allow_zero):
            raise ValueError(f"{value!r} must be {'>= 0' if allow_zero else '> 0'}")
        return number

    return check


def _quantity(parse: Callable[[object], float], fmt: Callable[[float], str], allow_zero: bool = False):
    return Annotated[
        float,
        BeforeValidator(_positive(parse, allow_zero)),
        PlainSerializer(fmt, return_type=str, when_used="always"),
    ]


Duration = _quantity(parse_duration, format_duration)
"""Seconds, written like ``500ms``, ``1.5s``, ``2m`` (or ``2min``), ``1h30m``."""
LatencyDuration = _quantity(parse_duration, format_duration, allow_zero=True)
"""Seconds (zero allowed), written like ``0ms``, ``12ms``."""
Memory = _quantity(parse_memory, format_memory)
"""Bytes, written like ``24GiB``, ``80GB``, ``512MiB``."""
Rate = _quantity(parse_rate, format_rate)
"""Requests per second, written like ``40rps``, ``40req/s``, ``600rpm``."""
Power = _quantity(parse_power, format_power)
"""Watts, written like ``72W`` or ``0.35kW``."""
CarbonIntensity = _quantity(parse_intensity, format_intensity, allow_zero=True)
"""Grams CO2e per kWh, written like ``344gCO2e/kWh``."""
TokenRate = _quantity(parse_token_rate, format_token_rate)
"""Tokens per second, written like ``8000tok/s``."""
PricePerHour = _quantity(parse_price, format_price, allow_zero=True)
"""US dollars per hour, written like ``$2.99/h``."""
