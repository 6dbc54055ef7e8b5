from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActivationEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVATION_ENCODING_UNSPECIFIED: _ClassVar[ActivationEncoding]
    ACTIVATION_ENCODING_FLOAT32: _ClassVar[ActivationEncoding]
    ACTIVATION_ENCODING_FLOAT16: _ClassVar[ActivationEncoding]
    ACTIVATION_ENCODING_INT8: _ClassVar[ActivationEncoding]
    ACTIVATION_ENCODING_RAW: _ClassVar[ActivationEncoding]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_ZSTD: _ClassVar[Compression]
ACTIVATION_ENCODING_UNSPECIFIED: ActivationEncoding
ACTIVATION_ENCODING_FLOAT32: ActivationEncoding
ACTIVATION_ENCODING_FLOAT16: ActivationEncoding
ACTIVATION_ENCODING_INT8: ActivationEncoding
ACTIVATION_ENCODING_RAW: ActivationEncoding
COMPRESSION_NONE: Compression
COMPRESSION_ZSTD: Compression

class TailStart(_message.Message):
    __slots__ = ("model", "model_sha256", "cut", "output_encoding", "output_compression")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_sha256: str
    cut: _containers.RepeatedScalarFieldContainer[str]
    output_encoding: ActivationEncoding
    output_compression: Compression
    def __init__(self, model: _Optional[str] = ..., model_sha256: _Optional[str] = ..., cut: _Optional[_Iterable[str]] = ..., output_encoding: _Optional[_Union[ActivationEncoding, str]] = ..., output_compression: _Optional[_Union[Compression, str]] = ...) -> None: ...

class TensorHeader(_message.Message):
    __slots__ = ("name", "dtype", "shape", "encoding", "scale", "zero_point", "compression", "payload_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: ActivationEncoding
    scale: float
    zero_point: int
    compression: Compression
    payload_bytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[ActivationEncoding, str]] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ..., compression: _Optional[_Union[Compression, str]] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class TailDone(_message.Message):
    __slots__ = ("compute_ms", "codec_ms")
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    CODEC_MS_FIELD_NUMBER: _ClassVar[int]
    compute_ms: float
    codec_ms: float
    def __init__(self, compute_ms: _Optional[float] = ..., codec_ms: _Optional[float] = ...) -> None: ...

class SplitChunk(_message.Message):
    __slots__ = ("start", "tensor", "data", "done")
    START_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    start: TailStart
    tensor: TensorHeader
    data: bytes
    done: TailDone
    def __init__(self, start: _Optional[_Union[TailStart, _Mapping]] = ..., tensor: _Optional[_Union[TensorHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., done: _Optional[_Union[TailDone, _Mapping]] = ...) -> None: ...

class ProfileTailsRequest(_message.Message):
    __slots__ = ("model", "repeats", "per_node", "sample")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    PER_NODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    model: str
    repeats: int
    per_node: bool
    sample: _containers.RepeatedCompositeFieldContainer[TensorHeader]
    def __init__(self, model: _Optional[str] = ..., repeats: _Optional[int] = ..., per_node: _Optional[bool] = ..., sample: _Optional[_Iterable[_Union[TensorHeader, _Mapping]]] = ...) -> None: ...

class NodeTiming(_message.Message):
    __slots__ = ("node", "ms")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    node: str
    ms: float
    def __init__(self, node: _Optional[str] = ..., ms: _Optional[float] = ...) -> None: ...

class TailTiming(_message.Message):
    __slots__ = ("cut", "tail_ms")
    CUT_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_FIELD_NUMBER: _ClassVar[int]
    cut: _containers.RepeatedScalarFieldContainer[str]
    tail_ms: float
    def __init__(self, cut: _Optional[_Iterable[str]] = ..., tail_ms: _Optional[float] = ...) -> None: ...

class ProfileTailsResponse(_message.Message):
    __slots__ = ("model_sha256", "provider", "timings", "nodes")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    provider: str
    timings: _containers.RepeatedCompositeFieldContainer[TailTiming]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeTiming]
    def __init__(self, model_sha256: _Optional[str] = ..., provider: _Optional[str] = ..., timings: _Optional[_Iterable[_Union[TailTiming, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeTiming, _Mapping]]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("payload", "reply_bytes")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    reply_bytes: int
    def __init__(self, payload: _Optional[bytes] = ..., reply_bytes: _Optional[int] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
