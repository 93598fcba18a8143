from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Message(_message.Message):
    __slots__ = ("hello", "welcome", "changes", "ack", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    welcome: Welcome
    changes: Changes
    ack: Ack
    heartbeat: Heartbeat
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., changes: _Optional[_Union[Changes, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class ResourceKey(_message.Message):
    __slots__ = ("type", "mesh", "name")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    type: str
    mesh: str
    name: str
    def __init__(self, type: _Optional[str] = ..., mesh: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("type", "mesh", "name", "version", "labels", "spec", "hash")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    type: str
    mesh: str
    name: str
    version: int
    labels: _containers.ScalarMap[str, str]
    spec: bytes
    hash: str
    def __init__(self, type: _Optional[str] = ..., mesh: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., spec: _Optional[bytes] = ..., hash: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("zone", "version", "features", "instance_id", "have", "config")
    class HaveEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ZONE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    zone: str
    version: str
    features: _containers.RepeatedScalarFieldContainer[str]
    instance_id: str
    have: _containers.ScalarMap[str, str]
    config: bytes
    def __init__(self, zone: _Optional[str] = ..., version: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., instance_id: _Optional[str] = ..., have: _Optional[_Mapping[str, str]] = ..., config: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("global_instance_id", "version", "features", "have", "heartbeat_interval_ms", "heartbeat_timeout_ms")
    class HaveEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GLOBAL_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    global_instance_id: str
    version: str
    features: _containers.RepeatedScalarFieldContainer[str]
    have: _containers.ScalarMap[str, str]
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    def __init__(self, global_instance_id: _Optional[str] = ..., version: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., have: _Optional[_Mapping[str, str]] = ..., heartbeat_interval_ms: _Optional[int] = ..., heartbeat_timeout_ms: _Optional[int] = ...) -> None: ...

class Changes(_message.Message):
    __slots__ = ("nonce", "type", "upserts", "removals", "resync")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    REMOVALS_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    type: str
    upserts: _containers.RepeatedCompositeFieldContainer[Resource]
    removals: _containers.RepeatedCompositeFieldContainer[ResourceKey]
    resync: bool
    def __init__(self, nonce: _Optional[str] = ..., type: _Optional[str] = ..., upserts: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., removals: _Optional[_Iterable[_Union[ResourceKey, _Mapping]]] = ..., resync: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("nonce", "nack", "error", "rejected")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    nack: bool
    error: str
    rejected: _containers.RepeatedCompositeFieldContainer[Rejected]
    def __init__(self, nonce: _Optional[str] = ..., nack: _Optional[bool] = ..., error: _Optional[str] = ..., rejected: _Optional[_Iterable[_Union[Rejected, _Mapping]]] = ...) -> None: ...

class Rejected(_message.Message):
    __slots__ = ("key", "reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key: ResourceKey
    reason: str
    def __init__(self, key: _Optional[_Union[ResourceKey, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time_unix_ms", "status")
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    time_unix_ms: int
    status: bytes
    def __init__(self, time_unix_ms: _Optional[int] = ..., status: _Optional[bytes] = ...) -> None: ...
