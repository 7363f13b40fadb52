"""The defects the fuzzers found (issue 13 item 5), each pinned by its smallest input.

Before the fix each of these escaped as a bare Python or third-party exception (a traceback,
or a listener task that died) instead of Accord's own one-line error.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from accord.checkpoint_files import dumps_tree, loads_tree, read_checkpoint
from accord.errors import ConfigurationError, InputDataError, ProtocolError

DEEP = b"[" * 5000 + b"]" * 5000


def test_hello_with_infinite_party_count_or_deep_json_is_a_malformed_hello() -> None:
    # Were OverflowError (int(inf)) and RecursionError: a listener's hello task died.
    from accord.tee.runtime.transport import Hello, parse_hello

    own = Hello("a", "s1", 2)
    for body in (b'{"party": "b", "session": "s1", "parties": Infinity}', DEEP[:4000]):
        with pytest.raises(ProtocolError, match=r"127\.0\.0\.1:9 sent a malformed hello"):
            parse_hello(body, own, "127.0.0.1:9")


def test_enclave_call_metadata_nested_too_deep_is_a_protocol_error() -> None:
    from accord.tee.core.wire import decode_meta

    with pytest.raises(ProtocolError, match="malformed call: metadata is not JSON"):
        decode_meta(DEEP, "call")


def _npz(tree_text: bytes) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, __tree__=np.frombuffer(tree_text, dtype=np.uint8))
    return buffer.getvalue()


def test_checkpoint_nested_too_deep_is_corrupt() -> None:
    with pytest.raises(InputDataError, match="corrupt checkpoint"):
        loads_tree(_npz(DEEP), "ck")


def test_a_bare_array_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    # Was TypeError: np.load returns an ndarray (no context manager) for a .npy, e.g. a
    # checkpoint whose zip header was cut off.
    buffer = io.BytesIO()
    np.save(buffer, np.arange(4))
    with pytest.raises(InputDataError, match="ck: not an Accord checkpoint"):
        loads_tree(buffer.getvalue(), "ck")
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(dumps_tree({"a": np.arange(3)})[56:])  # the fuzzer's input
    with pytest.raises(InputDataError, match="not an Accord checkpoint"):
        read_checkpoint(path)


def _with_compression_method(data: bytes, method: int) -> bytes:
    """The zip with every member's compression method set to ``method``."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = out.find(signature)
        while at >= 0:
            out[at + offset : at + offset + 2] = struct.pack("<H", method)
            at = out.find(signature, at + 4)
    return bytes(out)


@pytest.mark.parametrize("flag", ["unsupported-compression", "encrypted"])
def test_unreadable_zip_members_are_refused_and_the_file_is_closed(
    tmp_path: Path, flag: str
) -> None:
    # Were NotImplementedError / RuntimeError from zipfile, and a file handle numpy leaked
    # (a ResourceWarning, an error under this suite's settings).
    data = dumps_tree({"a": np.arange(3)})
    if flag == "unsupported-compression":
        data = _with_compression_method(data, 99)
    else:
        out = bytearray(data)
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = out.find(signature)
            while at >= 0:
                out[at + offset] |= 0x01  # general purpose flag bit 0: encrypted
                at = out.find(signature, at + 4)
        data = bytes(out)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # a real zip, only unreadable
        assert archive.namelist()
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(data)
    with pytest.raises(InputDataError, match="not a readable checkpoint"):
        read_checkpoint(path)


def test_sealed_run_state_that_is_not_an_object_is_malformed() -> None:
    from accord.tee.core.bucket_plan import RunState

    for payload in (b"null", b"[1]", DEEP, b'{"stage": "spill"}'):
        with pytest.raises(ProtocolError, match="sealed run state: malformed"):
            RunState.from_bytes(payload)


def _manifest(**changes: object) -> str:
    from accord.tee.runtime.runstate import MANIFEST_VERSION

    document: dict[str, object] = {
        "version": MANIFEST_VERSION,
        "party": "a",
        "session": "s1",
        "settings": {},
        "inputs": {"input": {"path": "a.csv", "size": 3, "sha256": "00"}},
    }
    document.update(changes)
    return json.dumps(document)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DEEP.decode(), "invalid JSON"),
        (_manifest(inputs=[[1, 2, 3]]), "malformed run manifest"),
        (_manifest(stage=5), "stage: expected str, got 5"),
        (_manifest(buckets="4"), "buckets: expected int or NoneType"),
        (_manifest(inputs={"input": {"path": 1, "size": 3, "sha256": "00"}}), "inputs.input"),
    ],
)
def test_malformed_run_manifests_are_refused_naming_the_file(text: str, message: str) -> None:
    from accord.tee.runtime.runstate import RunManifest

    with pytest.raises(ConfigurationError, match=r"run/manifest\.json: ") as caught:
        RunManifest.from_json(text, "run/manifest.json")
    assert message in str(caught.value)


