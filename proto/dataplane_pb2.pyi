from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("mesh", "name", "proxy_type", "dataplane_json", "agent_version", "envoy_version")
    MESH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROXY_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_JSON_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVOY_VERSION_FIELD_NUMBER: _ClassVar[int]
    mesh: str
    name: str
    proxy_type: str
    dataplane_json: str
    agent_version: str
    envoy_version: str
    def __init__(self, mesh: _Optional[str] = ..., name: _Optional[str] = ..., proxy_type: _Optional[str] = ..., dataplane_json: _Optional[str] = ..., agent_version: _Optional[str] = ..., envoy_version: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("version", "created", "control_plane_instance_id", "dataplane_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PLANE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    created: bool
    control_plane_instance_id: str
    dataplane_json: str
    def __init__(self, version: _Optional[int] = ..., created: _Optional[bool] = ..., control_plane_instance_id: _Optional[str] = ..., dataplane_json: _Optional[str] = ...) -> None: ...

class UnregisterRequest(_message.Message):
    __slots__ = ("mesh", "name", "proxy_type", "keep_dataplane")
    MESH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROXY_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEEP_DATAPLANE_FIELD_NUMBER: _ClassVar[int]
    mesh: str
    name: str
    proxy_type: str
    keep_dataplane: bool
    def __init__(self, mesh: _Optional[str] = ..., name: _Optional[str] = ..., proxy_type: _Optional[str] = ..., keep_dataplane: _Optional[bool] = ...) -> None: ...

class UnregisterResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
