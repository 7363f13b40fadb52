"""Keyed 128-bit digests of normalised IDs, and one party's canonical digest set.

Construction
------------
A digest is a pseudo-random function of the normalised key bytes ``x`` under a secret key
``K`` that only the enclaves hold:

* ``k = HMAC-SHA256(K, "accord/alignment/digest/v1/columns=<c>")`` with ``c`` the number of
  key columns (domain separation: ``K`` may be any secret of at least 16 bytes, e.g. straight
  out of the channel's key schedule; keys of different column counts can never match);
* ``M = LE64(len(x)) ‖ x ‖ 0…0``, zero-padded to a multiple of 16 bytes;
* ``digest = CBC-MAC_k(M)`` with AES-256: ``c_0 = 0``, ``c_i = AES_k(c_{i-1} ⊕ M_i)``,
  digest = ``c_last`` (16 bytes), i.e. the last block of AES-CBC encryption of ``M`` with a
  zero IV.

CBC-MAC is a PRF on any prefix-free message set (Bellare–Kilian–Rogaway; Petrank–Rackoff),
and length-prefixing makes the encoding prefix-free and injective (zeros after ``x`` are
told apart from trailing NULs inside ``x`` by the length). So without ``k`` nobody — a host
included — can compute a digest, and therefore cannot test guessed IDs against digests it
relays. Equal IDs give equal digests; distinct IDs collide with probability ≈ n²/2¹²⁹.

Speed: rows are grouped by block count and each group goes through AES-ECB in bulk, one
``update_into`` call per block column (a few hundred MB/s per call, no per-ID Python).
The padded message matrix is built with numpy: a fixed-length chunk is a reshape of the data
buffer; otherwise 8-byte words are gathered from an unaligned word view and masked.

Numeric form: an array of digests has shape ``(n, 2)`` and dtype ``<u8``; word 0 is bytes
0–7 and word 1 bytes 8–15 of the digest, each little-endian. The canonical order of a set is
lexicographic on (word 0, word 1), the same on every machine. ``digests_to_bytes`` gives the
16-byte digests back-to-back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from accord._lazy import lazy_module
from accord.alignment._sorting import check_digests, is_canonical, sort_order
from accord.alignment.normalise import EXAMPLE_ROWS, ByteColumn, PreparedIds, value_offsets
from accord.errors import ConfigurationError, InputDataError, ProtocolError

if TYPE_CHECKING:
    import pyarrow as pa
else:
    pa = lazy_module("pyarrow")  # a ByteColumn's digests need no pyarrow

__all__ = [
    "DIGEST_BYTES",
    "DIGEST_DTYPE",
    "DigestSet",
    "DuplicatePolicy",
    "DuplicateReport",
    "check_words",
    "derive_key",
    "digest_ids",
    "digests_from_bytes",
    "digests_to_bytes",
    "duplicate_message",
    "keyed_digests",
]

#: Bytes per digest.
DIGEST_BYTES = 16
#: dtype of each of the two words of a digest.
DIGEST_DTYPE = np.dtype("<u8")

_DIGEST_LABEL = b"accord/alignment/digest/v1"
# Rows digested (or check-hashed) per step: the temporaries of a step (48 bytes a row for
# 32-byte IDs) stay in the CPU's caches. 32k rows took 4.5 ms per 333k IDs, 1M rows 7 ms.
_CHUNK_ROWS = 1 << 15
_MIN_SECRET_BYTES = 16
_ALL_ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


class DuplicatePolicy(StrEnum):
    """What to do with an ID that occurs on more than one row.

    ``error`` (default) refuses the input; ``first`` keeps the row with the lowest index;
    ``drop-all`` drops every row of a duplicated ID, so it cannot match at all.
    """

    ERROR = "error"
    FIRST = "first"
    DROP_ALL = "drop-all"


@dataclass(frozen=True)
class DuplicateReport:
    """Duplicates found in one party's IDs and what the policy did with them.

    ``examples`` holds, for the first few duplicated IDs (by first row), their row indices.
    """

    policy: DuplicatePolicy
    duplicated_ids: int
    duplicate_rows: int
    dropped_rows: int
    examples: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, eq=False)
class DigestSet:
    """One party's digests in canonical order (strictly increasing), one per distinct ID.

    ``row_index[i]`` is the local row of ``digests[i]``. Both arrays are read-only.
    """

    digests: np.ndarray
    row_index: np.ndarray
    duplicates: DuplicateReport

    def __len__(self) -> int:
        return len(self.row_index)


def derive_key(secret: bytes, label: bytes) -> bytes:
    """A 32-byte key for one purpose: ``HMAC-SHA256(secret, label)``."""
    if not isinstance(secret, bytes | bytearray) or len(secret) < _MIN_SECRET_BYTES:
        size = len(secret) if isinstance(secret, bytes | bytearray) else type(secret).__name__
        raise ConfigurationError(
            f"alignment secret: expected at least {_MIN_SECRET_BYTES} bytes, got {size}"
        )
    return hmac.new(bytes(secret), label, hashlib.sha256).digest()


def keyed_digests(
    keys: pa.Array | pa.ChunkedArray | ByteColumn, key: bytes, *, key_columns: int = 1
) -> np.ndarray:
    """The keyed 128-bit digest of every key, in row order: shape ``(n, 2)``, dtype ``<u8``.

    ``keys`` are binary (or string) values, normally :attr:`PreparedIds.keys`; ``key`` is
    the session's digest secret (at least 16 bytes); ``key_columns`` the number of key columns
    the keys were joined from (part of the derivation). Nulls are refused.
    """
    if isinstance(key_columns, bool) or not isinstance(key_columns, int) or key_columns < 1:
        raise ConfigurationError(f"key_columns: expected an integer >= 1, got {key_columns!r}")
    aes_key = derive_key(key, _DIGEST_LABEL + b"/columns=%d" % key_columns)
    encryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    return _in_steps(keys, (2,), lambda piece: _digest_chunk(piece, encryptor))


#: The odd constants of :func:`check_words` (splitmix64's increment and multipliers).
_CHECK_START = np.uint64(0x9E3779B97F4A7C15)
_CHECK_ROUND = np.uint64(0xBF58476D1CE4E5B9)
_CHECK_FINAL = np.uint64(0x94D049BB133111EB)


def check_words(keys: pa.Array | pa.ChunkedArray | ByteColumn, seed: int) -> np.ndarray:
    """A fast seeded 64-bit hash of every key, in row order (``uint64``).

    ``h = seed ⊕ (len(x) · c₀)``; then for each 8-byte little-endian word ``w`` of ``x``
    (the last one zero-padded): ``h = (h ⊕ w) · c₁``, ``h ⊕= h >> 31``; finally
    ``h = h · c₂``, ``h ⊕= h >> 29`` (all mod 2⁶⁴). Equal keys give equal words, so distinct
    words mean distinct keys; keys of one length that differ in one word never share a
    word (each step is a bijection). It is neither a digest nor a PRF, and it never leaves
    an enclave: an enclave finds duplicated IDs with it before the session's digest key
    exists, and confirms any equal words with :func:`keyed_digests` (a third of that cost:
    no AES, and no message is built).
    """
    mixed_seed = np.uint64(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return _in_steps(keys, (), lambda piece: _check_chunk(piece, mixed_seed))


def _in_steps(
    keys: pa.Array | pa.ChunkedArray | ByteColumn,
    tail: tuple[int, ...],
    step: Callable[[pa.Array | ByteColumn], np.ndarray],
) -> np.ndarray:
    """``step`` of every ``_CHUNK_ROWS`` rows of ``keys`` (binary, no nulls), in row order,
    gathered into one ``uint64`` array of shape ``(rows, *tail)``."""
    chunks = _binary_chunks(keys)
    out = np.empty((sum(len(c) for c in chunks), *tail), dtype=DIGEST_DTYPE)
    position = 0
    for chunk in chunks:
        for start in range(0, len(chunk), _CHUNK_ROWS):
            piece = chunk.slice(start, _CHUNK_ROWS)
            out[position : position + len(piece)] = step(piece)
            position += len(piece)
    return out


def _binary_chunks(keys: pa.Array | pa.ChunkedArray | ByteColumn) -> list[pa.Array | ByteColumn]:
    """``keys`` as a list of binary chunks without nulls (a :class:`ByteColumn` as it is)."""
    if isinstance(keys, ByteColumn):
        return [keys]
    chunks: list[pa.Array | ByteColumn] = []
    for original in keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]:
        chunk = _as_binary(original)
        if chunk.null_count:
            raise InputDataError(f"keys: expected no nulls, got {chunk.null_count}")
        chunks.append(chunk)
    return chunks


def _values(chunk: pa.Array | ByteColumn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A binary chunk's value offsets (int64), lengths, and the bytes its values cover."""
    if isinstance(chunk, ByteColumn):
        offsets = chunk.offsets.astype(np.int64)
        return offsets, np.diff(offsets), chunk.value_bytes()
    offsets = value_offsets(chunk).astype(np.int64)
    lengths = np.diff(offsets)
    buffer = chunk.buffers()[2]
    if buffer is None or offsets[-1] == offsets[0]:
        return offsets, lengths, np.zeros(0, dtype=np.uint8)
    data = np.frombuffer(buffer, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]
    return offsets, lengths, data