def test_sealed_state_that_is_not_base64_is_a_configuration_error() -> None:
    # Was binascii.Error when a resume read the manifest's sealed state.
    from accord.tee.runtime.runstate import RunManifest

    manifest = RunManifest.from_json(_manifest(sealed_state="not base64!"), "m.json")
    with pytest.raises(ConfigurationError, match="sealed_state is not base64"):
        manifest.sealed_bytes()


def test_csv_whose_header_is_not_utf8_is_an_input_error(tmp_path: Path) -> None:
    from accord.tables import iter_key_batches

    path = tmp_path / "ids.csv"
    path.write_bytes(b"\x80id,age\nalice,30\n")
    with pytest.raises(InputDataError, match="the header is not UTF-8"):
        list(iter_key_batches(path, ["id"]))


def test_a_corrupt_dictionary_column_is_an_input_error() -> None:
    # A Parquet file whose dictionary indices point past the dictionary: ArrowIndexError.
    from accord.alignment.normalise import plain_key_column

    column = pa.DictionaryArray.from_arrays(pa.array([0, 4]), pa.array(["a"]), safe=False)
    with pytest.raises(InputDataError, match="key column 'id': its dictionary encoding is corrupt"):
        plain_key_column(column, "id")


@pytest.mark.parametrize(
    "message",
    [b"", b"\x00\x00", struct.pack("!I", 3) + b"ab", struct.pack("!I", 2) + b"\xff\xfe"],
)
def test_malformed_roster_is_a_protocol_error(message: bytes) -> None:
    from accord.tee.core.messages import decode_roster

    with pytest.raises(ProtocolError, match="peer 'b' sent a malformed roster"):
        decode_roster(message, "b")


def test_short_digest_and_confirm_messages_are_protocol_errors() -> None:
    from accord.tee.core.messages import decode_confirm, decode_digests

    with pytest.raises(ProtocolError, match="malformed digest message"):
        decode_digests(b"\x00" * 5, "b")
    with pytest.raises(ProtocolError, match="malformed confirmation"):
        decode_confirm(b"\x00" * 39, "b")
    assert decode_confirm(struct.pack("!Q32s", 7, b"f" * 32), "b") == (7, b"f" * 32)


def test_a_welcome_naming_huge_layers_is_refused_before_the_model_is_built() -> None:
    # A hidden width of a billion made the node try to build the model (gigabytes).
    from accord.federation.grid import RunSpec
    from accord.federation.worker import NodeWorker
    from accord.training.local import LocalTrainingSettings
    from accord.training.models import ModelSpec

    worker = NodeWorker(
        "node-00", np.zeros((6, 4), np.float32), np.arange(6, dtype=np.int64) % 3, seed=1
    )
    spec = RunSpec("run", ModelSpec(hidden=(10**9,)), 4, 3, 15, LocalTrainingSettings(), 1.0, False)
    with pytest.raises(ProtocolError, match=r"its layers \[4, 1000000000, 3\] have 8000000003"):
        worker.configure(spec)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((0, 17, 135637824071393762), "has a size larger than"),  # found by the fuzzer
        ((1,) * 40, "40 dimensions, more than the 32 allowed"),
    ],
)
def test_a_tensor_shape_numpy_cannot_hold_is_refused(shape: tuple[int, ...], message: str) -> None:
    # Was ValueError ("array is too big"): the shape holds no bytes, so the size check
    # passed, and numpy refused to reshape the empty buffer to it.
    from accord.federation.proto import federation_pb2 as pb
    from accord.federation.tensors import TensorAssembler

    chunk = pb.TensorChunk(dtype=pb.DTYPE_FLOAT32, shape=list(shape), last=True)
    with pytest.raises(ProtocolError, match=message):
        TensorAssembler(1 << 20).add(chunk)
