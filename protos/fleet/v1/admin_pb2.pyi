import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.fleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_PHASE_UNSPECIFIED: _ClassVar[NodePhase]
    NODE_PHASE_CONNECTED: _ClassVar[NodePhase]
    NODE_PHASE_STALE: _ClassVar[NodePhase]
    NODE_PHASE_UNREACHABLE: _ClassVar[NodePhase]
NODE_PHASE_UNSPECIFIED: NodePhase
NODE_PHASE_CONNECTED: NodePhase
NODE_PHASE_STALE: NodePhase
NODE_PHASE_UNREACHABLE: NodePhase

class NodeView(_message.Message):
    __slots__ = ("site", "node", "phase", "last_seen", "inventory", "desired_version", "applied_version", "objects_desired", "objects_applied", "agent_version", "recent_errors", "connected", "models")
    SITE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_DESIRED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECENT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    site: str
    node: str
    phase: NodePhase
    last_seen: _timestamp_pb2.Timestamp
    inventory: _types_pb2.Inventory
    desired_version: int
    applied_version: int
    objects_desired: int
    objects_applied: int
    agent_version: str
    recent_errors: _containers.RepeatedScalarFieldContainer[str]
    connected: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelIntegrity]
    def __init__(self, site: _Optional[str] = ..., node: _Optional[str] = ..., phase: _Optional[_Union[NodePhase, str]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., inventory: _Optional[_Union[_types_pb2.Inventory, _Mapping]] = ..., desired_version: _Optional[int] = ..., applied_version: _Optional[int] = ..., objects_desired: _Optional[int] = ..., objects_applied: _Optional[int] = ..., agent_version: _Optional[str] = ..., recent_errors: _Optional[_Iterable[str]] = ..., connected: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelIntegrity, _Mapping]]] = ...) -> None: ...

class ModelIntegrity(_message.Message):
    __slots__ = ("model", "version", "decision", "digest", "expected", "reason", "checked_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    decision: str
    digest: str
    expected: str
    reason: str
    checked_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., decision: _Optional[str] = ..., digest: _Optional[str] = ..., expected: _Optional[str] = ..., reason: _Optional[str] = ..., checked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SiteView(_message.Message):
    __slots__ = ("site", "phase", "last_seen", "nodes", "nodes_connected", "gpus", "region", "country", "jurisdiction", "desired_version", "applied_version")
    SITE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    NODES_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    JURISDICTION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    site: str
    phase: NodePhase
    last_seen: _timestamp_pb2.Timestamp
    nodes: int
    nodes_connected: int
    gpus: int
    region: str
    country: str
    jurisdiction: str
    desired_version: int
    applied_version: int
    def __init__(self, site: _Optional[str] = ..., phase: _Optional[_Union[NodePhase, str]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., nodes: _Optional[int] = ..., nodes_connected: _Optional[int] = ..., gpus: _Optional[int] = ..., region: _Optional[str] = ..., country: _Optional[str] = ..., jurisdiction: _Optional[str] = ..., desired_version: _Optional[int] = ..., applied_version: _Optional[int] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSitesResponse(_message.Message):
    __slots__ = ("sites",)
    SITES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteView]
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteView, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("site",)
    SITE_FIELD_NUMBER: _ClassVar[int]
    site: str
    def __init__(self, site: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeView]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeView, _Mapping]]] = ...) -> None: ...

