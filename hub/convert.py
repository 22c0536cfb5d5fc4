"""Protobuf <-> domain conversion at the gRPC boundary (and nowhere else)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from hub.store.repo import IncomingReport, ObjectRecord
from protos.fleet.v1 import types_pb2


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
    return IncomingReport(seq=r.seq, kind=r.kind, created_at=from_ts(r.created_at, now), payload=from_struct(r.payload))
