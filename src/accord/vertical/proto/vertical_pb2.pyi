from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Matrix(_message.Message):
    __slots__ = ("rows", "columns", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    columns: int
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., columns: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "party", "row_count", "settings_fingerprint", "alignment_fingerprint", "resume_epoch", "predict_rows", "predict_alignment_fingerprint", "held_epochs")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RESUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PREDICT_ROWS_FIELD_NUMBER: _ClassVar[int]
    PREDICT_ALIGNMENT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HELD_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    party: str
    row_count: int
    settings_fingerprint: str
    alignment_fingerprint: str
    resume_epoch: int
    predict_rows: int
    predict_alignment_fingerprint: str
    held_epochs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, protocol_version: _Optional[int] = ..., party: _Optional[str] = ..., row_count: _Optional[int] = ..., settings_fingerprint: _Optional[str] = ..., alignment_fingerprint: _Optional[str] = ..., resume_epoch: _Optional[int] = ..., predict_rows: _Optional[int] = ..., predict_alignment_fingerprint: _Optional[str] = ..., held_epochs: _Optional[_Iterable[int]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("label_party", "parties", "first_epoch")
    LABEL_PARTY_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    FIRST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    label_party: str
    parties: _containers.RepeatedScalarFieldContainer[str]
    first_epoch: int
    def __init__(self, label_party: _Optional[str] = ..., parties: _Optional[_Iterable[str]] = ..., first_epoch: _Optional[int] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Forward(_message.Message):
    __slots__ = ("epoch", "batch")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    batch: int
    def __init__(self, epoch: _Optional[int] = ..., batch: _Optional[int] = ...) -> None: ...

class Backward(_message.Message):
    __slots__ = ("epoch", "batch", "gradient")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    batch: int
    gradient: Matrix
    def __init__(self, epoch: _Optional[int] = ..., batch: _Optional[int] = ..., gradient: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class Embed(_message.Message):
    __slots__ = ("split",)
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    split: str
    def __init__(self, split: _Optional[str] = ...) -> None: ...

class KeepBest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RestoreBest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("next_epoch",)
    NEXT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    next_epoch: int
    def __init__(self, next_epoch: _Optional[int] = ...) -> None: ...

class Restore(_message.Message):
    __slots__ = ("next_epoch",)
    NEXT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    next_epoch: int
    def __init__(self, next_epoch: _Optional[int] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("reason", "failed")
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    reason: str
    failed: bool
    def __init__(self, reason: _Optional[str] = ..., failed: bool = ...) -> None: ...

class FeatureMessage(_message.Message):
    __slots__ = ("hello", "matrix")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    matrix: Matrix
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., matrix: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class LabelMessage(_message.Message):
    __slots__ = ("welcome", "refused", "forward", "backward", "embed", "keep_best", "restore_best", "checkpoint", "finish", "restore")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_FIELD_NUMBER: _ClassVar[int]
    EMBED_FIELD_NUMBER: _ClassVar[int]
    KEEP_BEST_FIELD_NUMBER: _ClassVar[int]
    RESTORE_BEST_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    refused: Refused
    forward: Forward
    backward: Backward
    embed: Embed
    keep_best: KeepBest
    restore_best: RestoreBest
    checkpoint: Checkpoint
    finish: Finish
    restore: Restore
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., refused: _Optional[_Union[Refused, _Mapping]] = ..., forward: _Optional[_Union[Forward, _Mapping]] = ..., backward: _Optional[_Union[Backward, _Mapping]] = ..., embed: _Optional[_Union[Embed, _Mapping]] = ..., keep_best: _Optional[_Union[KeepBest, _Mapping]] = ..., restore_best: _Optional[_Union[RestoreBest, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ..., restore: _Optional[_Union[Restore, _Mapping]] = ...) -> None: ...