class ObjectTarget(_message.Message):
    __slots__ = ("site", "node")
    SITE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    site: str
    node: str
    def __init__(self, site: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class PutObjectRequest(_message.Message):
    __slots__ = ("kind", "name", "target", "spec")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    target: ObjectTarget
    spec: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., target: _Optional[_Union[ObjectTarget, _Mapping]] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class PutObjectResponse(_message.Message):
    __slots__ = ("object",)
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    object: _types_pb2.DesiredObject
    def __init__(self, object: _Optional[_Union[_types_pb2.DesiredObject, _Mapping]] = ...) -> None: ...

class DeleteObjectRequest(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteObjectResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ObjectView(_message.Message):
    __slots__ = ("object", "target", "nodes_targeted", "nodes_applied", "updated_at")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    NODES_TARGETED_FIELD_NUMBER: _ClassVar[int]
    NODES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    object: _types_pb2.DesiredObject
    target: ObjectTarget
    nodes_targeted: int
    nodes_applied: int
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, object: _Optional[_Union[_types_pb2.DesiredObject, _Mapping]] = ..., target: _Optional[_Union[ObjectTarget, _Mapping]] = ..., nodes_targeted: _Optional[int] = ..., nodes_applied: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectView]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectView, _Mapping]]] = ...) -> None: ...

class ReportStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentReportStats(_message.Message):
    __slots__ = ("site", "node", "reports", "max_seq", "duplicates", "counted")
    SITE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    site: str
    node: str
    reports: int
    max_seq: int
    duplicates: int
    counted: int
    def __init__(self, site: _Optional[str] = ..., node: _Optional[str] = ..., reports: _Optional[int] = ..., max_seq: _Optional[int] = ..., duplicates: _Optional[int] = ..., counted: _Optional[int] = ...) -> None: ...

class ReportStatsResponse(_message.Message):
    __slots__ = ("agents", "total_reports")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REPORTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentReportStats]
    total_reports: int
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentReportStats, _Mapping]]] = ..., total_reports: _Optional[int] = ...) -> None: ...