def _check_chunk(chunk: pa.Array | ByteColumn, seed: np.uint64) -> np.ndarray:
    n = len(chunk)
    if n == 0:
        return np.zeros(0, dtype=DIGEST_DTYPE)
    offsets, lengths, data = _values(chunk)
    words = lengths.astype(DIGEST_DTYPE)
    words *= _CHECK_START
    words ^= seed
    low, high = int(lengths.min()), int(lengths.max())
    if low == high:
        # One length: the data is an (n, L) matrix; its word columns are read in place.
        values = data.reshape(n, low)
        full, tail = divmod(low, 8)
        value_words = values[:, : 8 * full].view(DIGEST_DTYPE)
        for word in range(full):
            _check_round(words, value_words[:, word])
        if tail:
            padded = np.zeros((n, 8), dtype=np.uint8)
            padded[:, :tail] = values[:, 8 * full :]
            _check_round(words, padded.view(DIGEST_DTYPE)[:, 0])
    else:
        padded_data = np.zeros(data.size + 16, dtype=np.uint8)
        padded_data[: data.size] = data
        unaligned = np.ndarray(
            shape=(padded_data.size - 7,), dtype=DIGEST_DTYPE, buffer=padded_data, strides=(1,)
        )
        starts = offsets[:-1] - offsets[0]
        word_counts = (lengths + 7) // 8
        for word in range(int(word_counts.max())):
            rows = np.flatnonzero(word_counts > word)
            value = np.take(unaligned, starts[rows] + 8 * word)
            valid = np.clip(lengths[rows] - 8 * word, 0, 8).astype(np.uint64)
            value &= np.where(
                valid < 8, (np.uint64(1) << (valid * np.uint64(8))) - np.uint64(1), _ALL_ONES
            )
            mixed = words[rows]
            _check_round(mixed, value)
            words[rows] = mixed
    words *= _CHECK_FINAL
    words ^= words >> np.uint64(29)
    return words


