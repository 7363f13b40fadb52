"""Tensors on the wire: raw little-endian bytes with dtype and shape, cut into chunks.

A gRPC message is limited in size (4 MiB by default), so a tensor travels as a sequence of
:class:`TensorChunk` messages with increasing byte offsets; :class:`TensorAssembler` puts
them back together and refuses anything inconsistent (dtype or shape changing between
chunks, gaps, overlaps, more bytes than declared, more bytes than the receiver allows)
*before* allocating memory for it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from accord.errors import ProtocolError
from accord.federation.proto import federation_pb2 as pb

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "PROTOCOL_VERSION",
    "TensorAssembler",
    "check_weights",
    "decode_buffers",
    "decode_tensor",
    "encode_buffers",
    "encode_tensor",
    "state_digest",
    "weights_digest",
    "wire_dtype_problem",
]

#: Version of the federation protocol; a server refuses nodes speaking another one.
PROTOCOL_VERSION = 2

#: Bytes of tensor data per message; well under gRPC's default 4 MiB message limit.
DEFAULT_CHUNK_BYTES = 1 << 20
#: The most dimensions a tensor on the wire may have (numpy allows 64; no model needs 32).
MAX_DIMENSIONS = 32

_TO_WIRE: dict[np.dtype[np.generic], int] = {
    np.dtype("<f4"): pb.DTYPE_FLOAT32,
    np.dtype("<f8"): pb.DTYPE_FLOAT64,
    np.dtype("<f2"): pb.DTYPE_FLOAT16,
    np.dtype("<i8"): pb.DTYPE_INT64,
    np.dtype("<i4"): pb.DTYPE_INT32,
    np.dtype("<i2"): pb.DTYPE_INT16,
    np.dtype("i1"): pb.DTYPE_INT8,
    np.dtype("u1"): pb.DTYPE_UINT8,
    np.dtype("?"): pb.DTYPE_BOOL,
}
_FROM_WIRE: dict[int, np.dtype[np.generic]] = {code: dtype for dtype, code in _TO_WIRE.items()}


def encode_tensor(
    array: npt.NDArray[np.generic], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[pb.TensorChunk]:
    """Cut ``array`` into chunks of at most ``chunk_bytes`` data bytes (at least one chunk)."""
    if chunk_bytes < 1:
        raise ProtocolError(f"chunk_bytes: expected at least 1, got {chunk_bytes}")
    wire_dtype = array.dtype.newbyteorder("<")
    code = _TO_WIRE.get(wire_dtype)
    if code is None:
        raise ProtocolError(f"tensor dtype {array.dtype} cannot be sent")
    data = np.ascontiguousarray(array, dtype=wire_dtype).reshape(-1).view(np.uint8)
    shape = list(array.shape)
    total = int(data.shape[0])
    chunks: list[pb.TensorChunk] = []
    offset = 0
    while True:
        end = min(total, offset + chunk_bytes)
        chunks.append(
            pb.TensorChunk(
                dtype=code,  # type: ignore[arg-type]
                shape=shape,
                offset=offset,
                data=data[offset:end].tobytes(),
                last=end == total,
            )
        )
        offset = end
        if offset >= total:
            return chunks


class TensorAssembler:
    """Reassembles one tensor from its chunks, refusing more than ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._dtype_code: int | None = None
        self._shape: tuple[int, ...] = ()
        self._buffer: bytearray | None = None
        self._received = 0

    @property
    def started(self) -> bool:
        return self._buffer is not None

    def add(self, chunk: pb.TensorChunk) -> npt.NDArray[np.generic] | None:
        """Take the next chunk; return the tensor once its last chunk arrived, else ``None``.

        Raises :class:`ProtocolError` naming what is wrong with the chunk.
        """
        if self._buffer is None:
            self._start(chunk)
        elif chunk.dtype != self._dtype_code or tuple(chunk.shape) != self._shape:
            raise ProtocolError("tensor chunk: dtype or shape changed between chunks")
        buffer = self._buffer
        assert buffer is not None
        if chunk.offset != self._received:
            raise ProtocolError(
                f"tensor chunk: expected byte offset {self._received}, got {chunk.offset}"
            )
        end = self._received + len(chunk.data)
        if end > len(buffer):
            raise ProtocolError(
                f"tensor chunk: {end} bytes received, more than the {len(buffer)} declared"
            )
        buffer[self._received : end] = chunk.data
        self._received = end
        if not chunk.last:
            return None
        if self._received != len(buffer):
            raise ProtocolError(
                f"tensor chunk: last chunk after {self._received} of {len(buffer)} bytes"
            )
        dtype = _FROM_WIRE[self._dtype_code]  # type: ignore[index]
        array = np.frombuffer(buffer, dtype=dtype).reshape(self._shape)
        return array.astype(dtype.newbyteorder("="), copy=False)

    def _start(self, chunk: pb.TensorChunk) -> None:
        dtype = _FROM_WIRE.get(chunk.dtype)
        if dtype is None:
            raise ProtocolError(f"tensor chunk: unknown dtype code {chunk.dtype}")
        shape = tuple(int(size) for size in chunk.shape)
        if any(size < 0 for size in shape):
            raise ProtocolError(f"tensor chunk: negative size in shape {shape}")
        if len(shape) > MAX_DIMENSIONS:
            raise ProtocolError(
                f"tensor chunk: {len(shape)} dimensions, more than the {MAX_DIMENSIONS} allowed"
            )
        total = math.prod(shape) * dtype.itemsize
        if total > self.max_bytes:
            raise ProtocolError(
                f"tensor chunk: shape {shape} of {dtype.name} is {total} bytes, more than the "
                f"{self.max_bytes} allowed here"
            )
        # The non-zero sizes are bounded too: a shape of (0, 17, 10^17) holds no bytes, but
        # numpy cannot make an array of it.
        if math.prod(size for size in shape if size) * dtype.itemsize > self.max_bytes:
            raise ProtocolError(
                f"tensor chunk: shape {shape} of {dtype.name} has a size larger than the "
                f"{self.max_bytes} bytes allowed here"
            )
        self._dtype_code = int(chunk.dtype)
        self._shape = shape
        self._buffer = bytearray(total)


