"""Plain key columns in the enclave: the numpy path gives what the Arrow path gives.

A ``binary`` key column without nulls (what a host reads from a CSV) reaches the enclave's
loader as a :class:`~accord.alignment.normalise.ByteColumn`; when the normalisation rule
leaves every value as it is (:func:`~accord.alignment.normalise.plain_ids`) the loader skips
``prepare_ids`` and pyarrow is never imported. The oracle for every check here is the Arrow
path as it was: the same values given to the loader as Arrow arrays.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.alignment import check_words, keyed_digests
from accord.alignment.normalise import ByteColumn, plain_ids
from accord.errors import InputDataError, ProtocolError
from accord.tee.core.loader import IdLoader, decode_columns
from accord.tee.core.wire import encode_columns
from tests.test_tee_protocol import KEY, config


def _wire(array: pa.Array) -> tuple[dict[str, object], bytes]:
    """``array`` as a host sends it with ``LOAD_IDS``: the metadata and the body."""
    meta, buffers = encode_columns([array])
    return meta, b"".join(bytes(buffer) for buffer in buffers)


def _load(
    batches: Sequence[Sequence[object]], *, via_wire: bool, duplicates: str, skip_invalid: bool
) -> tuple[object, ...]:
    """Everything the loader gives for ``batches``, or the error it raises."""
    loader = IdLoader(config(duplicates, skip_invalid))
    loader.set_key(KEY)
    try:
        for values in batches:
            array = pa.array(values, type=pa.binary())
            loader.add(decode_columns(*_wire(array)) if via_wire else [array])
        report = loader.finish()
        result = loader.digest_set()
    except InputDataError as error:
        return ("error", str(error))
    return (report, result.digests.tobytes(), result.row_index.tolist(), result.duplicates)


_VALUE = st.one_of(
    st.sampled_from([b"id-1", b"id-2", b"x", b"ab", b"abcdefgh", b"abcdefghijklmnopq"]),
    st.binary(min_size=0, max_size=24),  # empties, whitespace, non-ASCII, invalid UTF-8
    st.text(alphabet="abcXYZ09-_ \t\u00e9\u0301", max_size=12).map(str.encode),
)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_VALUE, min_size=1, max_size=30), min_size=1, max_size=3),
    duplicates=st.sampled_from(["error", "first", "drop-all"]),
    skip_invalid=st.booleans(),
)
def test_ids_off_the_wire_give_what_arrow_arrays_give(
    batches: list[list[bytes]], duplicates: str, skip_invalid: bool
) -> None:
    arrow = _load(batches, via_wire=False, duplicates=duplicates, skip_invalid=skip_invalid)
    wire = _load(batches, via_wire=True, duplicates=duplicates, skip_invalid=skip_invalid)
    assert wire == arrow


def test_a_plain_binary_column_is_read_with_numpy_and_digests_like_arrow() -> None:
    values = [b"id-%06d" % i for i in range(1000)] + [b"x" * 40]
    array = pa.array(values, type=pa.binary())
    (column,) = decode_columns(*_wire(array))
    assert isinstance(column, ByteColumn)
    assert len(column) == len(values)
    assert plain_ids(column) is not None
    assert np.array_equal(keyed_digests(column, KEY), keyed_digests(array, KEY))
    assert np.array_equal(check_words(column, 7), check_words(array, 7))
    assert pa.array(column.to_arrow()).to_pylist() == values


def test_a_sliced_column_keeps_its_offset() -> None:
    array = pa.array([b"skip-me", b"a1", b"b2", b"c3"], type=pa.binary()).slice(1)
    (column,) = decode_columns(*_wire(array))
    assert isinstance(column, ByteColumn)
    assert column.to_arrow().to_pylist() == [b"a1", b"b2", b"c3"]


@pytest.mark.parametrize(
    "array",
    [
        pa.array([b"a", None], type=pa.binary()),  # a null
        pa.array(["caf\u00e9"], type=pa.string()),  # text that Arrow checks as UTF-8
        pa.array([b"a"], type=pa.large_binary()),
        pa.array([7, 8], type=pa.int64()),
    ],
)
def test_other_columns_are_rebuilt_by_arrow(array: pa.Array) -> None:
    (column,) = decode_columns(*_wire(array))
    assert isinstance(column, pa.Array)
    assert column.to_pylist() == array.to_pylist()


def test_ascii_text_is_plain_and_values_needing_the_rule_are_not() -> None:
    (text,) = decode_columns(*_wire(pa.array(["a1", "b2"], type=pa.string())))
    assert isinstance(text, ByteColumn)
    for values in ([b"a", b" b"], [b"a", b""], [b"a", b"\xc3\xa9"], [b"a\t"]):
        (column,) = decode_columns(*_wire(pa.array(values, type=pa.binary())))
        assert isinstance(column, ByteColumn)
        assert plain_ids(column) is None, values


def _body(offsets: list[int], data: bytes) -> tuple[dict[str, object], bytes]:
    raw = np.array(offsets, dtype=np.int32).tobytes()
    column = {
        "type": "binary",
        "length": len(offsets) - 1,
        "offset": 0,
        "null_count": 0,
        "buffers": [None, len(raw), len(data)],
    }
    return {"columns": [column]}, raw + data


@pytest.mark.parametrize(
    ("offsets", "data"),
    [
        ([0, 3, 2], b"abc"),  # decreasing
        ([0, 2, 5], b"abc"),  # past the data
        ([-1, 2], b"abc"),  # before the data
    ],
)
def test_bad_offsets_are_refused_as_arrow_refuses_them(offsets: list[int], data: bytes) -> None:
    with pytest.raises(ProtocolError, match="LOAD_IDS: malformed key columns"):
        decode_columns(*_body(offsets, data))


def test_an_offsets_buffer_too_short_for_the_length_is_refused() -> None:
    meta, body = _body([0, 1, 2], b"ab")
    meta["columns"][0]["length"] = 5  # type: ignore[index]
    with pytest.raises(ProtocolError):
        decode_columns(meta, body)


def _enclave_loads_pyarrow(values: list[bytes]) -> bool:
    """Whether a fresh enclave interpreter, loading ``values`` off the wire, loads pyarrow."""
    meta, body = _wire(pa.array(values, type=pa.binary()))
    probe = (
        "import json, sys\n"
        "import accord.tee.runtime.enclave\n"
        "from accord.alignment import DuplicatePolicy\n"
        "from accord.tee.core.loader import IdLoader, SessionConfig, decode_columns\n"
        "meta, body = json.loads(sys.argv[1]), bytes.fromhex(sys.argv[2])\n"
        "config = SessionConfig('a', 's', 2, ('id',), DuplicatePolicy.ERROR, False, None)\n"
        "loader = IdLoader(config, random_bytes=lambda size: bytes(size))\n"
        "loader.add(decode_columns(meta, body))\n"
        "loader.finish()\n"
        "loader.set_key(bytes(32))\n"
        "assert len(loader.digest_set()) == int(sys.argv[3])\n"
        "print(json.dumps('pyarrow' in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(meta), body.hex(), str(len(values))],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return bool(json.loads(done.stdout))


def test_the_enclave_loads_plain_ids_without_pyarrow() -> None:
    assert not _enclave_loads_pyarrow([b"id-%04d" % i for i in range(100)])
    assert _enclave_loads_pyarrow([b"id-1", b" id-2"])  # a value to trim: the Arrow path
