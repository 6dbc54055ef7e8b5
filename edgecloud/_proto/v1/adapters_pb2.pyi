from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRequest(_message.Message):
    __slots__ = ("adapter_id", "device_id", "cohort", "current_version")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    device_id: str
    cohort: str
    current_version: int
    def __init__(self, adapter_id: _Optional[str] = ..., device_id: _Optional[str] = ..., cohort: _Optional[str] = ..., current_version: _Optional[int] = ...) -> None: ...

class AdapterOffer(_message.Message):
    __slots__ = ("adapter_id", "version", "manifest_json", "signature", "key_id")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    version: int
    manifest_json: bytes
    signature: bytes
    key_id: str
    def __init__(self, adapter_id: _Optional[str] = ..., version: _Optional[int] = ..., manifest_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("adapter_id", "version", "name", "offset")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    version: int
    name: str
    offset: int
    def __init__(self, adapter_id: _Optional[str] = ..., version: _Optional[int] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AdapterReport(_message.Message):
    __slots__ = ("device_id", "adapter_id", "version", "status", "detail")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    adapter_id: str
    version: int
    status: str
    detail: str
    def __init__(self, device_id: _Optional[str] = ..., adapter_id: _Optional[str] = ..., version: _Optional[int] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