def decode_tensor(
    chunks: list[pb.TensorChunk], max_bytes: int = 1 << 34
) -> npt.NDArray[np.generic]:
    """All chunks of one tensor, in order, back to an array."""
    assembler = TensorAssembler(max_bytes)
    for chunk in chunks:
        array = assembler.add(chunk)
        if array is not None:
            return array
    raise ProtocolError("tensor chunk: the last chunk is missing")


def wire_dtype_problem(array: npt.NDArray[Any]) -> str | None:
    """Why ``array``'s dtype cannot travel, or ``None``."""
    if array.dtype.newbyteorder("<") in _TO_WIRE:
        return None
    accepted = ", ".join(sorted(str(dtype) for dtype in _TO_WIRE))
    return f"dtype {array.dtype} cannot be sent; accepted: {accepted}"


#: The most bytes one buffer may have on the wire (buffers travel whole, unchunked).
MAX_BUFFER_BYTES = 64 << 20


def encode_buffers(buffers: Mapping[str, Any] | None) -> list[pb.NamedTensor]:
    """A model's buffers as whole named tensors, sorted by name (none: an empty list)."""
    encoded: list[pb.NamedTensor] = []
    for name in sorted(buffers or {}):
        array = np.asarray(buffers[name])  # type: ignore[index]
        if array.nbytes > MAX_BUFFER_BYTES:
            raise ProtocolError(f"buffer {name}: {array.nbytes} bytes; at most {MAX_BUFFER_BYTES}")
        (chunk,) = encode_tensor(array, max(1, array.nbytes))
        encoded.append(pb.NamedTensor(name=name, tensor=chunk))
    return encoded


def decode_buffers(tensors: Sequence[pb.NamedTensor]) -> dict[str, npt.NDArray[Any]]:
    """Named tensors back to arrays; raises :class:`ProtocolError` on a malformed one."""
    buffers: dict[str, npt.NDArray[Any]] = {}
    for tensor in tensors:
        if tensor.name in buffers:
            raise ProtocolError(f"buffer {tensor.name[:64]!r} sent twice")
        if not tensor.tensor.last or tensor.tensor.offset != 0:
            raise ProtocolError(f"buffer {tensor.name[:64]!r}: expected one whole chunk")
        buffers[tensor.name] = decode_tensor([tensor.tensor], MAX_BUFFER_BYTES)
    return buffers


def weights_digest(weights: npt.NDArray[np.float32]) -> bytes:
    """SHA-256 of the float32 little-endian bytes of a weight vector."""
    contiguous = np.ascontiguousarray(weights, dtype="<f4")
    return hashlib.sha256(contiguous.reshape(-1).view(np.uint8).data).digest()


def state_digest(weights: npt.NDArray[np.float32], buffers: Mapping[str, Any]) -> bytes:
    """SHA-256 of the weights and the buffers: :func:`weights_digest` alone for a model
    without buffers; otherwise it also covers every buffer's name, dtype, shape and bytes."""
    if not buffers:
        return weights_digest(weights)
    digest = hashlib.sha256(weights_digest(weights))
    for name in sorted(buffers):
        array = np.array(buffers[name], order="C")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header = f"{name}|{array.dtype.str}|{list(array.shape)}|".encode()
        digest.update(len(header).to_bytes(4, "little") + header)
        digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.digest()


def check_weights(array: npt.NDArray[np.generic], dim: int, what: str) -> npt.NDArray[np.float32]:
    """Refuse to apply ``array`` unless it is a finite float32 vector of length ``dim``."""
    if array.dtype != np.float32:
        raise ProtocolError(f"{what}: expected dtype float32, got {array.dtype}")
    if array.shape != (dim,):
        raise ProtocolError(f"{what}: expected shape ({dim},), got {array.shape}")
    if not np.isfinite(array).all():
        raise ProtocolError(f"{what}: contains NaN or Inf")
    return array.astype(np.float32, copy=False)
