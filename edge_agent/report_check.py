"""The bounds a report must keep for the hub to store it, checked before sending.

The hub refuses a batch holding a report outside them (INVALID_ARGUMENT, the
whole batch unstored, hub/convert.py `report_from_proto` has the same
bounds). Sent anyway, such a report would end the stream at every reconnect,
forever, with every report queued behind it; so the link sets it aside in
the outbox's dead-letter table instead (edge_agent/state.py).
"""

from __future__ import annotations

import math

from edge_agent.state import PendingReport

MAX_SEQ = 2**63 - 1                  # the hub stores seqs as signed 64-bit integers
KIND_MAX = 64                        # characters
MIN_CREATED_AT = -62_135_596_800.0   # 0001-01-01T00:00:00Z, seconds since 1970 (protobuf Timestamp's range)
MAX_CREATED_AT = 253_402_300_799.0   # 9999-12-31T23:59:59Z


def report_problem(r: PendingReport) -> str | None:
    """Why the hub would refuse this report, or None if it may be sent."""
    if not 0 < r.seq <= MAX_SEQ:
        return f"report seq {r.seq} is out of range: sequence numbers must be 1..2^63-1"
    if not 0 < len(r.kind) <= KIND_MAX:
        return f"report seq {r.seq}: kind must be 1..{KIND_MAX} characters, got {len(r.kind)}"
    if not (math.isfinite(r.created_at) and MIN_CREATED_AT <= r.created_at <= MAX_CREATED_AT):
        return f"report seq {r.seq}: created_at {r.created_at!r} s since 1970 is outside the years 1..9999"
    if _has_non_finite(r.payload):
        return f"report seq {r.seq}: payload holds a number that is not finite (NaN or infinity)"
    return None


def _has_non_finite(value: object) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False
