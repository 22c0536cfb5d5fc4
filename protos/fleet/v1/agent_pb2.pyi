import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.fleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMessage(_message.Message):
    __slots__ = ("hello", "applied", "heartbeat", "reports")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    applied: Applied
    heartbeat: Heartbeat
    reports: ReportBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., applied: _Optional[_Union[Applied, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reports: _Optional[_Union[ReportBatch, _Mapping]] = ...) -> None: ...

class HubMessage(_message.Message):
    __slots__ = ("welcome", "desired", "report_ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    REPORT_ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    desired: DesiredUpdate
    report_ack: ReportAck
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., desired: _Optional[_Union[DesiredUpdate, _Mapping]] = ..., report_ack: _Optional[_Union[ReportAck, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("identity", "inventory", "held", "incarnation")
    class HeldEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    identity: _types_pb2.AgentIdentity
    inventory: _types_pb2.Inventory
    held: _containers.ScalarMap[str, int]
    incarnation: str
    def __init__(self, identity: _Optional[_Union[_types_pb2.AgentIdentity, _Mapping]] = ..., inventory: _Optional[_Union[_types_pb2.Inventory, _Mapping]] = ..., held: _Optional[_Mapping[str, int]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "last_report_seq")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_SEQ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    last_report_seq: int
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., last_report_seq: _Optional[int] = ...) -> None: ...

class DesiredUpdate(_message.Message):
    __slots__ = ("upserts", "deletes", "resync_complete")
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    RESYNC_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    upserts: _containers.RepeatedCompositeFieldContainer[_types_pb2.DesiredObject]
    deletes: _containers.RepeatedScalarFieldContainer[str]
    resync_complete: bool
    def __init__(self, upserts: _Optional[_Iterable[_Union[_types_pb2.DesiredObject, _Mapping]]] = ..., deletes: _Optional[_Iterable[str]] = ..., resync_complete: _Optional[bool] = ...) -> None: ...

class Applied(_message.Message):
    __slots__ = ("object_id", "version", "deleted", "ok", "error")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    version: int
    deleted: bool
    ok: bool
    error: str
    def __init__(self, object_id: _Optional[str] = ..., version: _Optional[int] = ..., deleted: _Optional[bool] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at", "inventory", "recent_errors")
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    RECENT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    sent_at: _timestamp_pb2.Timestamp
    inventory: _types_pb2.Inventory
    recent_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., inventory: _Optional[_Union[_types_pb2.Inventory, _Mapping]] = ..., recent_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportBatch(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[_types_pb2.Report]
    def __init__(self, reports: _Optional[_Iterable[_Union[_types_pb2.Report, _Mapping]]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("seqs",)
    SEQS_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seqs: _Optional[_Iterable[int]] = ...) -> None: ...