def _check_round(words: np.ndarray, value: np.ndarray) -> None:
    """One round of :func:`check_words`, in place: ``h = (h ⊕ w) · c₁; h ⊕= h >> 31``."""
    words ^= value
    words *= _CHECK_ROUND
    words ^= words >> np.uint64(31)


def digest_ids(
    prepared: PreparedIds,
    key: bytes,
    duplicates: DuplicatePolicy | str = DuplicatePolicy.ERROR,
) -> DigestSet:
    """Digest one party's prepared IDs, apply the duplicate policy, sort canonically.

    Duplicates are found on the digests (equal IDs, equal digests). With the ``error``
    policy they raise :class:`InputDataError` naming counts and example rows.
    """
    try:
        policy = DuplicatePolicy(duplicates)
    except ValueError as exc:
        accepted = ", ".join(p.value for p in DuplicatePolicy)
        raise ConfigurationError(
            f"duplicates: expected one of {accepted}; got {duplicates!r}"
        ) from exc
    unsorted = keyed_digests(prepared.keys, key, key_columns=prepared.key_columns)
    order = sort_order(unsorted)
    digests = np.take(unsorted, order, axis=0)
    del unsorted
    rows = np.take(np.asarray(prepared.row_index), order)
    del order
    report, keep = _apply_duplicate_policy(digests, rows, policy)
    if keep is not None:
        digests = np.compress(keep, digests, axis=0)
        rows = np.compress(keep, rows)
    digests.flags.writeable = False
    rows.flags.writeable = False
    return DigestSet(digests=digests, row_index=rows, duplicates=report)


