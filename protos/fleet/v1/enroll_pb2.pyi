import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CertificateRequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CERTIFICATE_REQUEST_STATE_UNSPECIFIED: _ClassVar[CertificateRequestState]
    CERTIFICATE_REQUEST_STATE_PENDING: _ClassVar[CertificateRequestState]
    CERTIFICATE_REQUEST_STATE_APPROVED: _ClassVar[CertificateRequestState]
    CERTIFICATE_REQUEST_STATE_DENIED: _ClassVar[CertificateRequestState]
CERTIFICATE_REQUEST_STATE_UNSPECIFIED: CertificateRequestState
CERTIFICATE_REQUEST_STATE_PENDING: CertificateRequestState
CERTIFICATE_REQUEST_STATE_APPROVED: CertificateRequestState
CERTIFICATE_REQUEST_STATE_DENIED: CertificateRequestState

class RequestCertificateRequest(_message.Message):
    __slots__ = ("bootstrap_token", "csr_pem")
    BOOTSTRAP_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    bootstrap_token: str
    csr_pem: str
    def __init__(self, bootstrap_token: _Optional[str] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class CertificateResponse(_message.Message):
    __slots__ = ("name", "state", "certificate_pem", "ca_pem", "not_after", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: CertificateRequestState
    certificate_pem: str
    ca_pem: str
    not_after: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[CertificateRequestState, str]] = ..., certificate_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class BootstrapToken(_message.Message):
    __slots__ = ("id", "site", "auto_approve", "created_at", "expires_at", "revoked_at", "created_by", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    AUTO_APPROVE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    site: str
    auto_approve: bool
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    created_by: str
    description: str
    def __init__(self, id: _Optional[str] = ..., site: _Optional[str] = ..., auto_approve: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class CreateBootstrapTokenRequest(_message.Message):
    __slots__ = ("site", "ttl", "auto_approve", "description", "actor")
    SITE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    AUTO_APPROVE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    site: str
    ttl: _duration_pb2.Duration
    auto_approve: bool
    description: str
    actor: str
    def __init__(self, site: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., auto_approve: _Optional[bool] = ..., description: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class CreateBootstrapTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: BootstrapToken
    secret: str
    def __init__(self, token: _Optional[_Union[BootstrapToken, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class RevokeBootstrapTokenRequest(_message.Message):
    __slots__ = ("id", "actor")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ListBootstrapTokensRequest(_message.Message):
    __slots__ = ("site",)
    SITE_FIELD_NUMBER: _ClassVar[int]
    site: str
    def __init__(self, site: _Optional[str] = ...) -> None: ...

class ListBootstrapTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[BootstrapToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[BootstrapToken, _Mapping]]] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("name", "site", "node", "state", "kind", "token_id", "created_at", "decided_at", "decided_by", "reason", "not_after", "public_key_sha256", "peer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    name: str
    site: str
    node: str
    state: CertificateRequestState
    kind: str
    token_id: str
    created_at: _timestamp_pb2.Timestamp
    decided_at: _timestamp_pb2.Timestamp
    decided_by: str
    reason: str
    not_after: _timestamp_pb2.Timestamp
    public_key_sha256: str
    peer: str
    def __init__(self, name: _Optional[str] = ..., site: _Optional[str] = ..., node: _Optional[str] = ..., state: _Optional[_Union[CertificateRequestState, str]] = ..., kind: _Optional[str] = ..., token_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_by: _Optional[str] = ..., reason: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., public_key_sha256: _Optional[str] = ..., peer: _Optional[str] = ...) -> None: ...

class ListCertificateRequestsRequest(_message.Message):
    __slots__ = ("site", "state")
    SITE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    site: str
    state: CertificateRequestState
    def __init__(self, site: _Optional[str] = ..., state: _Optional[_Union[CertificateRequestState, str]] = ...) -> None: ...

class ListCertificateRequestsResponse(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CertificateRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[CertificateRequest, _Mapping]]] = ...) -> None: ...

class DecideCertificateRequest(_message.Message):
    __slots__ = ("name", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
