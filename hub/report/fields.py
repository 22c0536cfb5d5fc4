"""Reading the fields of a report payload (a JSON object that crossed the link as a Struct).

One reader for every report kind the hub decodes (telemetry, drift, demand): each error names the path
of the field and what was expected, and the whole payload is refused (`PayloadError`), never half-read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime

MAX_TEXT = 253  # a DNS name's length: site, node, model, service and region names all fit


class PayloadError(ValueError):
    """A report payload the hub does not accept; the message names the field and what was expected."""


def text(obj: Mapping, key: str, where: str, *, empty: bool = False) -> str:
    """A string of at most 253 characters; non-blank unless ``empty``."""
    value = obj.get(key)
    if not isinstance(value, str) or (not empty and not value.strip()):
        got = "missing" if key not in obj else f"got {type(value).__name__} {value!r}"[:80]
        raise PayloadError(f"{where}{key}: expected a{'' if empty else ' non-empty'} string ({got})")
    if len(value) > MAX_TEXT:
        raise PayloadError(f"{where}{key}: longer than {MAX_TEXT} characters")
    return value


def window(payload: object, schema: int | str, kind: str) -> tuple[Mapping, datetime, datetime, list]:
    """The envelope every windowed report shares: (payload, windowStart, windowEnd, groups), checked.
    ``schema`` is the one this hub reads; ``kind`` names the report in the error."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload: expected a JSON object, got {type(payload).__name__}")
    got = payload.get("schema")
    if isinstance(got, bool) or got != schema:
        raise PayloadError(f"schema: {got!r} is not a {kind} schema this hub reads (reads {schema}); "
                           "upgrade the hub or pin the agent"[:200])
    start, end = time(payload, "windowStart"), time(payload, "windowEnd")
    if end < start:
        raise PayloadError(f"windowEnd: {end.isoformat()} is before windowStart {start.isoformat()}")
    groups = payload.get("groups")
    if not isinstance(groups, list):
        raise PayloadError(f"groups: expected a list, got {type(groups).__name__}")
    return payload, start, end, groups


def time(obj: Mapping, key: str) -> datetime:
    """An ISO 8601 time with a zone, as UTC."""
    raw = text(obj, key, "")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise PayloadError(f"{key}: {raw[:40]!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise PayloadError(f"{key}: {raw[:40]!r} has no time zone; send UTC, e.g. '2026-11-27T21:00:00Z'")
    return value.astimezone(UTC)


def count(obj: Mapping, key: str, where: str) -> int:
    """An integer >= 0 (0 when absent)."""
    value = obj.get(key, 0)
    # Reports cross the link as google.protobuf.Struct, whose numbers are all
    # doubles: 50 arrives as 50.0. An integral float is the integer it was.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError(f"{where}{key}: expected an integer >= 0, got {value!r}"[:160])
    return value


def amount(obj: Mapping, key: str, where: str) -> float:
    """A finite number >= 0 (0.0 when absent)."""
    value = obj.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PayloadError(f"{where}{key}: expected a finite number >= 0, got {value!r}"[:160])
    return float(value)