def digests_to_bytes(digests: np.ndarray) -> bytes:
    """The digests as 16-byte strings back to back (the wire form)."""
    checked = check_digests(digests, "digests")
    return np.ascontiguousarray(checked, dtype=DIGEST_DTYPE).tobytes()


def digests_from_bytes(
    data: bytes | bytearray | memoryview, *, canonical: bool = True
) -> np.ndarray:
    """Parse the wire form; with ``canonical`` (default) require strictly increasing order.

    Raises :class:`ProtocolError` if the length is not a multiple of 16, or if a canonical
    array is out of order or repeats a digest. The result is a read-only view when possible.
    """
    view = memoryview(data)
    if view.nbytes % DIGEST_BYTES:
        raise ProtocolError(
            f"digests: expected a multiple of {DIGEST_BYTES} bytes, got {view.nbytes}"
        )
    digests = np.frombuffer(view, dtype=DIGEST_DTYPE).reshape(-1, 2)
    if canonical and not is_canonical(digests):
        raise ProtocolError("digests: expected strictly increasing (canonical) order")
    return digests


def _as_binary(chunk: pa.Array) -> pa.Array:
    kind = chunk.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return chunk
    if pa.types.is_string(kind):
        return chunk.view(pa.binary())
    if pa.types.is_large_string(kind):
        return chunk.view(pa.large_binary())
    raise InputDataError(f"keys: expected binary or string values, got type {kind}")


def _digest_chunk(chunk: pa.Array | ByteColumn, encryptor: CipherContext) -> np.ndarray:
    """CBC-MAC of the length-prefixed, zero-padded encoding of each value in ``chunk``."""
    n = len(chunk)
    result = np.empty((n, 2), dtype=DIGEST_DTYPE)
    if n == 0:
        return result
    offsets, lengths, data = _values(chunk)
    low, high = int(lengths.min()), int(lengths.max())
    if low == high:
        # Every value has the same length: the data buffer already is an (n, L) matrix.
        message = _message_fixed(data.reshape(n, low), low)
        result[:] = _cbc_mac(message, encryptor)
        return result
    # Variable lengths: gather 8-byte words from an unaligned word view of the data.
    padded = np.zeros(data.size + 16, dtype=np.uint8)
    padded[: data.size] = data
    words = np.ndarray(shape=(padded.size - 7,), dtype=DIGEST_DTYPE, buffer=padded, strides=(1,))
    starts = offsets[:-1] - offsets[0]
    blocks = (lengths + (8 + 15)) // 16
    for blocks_here in np.unique(blocks).tolist():
        rows = np.flatnonzero(blocks == blocks_here)
        message = _message_gathered(words, starts[rows], lengths[rows], blocks_here)
        result[rows] = _cbc_mac(message, encryptor)
    return result


