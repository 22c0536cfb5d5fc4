import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentIdentity(_message.Message):
    __slots__ = ("site", "node", "agent_version")
    SITE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    site: str
    node: str
    agent_version: str
    def __init__(self, site: _Optional[str] = ..., node: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class GpuDevice(_message.Message):
    __slots__ = ("model", "memory_bytes", "count")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    model: str
    memory_bytes: int
    count: int
    def __init__(self, model: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("gpus", "region", "country", "jurisdiction", "labels", "unschedulable", "gpu_source")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GPUS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNSCHEDULABLE_FIELD_NUMBER: _ClassVar[int]
    GPU_SOURCE_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[GpuDevice]
    region: str
    country: str
    jurisdiction: str
    labels: _containers.ScalarMap[str, str]
    unschedulable: bool
    gpu_source: str
    def __init__(self, gpus: _Optional[_Iterable[_Union[GpuDevice, _Mapping]]] = ..., region: _Optional[str] = ..., country: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., unschedulable: _Optional[bool] = ..., gpu_source: _Optional[str] = ...) -> None: ...

class DesiredObject(_message.Message):
    __slots__ = ("id", "kind", "name", "version", "spec")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    name: str
    version: int
    spec: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("seq", "kind", "created_at", "payload")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    created_at: _timestamp_pb2.Timestamp
    payload: _struct_pb2.Struct
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