class Revision(_message.Message):
    __slots__ = ("number", "author", "message", "created_at", "digest", "bundle_json", "placement_json", "summary", "rollback_of")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    number: int
    author: str
    message: str
    created_at: _timestamp_pb2.Timestamp
    digest: str
    bundle_json: str
    placement_json: str
    summary: _struct_pb2.Struct
    rollback_of: int
    def __init__(self, number: _Optional[int] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., digest: _Optional[str] = ..., bundle_json: _Optional[str] = ..., placement_json: _Optional[str] = ..., summary: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., rollback_of: _Optional[int] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("bundle_json", "author", "message", "base_revision", "dry_run", "solver")
    BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    bundle_json: str
    author: str
    message: str
    base_revision: int
    dry_run: bool
    solver: str
    def __init__(self, bundle_json: _Optional[str] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., base_revision: _Optional[int] = ..., dry_run: _Optional[bool] = ..., solver: _Optional[str] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("revision", "diff", "bundle_diff", "objects_published", "objects_deleted", "objects_unchanged", "unchanged", "plan", "drift", "policy_revision", "policy_objects_published", "policy_objects_deleted")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIFF_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    POLICY_OBJECTS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    POLICY_OBJECTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    revision: Revision
    diff: _containers.RepeatedScalarFieldContainer[str]
    bundle_diff: _containers.RepeatedScalarFieldContainer[str]
    objects_published: int
    objects_deleted: int
    objects_unchanged: int
    unchanged: bool
    plan: _struct_pb2.Struct
    drift: _containers.RepeatedScalarFieldContainer[str]
    policy_revision: Revision
    policy_objects_published: int
    policy_objects_deleted: int
    def __init__(self, revision: _Optional[_Union[Revision, _Mapping]] = ..., diff: _Optional[_Iterable[str]] = ..., bundle_diff: _Optional[_Iterable[str]] = ..., objects_published: _Optional[int] = ..., objects_deleted: _Optional[int] = ..., objects_unchanged: _Optional[int] = ..., unchanged: _Optional[bool] = ..., plan: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., drift: _Optional[_Iterable[str]] = ..., policy_revision: _Optional[_Union[Revision, _Mapping]] = ..., policy_objects_published: _Optional[int] = ..., policy_objects_deleted: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("to", "author", "message", "base_revision")
    TO_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    to: int
    author: str
    message: str
    base_revision: int
    def __init__(self, to: _Optional[int] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., base_revision: _Optional[int] = ...) -> None: ...

class GetRevisionRequest(_message.Message):
    __slots__ = ("number",)
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    number: int
    def __init__(self, number: _Optional[int] = ...) -> None: ...

class ListRevisionsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListRevisionsResponse(_message.Message):
    __slots__ = ("revisions",)
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[Revision]
    def __init__(self, revisions: _Optional[_Iterable[_Union[Revision, _Mapping]]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("by", "since", "until", "html", "slo_ttft_p95_s")
    BY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    SLO_TTFT_P95_S_FIELD_NUMBER: _ClassVar[int]
    by: _containers.RepeatedScalarFieldContainer[str]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    html: bool
    slo_ttft_p95_s: float
    def __init__(self, by: _Optional[_Iterable[str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., html: _Optional[bool] = ..., slo_ttft_p95_s: _Optional[float] = ...) -> None: ...

class GetDriftRequest(_message.Message):
    __slots__ = ("service", "since")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    service: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, service: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetDriftResponse(_message.Message):
    __slots__ = ("drift_json",)
    DRIFT_JSON_FIELD_NUMBER: _ClassVar[int]
    drift_json: str
    def __init__(self, drift_json: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report_json", "table_json", "html")
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    TABLE_JSON_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    table_json: str
    html: str
    def __init__(self, report_json: _Optional[str] = ..., table_json: _Optional[str] = ..., html: _Optional[str] = ...) -> None: ...

class AutoscaleStatusRequest(_message.Message):
    __slots__ = ("service", "window_s")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    service: str
    window_s: float
    def __init__(self, service: _Optional[str] = ..., window_s: _Optional[float] = ...) -> None: ...

class AutoscaleRegionStatus(_message.Message):
    __slots__ = ("service", "region", "autoscale_enabled", "min_replicas", "max_replicas", "target_quantile", "declared_rps", "observed_rps", "observed_until", "window_s", "arrivals", "shed", "refused", "mean_prompt_tokens", "mean_output_tokens", "replicas_now", "planned_rps", "forecast_rps", "planned_replicas", "next_change", "reason")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_QUANTILE_FIELD_NUMBER: _ClassVar[int]
    DECLARED_RPS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_RPS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ARRIVALS_FIELD_NUMBER: _ClassVar[int]
    SHED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    MEAN_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_NOW_FIELD_NUMBER: _ClassVar[int]
    PLANNED_RPS_FIELD_NUMBER: _ClassVar[int]
    FORECAST_RPS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHANGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    service: str
    region: str
    autoscale_enabled: bool
    min_replicas: int
    max_replicas: int
    target_quantile: float
    declared_rps: float
    observed_rps: float
    observed_until: _timestamp_pb2.Timestamp
    window_s: float
    arrivals: float
    shed: float
    refused: float
    mean_prompt_tokens: float
    mean_output_tokens: float
    replicas_now: int
    planned_rps: float
    forecast_rps: float
    planned_replicas: int
    next_change: str
    reason: str
    def __init__(self, service: _Optional[str] = ..., region: _Optional[str] = ..., autoscale_enabled: _Optional[bool] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., target_quantile: _Optional[float] = ..., declared_rps: _Optional[float] = ..., observed_rps: _Optional[float] = ..., observed_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_s: _Optional[float] = ..., arrivals: _Optional[float] = ..., shed: _Optional[float] = ..., refused: _Optional[float] = ..., mean_prompt_tokens: _Optional[float] = ..., mean_output_tokens: _Optional[float] = ..., replicas_now: _Optional[int] = ..., planned_rps: _Optional[float] = ..., forecast_rps: _Optional[float] = ..., planned_replicas: _Optional[int] = ..., next_change: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AutoscaleStatusResponse(_message.Message):
    __slots__ = ("regions", "revision", "skipped")
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[AutoscaleRegionStatus]
    revision: int
    skipped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, regions: _Optional[_Iterable[_Union[AutoscaleRegionStatus, _Mapping]]] = ..., revision: _Optional[int] = ..., skipped: _Optional[_Iterable[str]] = ...) -> None: ...
