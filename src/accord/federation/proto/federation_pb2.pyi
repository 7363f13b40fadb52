from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_FLOAT16: DType
DTYPE_INT64: DType
DTYPE_INT32: DType
DTYPE_INT16: DType
DTYPE_INT8: DType
DTYPE_UINT8: DType
DTYPE_BOOL: DType

class TensorChunk(_message.Message):
    __slots__ = ("dtype", "shape", "offset", "data", "last")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    last: bool
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: bool = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: TensorChunk
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class ArrayInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape", "trainable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    trainable: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., trainable: bool = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("kind", "hidden")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    hidden: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, kind: _Optional[str] = ..., hidden: _Optional[_Iterable[int]] = ...) -> None: ...

class FeatureMoments(_message.Message):
    __slots__ = ("count", "sums", "sums_of_squares")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    SUMS_OF_SQUARES_FIELD_NUMBER: _ClassVar[int]
    count: int
    sums: _containers.RepeatedScalarFieldContainer[float]
    sums_of_squares: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, count: _Optional[int] = ..., sums: _Optional[_Iterable[float]] = ..., sums_of_squares: _Optional[_Iterable[float]] = ...) -> None: ...

class Standardisation(_message.Message):
    __slots__ = ("mean", "scale")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    mean: _containers.RepeatedScalarFieldContainer[float]
    scale: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, mean: _Optional[_Iterable[float]] = ..., scale: _Optional[_Iterable[float]] = ...) -> None: ...

class LocalTraining(_message.Message):
    __slots__ = ("learning_rate", "epochs", "batch_size", "momentum")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    epochs: int
    batch_size: int
    momentum: float
    def __init__(self, learning_rate: _Optional[float] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., momentum: _Optional[float] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("protocol_version", "node_id", "sample_count", "n_features", "n_classes", "validation_sample_count", "software_version", "fingerprint", "feature_moments")
    class FingerprintEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MOMENTS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    node_id: str
    sample_count: int
    n_features: int
    n_classes: int
    validation_sample_count: int
    software_version: str
    fingerprint: _containers.ScalarMap[str, str]
    feature_moments: FeatureMoments
    def __init__(self, protocol_version: _Optional[int] = ..., node_id: _Optional[str] = ..., sample_count: _Optional[int] = ..., n_features: _Optional[int] = ..., n_classes: _Optional[int] = ..., validation_sample_count: _Optional[int] = ..., software_version: _Optional[str] = ..., fingerprint: _Optional[_Mapping[str, str]] = ..., feature_moments: _Optional[_Union[FeatureMoments, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "run_id", "node_id", "model", "n_features", "n_classes", "dim", "local", "server_learning_rate", "federated_evaluation", "next_round", "app", "config_json", "layout")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    SERVER_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_EVALUATION_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    run_id: str
    node_id: str
    model: ModelSpec
    n_features: int
    n_classes: int
    dim: int
    local: LocalTraining
    server_learning_rate: float
    federated_evaluation: bool
    next_round: int
    app: bool
    config_json: str
    layout: _containers.RepeatedCompositeFieldContainer[ArrayInfo]
    def __init__(self, protocol_version: _Optional[int] = ..., run_id: _Optional[str] = ..., node_id: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., n_features: _Optional[int] = ..., n_classes: _Optional[int] = ..., dim: _Optional[int] = ..., local: _Optional[_Union[LocalTraining, _Mapping]] = ..., server_learning_rate: _Optional[float] = ..., federated_evaluation: bool = ..., next_round: _Optional[int] = ..., app: bool = ..., config_json: _Optional[str] = ..., layout: _Optional[_Iterable[_Union[ArrayInfo, _Mapping]]] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("sample_count", "validation_sample_count", "problem")
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    sample_count: int
    validation_sample_count: int
    problem: str
    def __init__(self, sample_count: _Optional[int] = ..., validation_sample_count: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class RoundStart(_message.Message):
    __slots__ = ("round_index", "weights_sha256", "global_weights", "buffers", "standardisation")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    STANDARDISATION_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    weights_sha256: bytes
    global_weights: TensorChunk
    buffers: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    standardisation: Standardisation
    def __init__(self, round_index: _Optional[int] = ..., weights_sha256: _Optional[bytes] = ..., global_weights: _Optional[_Union[TensorChunk, _Mapping]] = ..., buffers: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., standardisation: _Optional[_Union[Standardisation, _Mapping]] = ...) -> None: ...

class FirstGradient(_message.Message):
    __slots__ = ("round_index", "gradient", "train_seconds", "buffers")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    gradient: TensorChunk
    train_seconds: float
    buffers: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, round_index: _Optional[int] = ..., gradient: _Optional[_Union[TensorChunk, _Mapping]] = ..., train_seconds: _Optional[float] = ..., buffers: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class RoundFailure(_message.Message):
    __slots__ = ("round_index", "reason")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    reason: str
    def __init__(self, round_index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SecondGradient(_message.Message):
    __slots__ = ("round_index", "gradient", "server_learning_rate", "next_weights_sha256", "next_buffers")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    NEXT_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    gradient: TensorChunk
    server_learning_rate: float
    next_weights_sha256: bytes
    next_buffers: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, round_index: _Optional[int] = ..., gradient: _Optional[_Union[TensorChunk, _Mapping]] = ..., server_learning_rate: _Optional[float] = ..., next_weights_sha256: _Optional[bytes] = ..., next_buffers: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("round_index", "weights_sha256")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    weights_sha256: bytes
    def __init__(self, round_index: _Optional[int] = ..., weights_sha256: _Optional[bytes] = ...) -> None: ...

class EvaluateReply(_message.Message):
    __slots__ = ("round_index", "accuracy", "loss", "sample_count")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    accuracy: float
    loss: float
    sample_count: int
    def __init__(self, round_index: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., sample_count: _Optional[int] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("register", "first_gradient", "failure", "evaluate_reply", "ready")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    FIRST_GRADIENT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_REPLY_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    register: Register
    first_gradient: FirstGradient
    failure: RoundFailure
    evaluate_reply: EvaluateReply
    ready: Ready
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., first_gradient: _Optional[_Union[FirstGradient, _Mapping]] = ..., failure: _Optional[_Union[RoundFailure, _Mapping]] = ..., evaluate_reply: _Optional[_Union[EvaluateReply, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "round_start", "second_gradient", "evaluate", "shutdown")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ROUND_START_FIELD_NUMBER: _ClassVar[int]
    SECOND_GRADIENT_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    round_start: RoundStart
    second_gradient: SecondGradient
    evaluate: EvaluateRequest
    shutdown: Shutdown
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., round_start: _Optional[_Union[RoundStart, _Mapping]] = ..., second_gradient: _Optional[_Union[SecondGradient, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateRequest, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ...) -> None: ...