def _message_fixed(values: np.ndarray, length: int) -> np.ndarray:
    """Block-major messages ``(m, n, 2)`` for ``n`` values of one length (rows of ``values``).

    Message word ``w >= 1`` holds value bytes ``[8 (w - 1), 8 w)``: whole words are copied
    as 64-bit words (from an unaligned word view of each row), a last partial word byte by
    byte, and only the padding after it is zeroed.
    """
    n = len(values)
    blocks = (length + 8 + 15) // 16
    message = np.empty((blocks, n, 2), dtype=DIGEST_DTYPE)
    message[0, :, 0] = length
    full, tail = divmod(length, 8)
    if full:
        value_words = values[:, : 8 * full].view(DIGEST_DTYPE)  # (n, full), rows unaligned
        for word in range(full):
            target = word + 1
            message[target // 2, :, target % 2] = value_words[:, word]
    filled = full + 1
    if tail:
        message[filled // 2, :, filled % 2] = 0
        as_bytes = message.view(np.uint8).reshape(blocks, n, 16)
        first = 8 * (filled % 2)
        as_bytes[filled // 2, :, first : first + tail] = values[:, 8 * full : length]
        filled += 1
    for word in range(filled, 2 * blocks):
        message[word // 2, :, word % 2] = 0
    return message


def _message_gathered(
    words: np.ndarray, starts: np.ndarray, lengths: np.ndarray, blocks: int
) -> np.ndarray:
    """Block-major messages for values of ``blocks`` blocks, gathered word by word."""
    n = len(starts)
    message = np.empty((blocks, n, 2), dtype=DIGEST_DTYPE)
    message[0, :, 0] = lengths
    for word in range(2 * blocks - 1):
        # Data word ``word`` is message word ``word + 1``.
        target = message[(word + 1) // 2, :, (word + 1) % 2]
        np.take(words, starts + 8 * word, out=target)
        valid = np.clip(lengths - 8 * word, 0, 8).astype(np.uint64)
        target &= np.where(
            valid < 8, (np.uint64(1) << (valid * np.uint64(8))) - np.uint64(1), _ALL_ONES
        )
    return message


def _cbc_mac(message: np.ndarray, encryptor: CipherContext) -> np.ndarray:
    """CBC-MAC (zero IV) of block-major ``message`` (shape (m, n, 2)), in place, vectorised."""
    blocks, n, _ = message.shape
    out = np.empty(n * 16 + 15, dtype=np.uint8)
    ciphertext = out[: n * 16].view(DIGEST_DTYPE).reshape(n, 2)
    for block in range(blocks):
        state = message[block]
        if block:
            np.bitwise_xor(state, ciphertext, out=state)
        encryptor.update_into(state.view(np.uint8).reshape(-1).data, out.data)
    return ciphertext


def duplicate_message(
    duplicated_ids: int, duplicate_rows: int, examples: Sequence[Sequence[int]]
) -> str:
    """The refusal of duplicated IDs under the ``error`` policy (rows, never ID text)."""
    listed = "; ".join("rows " + ", ".join(str(r) for r in group) for group in examples)
    more = "; ..." if duplicated_ids > len(examples) else ""
    return (
        f"{duplicated_ids} duplicated ID(s) on {duplicate_rows} rows (e.g. {listed}{more}; "
        "0-based data rows); fix the input or choose a duplicate policy with --duplicates "
        "(first, drop-all)"
    )


def _apply_duplicate_policy(
    digests: np.ndarray, rows: np.ndarray, policy: DuplicatePolicy
) -> tuple[DuplicateReport, np.ndarray | None]:
    """Find runs of equal digests in sorted ``digests``; return the report and a keep mask."""
    n = len(digests)
    if n < 2:
        return DuplicateReport(policy, 0, 0, 0, ()), None
    same = (digests[1:, 0] == digests[:-1, 0]) & (digests[1:, 1] == digests[:-1, 1])
    if not same.any():
        return DuplicateReport(policy, 0, 0, 0, ()), None
    same_as_previous = np.concatenate(([False], same))
    same_as_next = np.concatenate((same, [False]))
    in_group = same_as_previous | same_as_next
    group_starts = np.flatnonzero(same_as_next & ~same_as_previous)
    group_ends = np.flatnonzero(same_as_previous & ~same_as_next) + 1
    duplicated_ids = len(group_starts)
    duplicate_rows = int(np.count_nonzero(in_group))
    # Within a run the rows are in increasing order (the sort breaks ties by position).
    first_rows = rows[group_starts]
    shown = np.argsort(first_rows, kind="stable")[:EXAMPLE_ROWS]
    examples = tuple(
        tuple(
            int(r)
            for r in rows[group_starts[g] : min(group_ends[g], group_starts[g] + EXAMPLE_ROWS)]
        )
        for g in shown.tolist()
    )
    if policy is DuplicatePolicy.ERROR:
        raise InputDataError(duplicate_message(duplicated_ids, duplicate_rows, examples))
    keep = ~same_as_previous if policy is DuplicatePolicy.FIRST else ~in_group
    dropped = n - int(np.count_nonzero(keep))
    report = DuplicateReport(policy, duplicated_ids, duplicate_rows, dropped, examples)
    return report, keep
