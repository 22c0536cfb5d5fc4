"""Protobuf <-> domain conversion at the gRPC boundary (and nowhere else)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from hub.store.repo import IncomingReport, ObjectRecord
from hub.store.tables import REPORT_KIND_MAX
from protos.fleet.v1 import types_pb2

# Bounds of a report that the store can hold (the agent checks the same ones
# before sending, edge_agent/report_check.py): a signed 64-bit seq, a
# Timestamp inside the years 1..9999, a kind of 1..64 characters, and finite
# numbers (PostgreSQL's JSON has no NaN or Infinity).
MAX_REPORT_SEQ = 2**63 - 1
MIN_TIMESTAMP_S = -62_135_596_800   # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_S = 253_402_300_799   # 9999-12-31T23:59:59Z
INCARNATION = re.compile(r"[0-9A-Za-z_-]{1,64}")


class BadReport(ValueError):
    """A report outside what the hub can store; the message names its seq and what to fix."""


def struct(d: dict) -> Struct:
    s = Struct()
    s.update(d)
    return s


def from_struct(s: Struct) -> dict:
    return json_format.MessageToDict(s)


def ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt.astimezone(UTC))
    return t


def from_ts(t: Timestamp, default: datetime) -> datetime:
    if t.seconds == 0 and t.nanos == 0:
        return default
    return t.ToDatetime(tzinfo=UTC)


def object_to_proto(o: ObjectRecord) -> types_pb2.DesiredObject:
    return types_pb2.DesiredObject(id=o.id, kind=o.kind, name=o.name, version=o.version, spec=struct(o.spec))


def inventory_from_proto(inv: types_pb2.Inventory) -> dict:
    return json_format.MessageToDict(inv, preserving_proto_field_name=True)


def inventory_to_proto(d: dict) -> types_pb2.Inventory:
    inv = types_pb2.Inventory()
    json_format.ParseDict(d, inv, ignore_unknown_fields=True)
    return inv


def report_from_proto(r: types_pb2.Report, now: datetime) -> IncomingReport:
    """The domain report, or BadReport if a field is out of the bounds above (checked
    here, before the store: out of range it would fail deep in the database driver)."""
    if r.seq > MAX_REPORT_SEQ:
        raise BadReport(f"report seq {r.seq} is out of range: sequence numbers must be below 2^63")
    if not 0 < len(r.kind) <= REPORT_KIND_MAX:
        raise BadReport(f"report seq {r.seq}: kind must be 1..{REPORT_KIND_MAX} characters, got {len(r.kind)}")
    t = r.created_at
    if not (MIN_TIMESTAMP_S <= t.seconds <= MAX_TIMESTAMP_S and 0 <= t.nanos <= 999_999_999):
        raise BadReport(f"report seq {r.seq}: created_at ({t.seconds} s, {t.nanos} ns since 1970) is outside the "
                        "years 1..9999; check the agent's clock")
    if _has_non_finite(r.payload):
        raise BadReport(f"report seq {r.seq}: payload holds a number that is not finite (NaN or infinity)")
    return IncomingReport(seq=r.seq, kind=r.kind, created_at=from_ts(t, now), payload=from_struct(r.payload))


def _has_non_finite(s: Struct) -> bool:
    stack = list(s.fields.values())
    while stack:
        v = stack.pop()
        which = v.WhichOneof("kind")
        if which == "number_value":
            if not math.isfinite(v.number_value):
                return True
        elif which == "struct_value":
            stack.extend(v.struct_value.fields.values())
        elif which == "list_value":
            stack.extend(v.list_value.values)
    return False


def incarnation_problem(incarnation: str) -> str | None:
    """Why a Hello's incarnation is not acceptable, or None."""
    if not incarnation:
        return ("hello.incarnation is required: this agent predates report incarnations "
                "(upgrade fleet-agent; its reports would be taken for duplicates after it loses its state)")
    if not INCARNATION.fullmatch(incarnation):
        return "hello.incarnation must be 1..64 characters of 0-9, A-Z, a-z, '_' and '-'"
    return None
