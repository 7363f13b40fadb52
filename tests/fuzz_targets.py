"""Fuzz targets: every parser that faces a peer or a file, with the inputs that feed it.

Each :class:`Target` has a Hypothesis strategy of inputs and a ``run`` that hands one input
to the real parser (and the code that acts on what it parsed, where that is cheap). The
property, checked by :func:`check` for every input:

* the input parses, or the library raises its own error (:class:`accord.errors.AccordError`)
  with a non-empty message — never another exception;
* a file parser leaves no file behind (no partial output).

Hangs are caught by the runner's timeout. Inputs are random bytes and text, and structured:
valid messages and files mutated byte by byte (flips, cuts, splices, repeats), valid
messages with fields drawn at random (huge counts, NaN, mismatched lengths, deep JSON).

Used by ``tests/test_fuzz_parsers.py`` (500 inputs per target in CI) and by
``benchmarks/fuzz.py`` (10,000 or more per target, with a JSON summary).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError
from hypothesis import strategies as st

from accord.errors import AccordError

# ------------------------------------------------------------------ the property


@dataclass
class Target:
    """One parser under fuzzing."""

    name: str
    #: What faces the input: ``peer`` (a network peer or the host, for the enclave) or ``file``.
    faces: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], object]
    #: Inputs run, parsed (no error) and refused (an AccordError), updated by :func:`check`.
    counts: dict[str, int] = field(default_factory=lambda: {"inputs": 0, "parsed": 0, "refused": 0})


class UndecodableError(Exception):
    """The input never reaches Accord's code (protobuf refuses the bytes; gRPC drops them)."""


def check(target: Target, value: Any) -> None:
    """Run one input; fail unless it parses or raises an AccordError with a message."""
    target.counts["inputs"] += 1
    if target.faces != "file":
        _outcome(target, value)
        return
    workdir = _workdir(target)
    _outcome(target, _with_folder(value, workdir))
    left = sorted(path.name for path in workdir.iterdir())
    assert left in ([], ["input"]), f"{target.name} left {left} behind"
    for path in workdir.iterdir():  # the input itself, for the next one
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


_WORKDIRS: dict[str, tempfile.TemporaryDirectory[str]] = {}


def _workdir(target: Target) -> Path:
    """An empty folder of this target's own (one per target and run, removed at exit)."""
    if target.name not in _WORKDIRS:
        _WORKDIRS[target.name] = tempfile.TemporaryDirectory(prefix="accord-fuzz-")
    return Path(_WORKDIRS[target.name].name)


def remove_workdirs() -> None:
    for folder in _WORKDIRS.values():
        folder.cleanup()
    _WORKDIRS.clear()


def _outcome(target: Target, value: Any) -> None:
    try:
        target.run(value)
    except UndecodableError:
        target.counts["refused"] += 1
    except AccordError as error:
        assert str(error).strip(), f"{target.name}: {type(error).__name__} without a message"
        target.counts["refused"] += 1
    else:
        target.counts["parsed"] += 1


class _Folder:
    """Placeholder replaced by the input's own temporary folder."""


FOLDER = _Folder()


def _with_folder(value: Any, folder: Path) -> Any:
    if isinstance(value, tuple) and value and value[0] is FOLDER:
        return (folder, *value[1:])
    return value


# ------------------------------------------------------------------ mutations


def _mutate(data: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, position, length, extra in edits:
        at = position % (len(out) + 1)
        if kind == 0 and out:  # flip one byte
            out[at % len(out)] ^= 1 + (length % 255)
        elif kind == 1:  # cut at a position
            del out[at:]
        elif kind == 2:  # insert bytes
            out[at:at] = extra
        elif kind == 3:  # delete a span
            del out[at : at + length]
        elif kind == 4:  # repeat a span
            out[at:at] = out[at : at + length]
        elif kind == 5 and len(out) >= 4:  # overwrite 4 bytes with an extreme value
            value = (0, 1, 0x7FFFFFFF, 0xFFFFFFFF, length)[length % 5]
            out[at % (len(out) - 3) : at % (len(out) - 3) + 4] = struct.pack("!I", value)
    return bytes(out)


_EDITS = st.lists(
    st.tuples(
        st.integers(0, 5), st.integers(0, 1 << 20), st.integers(0, 64), st.binary(max_size=16)
    ),
    min_size=1,
    max_size=3,
)


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid bytes from ``valid``, edited one to four times."""
    return st.builds(_mutate, valid, _EDITS)


def any_bytes(valid: st.SearchStrategy[bytes], max_size: int = 256) -> st.SearchStrategy[bytes]:
    """Random bytes, the valid ones, and mutations of them."""
    return st.one_of(st.binary(max_size=max_size), valid, mutated(valid))


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=8,
)


def _json_text(value: Any) -> str:
    return json.dumps(value)  # NaN and Infinity as Python's json writes (and reads) them


#: JSON nested deeper than the parser's recursion limit.
DEEP_JSON = st.sampled_from(["[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000])


def json_documents(*valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """JSON texts: the valid documents with values replaced, random ones, deep ones."""

    def replace(document: dict[str, Any], key_index: int, value: Any, drop: bool) -> bytes:
        changed = dict(document)
        key = sorted(changed)[key_index % len(changed)]
        if drop:
            changed.pop(key)
        else:
            changed[key] = value
        return _json_text(changed).encode()

    bases = st.sampled_from(valid)
    return st.one_of(
        st.builds(replace, bases, st.integers(0, 50), JSON_VALUES, st.booleans()),
        JSON_VALUES.map(lambda value: _json_text(value).encode()),
        DEEP_JSON.map(str.encode),
        mutated(bases.map(lambda document: _json_text(document).encode())),
    )


# ------------------------------------------------------------------ federation (server side)


def _federation() -> SimpleNamespace:
    """A small logistic run's spec (4 features, 3 classes, dim 15) and its messages."""
    from accord.federation.fingerprint import Fingerprint
    from accord.federation.grid import RunSpec
    from accord.federation.proto import federation_pb2 as pb
    from accord.federation.tensors import PROTOCOL_VERSION, encode_buffers, encode_tensor
    from accord.training.local import LocalTrainingSettings
    from accord.training.models import ModelSpec

    spec = RunSpec(
        "run-1",
        ModelSpec(kind="logistic", hidden=()),
        4,
        3,
        15,
        LocalTrainingSettings(epochs=1, batch_size=8),
        1.0,
        True,
        fingerprint=Fingerprint({"model": "ab" * 32}),
    )
    register = pb.Register(
        protocol_version=PROTOCOL_VERSION,
        node_id="node-00",
        sample_count=10,
        n_features=4,
        n_classes=3,
        validation_sample_count=5,
        fingerprint={"model": "ab" * 32},
        feature_moments=pb.FeatureMoments(count=10, sums=[1.0] * 4, sums_of_squares=[2.0] * 4),
    )
    gradient = np.linspace(-1, 1, 15, dtype=np.float32)
    chunks = encode_tensor(gradient, 16)
    first = [
        pb.NodeMessage(
            first_gradient=pb.FirstGradient(
                round_index=0,
                gradient=chunk,
                buffers=encode_buffers({"bn": np.ones(3, np.float32)}) if chunk.last else [],
            )
        )
        for chunk in chunks
    ]
    return SimpleNamespace(spec=spec, register=register, first=first, gradient=gradient, pb=pb)


_FED: SimpleNamespace | None = None


def federation() -> SimpleNamespace:
    global _FED  # noqa: PLW0603 - built once, on first use (imports torch)
    if _FED is None:
        _FED = _federation()
    return _FED


_U64 = st.integers(0, 2**64 - 1)
_U32 = st.integers(0, 2**32 - 1)
_DOUBLES = st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6)


@st.composite
def _registers(draw: st.DrawFn) -> bytes:
    pb = federation().pb
    moments = draw(
        st.none()
        | st.builds(
            lambda count, sums, squares: pb.FeatureMoments(
                count=count, sums=sums, sums_of_squares=squares
            ),
            _U64,
            _DOUBLES,
            _DOUBLES,
        )
    )
    register = pb.Register(
        protocol_version=draw(st.sampled_from([2, 2, 1, 0, 2**32 - 1])),
        node_id=draw(st.sampled_from(["node-00", ""]) | st.text(max_size=80)),
        sample_count=draw(_U64),
        n_features=draw(st.sampled_from([4]) | _U32),
        n_classes=draw(st.sampled_from([3]) | _U32),
        validation_sample_count=draw(_U64),
        software_version=draw(st.text(max_size=10)),
        fingerprint=draw(st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=4)),
        feature_moments=moments,
    )
    return pb.NodeMessage(register=register).SerializeToString()


def _run_register(data: bytes) -> None:
    from accord.federation.connection import registration_info
    from accord.federation.grid import admission_problem
    from accord.federation.tensors import PROTOCOL_VERSION

    fed = federation()
    try:
        message = fed.pb.NodeMessage.FromString(data)
    except DecodeError as error:
        raise UndecodableError from error
    if message.WhichOneof("body") != "register":
        return  # the server aborts: "the first message must be Register"
    if message.register.protocol_version != PROTOCOL_VERSION:
        return  # refused with one line before anything else is read
    info = registration_info(message.register)
    problem = admission_problem(info, fed.spec, None)
    assert problem is None or isinstance(problem, str)


def _valid_register() -> st.SearchStrategy[bytes]:
    return st.just(b"").map(
        lambda _: federation().pb.NodeMessage(register=federation().register).SerializeToString()
    )


REGISTER = st.one_of(any_bytes(_valid_register()), _registers(), mutated(_registers()))


@st.composite
def _chunks(draw: st.DrawFn) -> Any:
    pb = federation().pb
    return pb.TensorChunk(
        dtype=draw(st.integers(0, 12)),
        shape=draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 20), max_size=3)),
        offset=draw(st.integers(0, 64) | _U64),
        data=draw(st.binary(max_size=80)),
        last=draw(st.booleans()),
    )


@st.composite
def _node_messages(draw: st.DrawFn) -> list[bytes]:
    """A node's messages after registration: chunked gradients (valid, altered, random),
    evaluation replies, failures, a second Register, unknown bodies."""
    fed = federation()
    pb = fed.pb
    valid = [message.SerializeToString() for message in fed.first]
    options = st.one_of(
        st.sampled_from(valid),
        mutated(st.sampled_from(valid)),
        st.builds(
            lambda round_index, chunk, names: pb.NodeMessage(
                first_gradient=pb.FirstGradient(
                    round_index=round_index,
                    gradient=chunk,
                    buffers=[pb.NamedTensor(name=name, tensor=chunk) for name in names],
                )
            ).SerializeToString(),
            st.sampled_from([0, 0, 1]),
            _chunks(),
            st.lists(st.text(max_size=5), max_size=2),
        ),
        st.builds(
            lambda round_index, accuracy, loss, count: pb.NodeMessage(
                evaluate_reply=pb.EvaluateReply(
                    round_index=round_index, accuracy=accuracy, loss=loss, sample_count=count
                )
            ).SerializeToString(),
            st.sampled_from([0, 1]),
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
            _U64,
        ),
        st.builds(
            lambda round_index, reason: pb.NodeMessage(
                failure=pb.RoundFailure(round_index=round_index, reason=reason)
            ).SerializeToString(),
            st.sampled_from([0, 1]),
            st.text(max_size=400),
        ),
        _valid_register(),
        st.binary(max_size=64),
    )
    return draw(st.lists(options, min_size=1, max_size=4))


def _run_node_messages(messages: list[bytes]) -> None:
    """The server's own handler (``GrpcGrid._on_message``) on a session awaiting round 0's
    first gradient and then its evaluation; what it accepts goes through the round engine's
    check, as in a run."""
    from accord.errors import ProtocolError
    from accord.federation.connection import Connection
    from accord.federation.grid import NodeInfo
    from accord.federation.server import GrpcGrid
    from accord.federation.tensors import TensorAssembler
    from accord.rounds import NodeUpdate, check_first_gradient

    fed = federation()
    loop = _loop()

    async def connection() -> Connection:
        return Connection(NodeInfo("node-00", 10, 4, 3), context=None)  # type: ignore[arg-type]

    session = loop.run_until_complete(connection())
    grid = object.__new__(GrpcGrid)  # its message handling needs none of its sockets
    waiting = [("first", 0), ("evaluate", 0)]
    refused: ProtocolError | None = None
    future: asyncio.Future[Any] | None = None
    for data in messages:
        if future is None or future.done():
            if not waiting:
                break
            session.expect = waiting.pop(0)
            future = session.future = loop.create_future()
            session.assembler = TensorAssembler(fed.spec.dim * 4)
        try:
            message = fed.pb.NodeMessage.FromString(data)
        except DecodeError:
            continue  # gRPC drops the stream's undecodable message; count the rest
        try:
            GrpcGrid._on_message(grid, session, message)
        except ProtocolError as error:  # the server ends the session with this line
            refused = error
            break
        if future.done():
            status, value, _ = future.result()
            if status == "ok" and isinstance(value, NodeUpdate):
                check_first_gradient(value.first_gradient, fed.spec.dim)
            elif status == "ok" and isinstance(value, np.ndarray):
                check_first_gradient(value, fed.spec.dim)
    if refused is not None:
        raise refused


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP  # noqa: PLW0603 - one loop for every input of the run
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    return _LOOP


def close_loop() -> None:
    global _LOOP  # noqa: PLW0603
    if _LOOP is not None:
        _LOOP.close()
        _LOOP = None


# ------------------------------------------------------------------ federation (node side)


def _node() -> SimpleNamespace:
    """A real node worker (and its message handler) for the small logistic run."""
    from accord.federation.client import _MessageHandler
    from accord.federation.welcome import welcome_message
    from accord.federation.worker import NodeWorker

    fed = federation()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(10, 4)).astype(np.float32)
    labels = np.arange(10, dtype=np.int64) % 3
    validation = (features[:5].copy(), labels[:5].copy())
    welcome = welcome_message(fed.spec, "node-00", 0)

    def handler() -> Any:
        worker = NodeWorker("node-00", features, labels, seed=1, validation=validation)
        client = SimpleNamespace(
            worker=worker,
            settings=SimpleNamespace(chunk_bytes=1 << 20),
            _failpoints={},
            sleep=lambda seconds: None,
            sessions=0,
        )
        import queue

        return _MessageHandler(client, queue.Queue())  # type: ignore[arg-type]

    return SimpleNamespace(handler=handler, welcome=welcome)


_NODE: SimpleNamespace | None = None


def node() -> SimpleNamespace:
    global _NODE  # noqa: PLW0603 - built once, on first use
    if _NODE is None:
        _NODE = _node()
    return _NODE


@st.composite
def _welcomes(draw: st.DrawFn) -> bytes:
    pb = federation().pb
    welcome = pb.Welcome()
    welcome.CopyFrom(node().welcome)
    field_name = draw(
        st.sampled_from(
            ["protocol_version", "n_features", "n_classes", "dim", "next_round", "config_json",
             "model", "local", "server_learning_rate", "layout", "app", "run_id", "node_id"]
        )
    )  # fmt: skip
    if field_name in ("protocol_version", "n_features", "n_classes"):
        setattr(welcome, field_name, draw(st.sampled_from([0, 1, 2, 3, 4]) | _U32))
    elif field_name in ("dim", "next_round"):
        setattr(welcome, field_name, draw(st.sampled_from([0, 15, 16]) | _U64))
    elif field_name == "config_json":
        text = draw(json_documents({"a": 1}))
        welcome.config_json = text.decode("utf-8", "replace")
    elif field_name == "model":
        welcome.model.kind = draw(st.sampled_from(["mlp", "logistic", "", "cnn"]))
        welcome.model.hidden[:] = draw(st.lists(st.integers(0, 2**32 - 1), max_size=3))
    elif field_name == "local":
        welcome.local.learning_rate = draw(st.floats(allow_nan=True, allow_infinity=True))
        welcome.local.epochs = draw(st.integers(0, 3) | _U32)
        welcome.local.batch_size = draw(st.integers(0, 3) | _U32)
        welcome.local.momentum = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif field_name == "server_learning_rate":
        welcome.server_learning_rate = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif field_name == "layout":
        welcome.app = True
        welcome.layout.add(
            name=draw(st.text(max_size=8)),
            dtype=draw(st.sampled_from(["float32", "int64", "object", "", "<U3", "V8"])),
            shape=draw(st.lists(st.integers(-3, 2**40), max_size=3)),
            trainable=draw(st.booleans()),
        )
    elif field_name == "app":
        welcome.app = True
    else:
        setattr(welcome, field_name, draw(st.text(max_size=20)))
    return welcome.SerializeToString()


def _run_welcome(data: bytes) -> None:
    pb = federation().pb
    try:
        welcome = pb.Welcome.FromString(data)
    except DecodeError as error:
        raise UndecodableError from error
    node().handler().welcome(welcome)


WELCOME = st.one_of(
    any_bytes(st.just(b"").map(lambda _: node().welcome.SerializeToString())),
    _welcomes(),
    mutated(_welcomes()),
)


def _valid_server_messages() -> list[bytes]:
    from accord.data.standardise import Standardisation
    from accord.federation.scaling_wire import standardisation_to_proto
    from accord.federation.tensors import encode_buffers, encode_tensor, state_digest

    fed = federation()
    pb = fed.pb
    weights = np.zeros(15, np.float32)
    digest = state_digest(weights, {})
    standardisation = standardisation_to_proto(Standardisation(mean=np.zeros(4), scale=np.ones(4)))
    starts = [
        pb.ServerMessage(
            round_start=pb.RoundStart(
                round_index=0,
                weights_sha256=digest,
                global_weights=chunk,
                standardisation=standardisation if chunk.last else None,
            )
        ).SerializeToString()
        for chunk in encode_tensor(weights, 24)
    ]
    seconds = [
        pb.ServerMessage(
            second_gradient=pb.SecondGradient(
                round_index=0, gradient=chunk, server_learning_rate=1.0,
                next_weights_sha256=digest, next_buffers=encode_buffers(None),
            )
        ).SerializeToString()
        for chunk in encode_tensor(weights, 24)
    ]  # fmt: skip
    evaluate = pb.ServerMessage(
        evaluate=pb.EvaluateRequest(round_index=0, weights_sha256=digest)
    ).SerializeToString()
    return [*starts, *seconds, evaluate]


_SERVER_MESSAGES: list[bytes] = []


@st.composite
def _server_messages(draw: st.DrawFn) -> list[bytes]:
    """The server's messages after Welcome: round starts and second gradients in chunks
    (valid, altered, random), evaluation requests, unknown bodies."""
    if not _SERVER_MESSAGES:
        _SERVER_MESSAGES.extend(_valid_server_messages())
    pb = federation().pb
    valid = _SERVER_MESSAGES
    digest = valid[-1][-32:]
    options = st.one_of(
        st.sampled_from(valid),
        mutated(st.sampled_from(valid)),
        st.builds(
            lambda round_index, chunk, digest_, means, scales: pb.ServerMessage(
                round_start=pb.RoundStart(
                    round_index=round_index,
                    weights_sha256=digest_,
                    global_weights=chunk,
                    buffers=[pb.NamedTensor(name="b", tensor=chunk)],
                    standardisation=pb.Standardisation(mean=means, scale=scales),
                )
            ).SerializeToString(),
            st.sampled_from([0, 1]),
            _chunks(),
            st.sampled_from([digest, b""]) | st.binary(max_size=40),
            _DOUBLES,
            _DOUBLES,
        ),
        st.builds(
            lambda round_index, chunk, rate: pb.ServerMessage(
                second_gradient=pb.SecondGradient(
                    round_index=round_index, gradient=chunk, server_learning_rate=rate
                )
            ).SerializeToString(),
            st.sampled_from([0, 1]),
            _chunks(),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        st.binary(max_size=64),
    )
    return [valid[0], *draw(st.lists(options, min_size=1, max_size=4))]


def _run_server_messages(messages: list[bytes]) -> None:
    pb = federation().pb
    handler = node().handler()
    handler.welcome(node().welcome)
    for data in messages:
        try:
            message = pb.ServerMessage.FromString(data)
        except DecodeError:
            continue
        handler.handle(message)


# ------------------------------------------------------------------ federation checkpoint


def _checkpoint_bytes() -> bytes:
    from accord.checkpoint_files import dumps_tree
    from accord.federation.driver import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    return dumps_tree(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "round": 3,
            "weights": np.arange(6, dtype=np.float32),
            "seed": b"\x01\x02",
            "pair": (1, "a"),
            "scores": {1: 0.5},
        }
    )


@st.composite
def _checkpoint_trees(draw: st.DrawFn) -> bytes:
    """A real .npz with a drawn JSON tree and arrays the markers may (not) point at."""
    tree = draw(
        st.one_of(
            JSON_VALUES,
            st.builds(
                lambda mark, key, items: {"__accord__": mark, "key": key, "items": items},
                st.sampled_from(["array", "scalar", "bytes", "tuple", "dict", "other"]),
                st.sampled_from(["a0", "a1", "__tree__"]) | JSON_SCALARS,
                JSON_VALUES,
            ),
        )
    )
    text = draw(st.one_of(st.just(_json_text(tree)), DEEP_JSON))
    buffer = io.BytesIO()
    np.savez(
        buffer,
        allow_pickle=False,
        __tree__=np.frombuffer(text.encode(), dtype=np.uint8),
        a0=np.arange(draw(st.integers(0, 3))),
    )
    return buffer.getvalue()


def _run_checkpoint(path: Path) -> None:
    from accord.federation.driver import load_run_checkpoint

    load_run_checkpoint(path)


CHECKPOINT = st.tuples(
    st.just(FOLDER),
    st.one_of(any_bytes(st.just(b"").map(lambda _: _checkpoint_bytes())), _checkpoint_trees()),
)


# ------------------------------------------------------------------ alignment: hello, handshake


def _hello_bytes(fields: dict[str, Any] | bytes, version: int = 1) -> bytes:
    from accord.tee.runtime.transport import HELLO_MAGIC

    body = fields if isinstance(fields, bytes) else _json_text(fields).encode()
    return struct.pack("!13sHI", HELLO_MAGIC, version, len(body)) + body


_HELLO = {"party": "b", "session": "s1", "parties": 2}


def _run_hello(data: bytes) -> None:
    from accord.tee.runtime.transport import Hello, hello_body_size, parse_hello

    own = Hello("a", "s1", 2)
    if len(data) < 19:
        raise UndecodableError  # the listener waits for the rest, until its hello timeout
    size = hello_body_size(data[:19], "127.0.0.1:9")
    if len(data) - 19 < size:
        raise UndecodableError
    parse_hello(data[19 : 19 + size], own, "127.0.0.1:9")


HELLO = st.one_of(
    any_bytes(st.just(_hello_bytes(_HELLO))),
    json_documents(_HELLO).map(_hello_bytes),
    st.builds(_hello_bytes, st.just(_HELLO), st.integers(0, 65535)),
)

_PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_MEASUREMENT = hashlib.sha256(b"enclave").digest()


def _drbg(seed: bytes) -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


def _handshake_config(name: str) -> Any:
    from accord.tee.core.attestation import AttestationPolicy, key_fingerprint, public_key_bytes
    from accord.tee.core.backend import SimulatedBackend
    from accord.tee.core.channel import HandshakeConfig

    backend = SimulatedBackend(_PLATFORM, measurement=_MEASUREMENT, security_version=1, debug=False)
    policy = AttestationPolicy(
        allowed_measurements=frozenset({_MEASUREMENT.hex()}),
        trusted_platform_keys=frozenset({key_fingerprint(public_key_bytes(_PLATFORM))}),
        allow_simulated=True,
    )
    return HandshakeConfig(
        party_name=name,
        session="s1",
        parties=2,
        policy=policy,
        make_evidence=backend.make_evidence,
        random_bytes=_drbg(name.encode()),
    )


def _handshake_messages() -> tuple[bytes, bytes, bytes]:
    from accord.tee.core.channel import InitiatorHandshake, ResponderHandshake

    initiator = InitiatorHandshake(_handshake_config("a"))
    responder = ResponderHandshake(_handshake_config("b"))
    hello = initiator.hello()
    response = responder.respond(hello)
    finish, _ = initiator.finish(response)
    return hello, response, finish


_HANDSHAKE: tuple[bytes, bytes, bytes] | None = None


def handshake_messages() -> tuple[bytes, bytes, bytes]:
    global _HANDSHAKE  # noqa: PLW0603 - built once
    if _HANDSHAKE is None:
        _HANDSHAKE = _handshake_messages()
    return _HANDSHAKE


def _run_handshake(value: tuple[int, bytes]) -> None:
    """Step 0: a responder reads a hello; 1: an initiator reads a response; 2: a responder
    that answered the valid hello reads a finish."""
    from accord.tee.core.channel import InitiatorHandshake, ResponderHandshake

    step, data = value
    hello, _, _ = handshake_messages()
    if step == 0:
        ResponderHandshake(_handshake_config("b")).respond(data)
    elif step == 1:
        initiator = InitiatorHandshake(_handshake_config("a"))
        initiator.hello()
        initiator.finish(data)
    else:
        responder = ResponderHandshake(_handshake_config("b"))
        responder.respond(hello)
        responder.complete(data)


HANDSHAKE = st.integers(0, 2).flatmap(
    lambda step: st.tuples(
        st.just(step),
        any_bytes(st.just(b"").map(lambda _, step=step: handshake_messages()[step])),  # type: ignore[misc]
    )
)


# ------------------------------------------------------------------ alignment: records, messages

_RECORD_KEY = bytes(range(32))


def _record_stream() -> bytes:
    from accord.tee.core.channel import ChannelWriter

    writer = ChannelWriter(_RECORD_KEY, record_size=64)
    writer.send(1, b"roster" * 5)
    writer.send(2, bytes(range(100)))
    writer.send(3, b"")
    writer.end()
    return bytes(writer.next_batch(1 << 20))


def _run_records(value: tuple[bytes, list[int]]) -> None:
    """The peer's byte stream, cut anywhere (a host relays it in any pieces), then closed."""
    from accord.tee.core.channel import ChannelReader

    data, cuts = value
    reader = ChannelReader(_RECORD_KEY)
    edges = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(edges):
        for _kind, _message in reader.feed(memoryview(data)[start:end]):
            pass
    reader.check_closed()


RECORDS = st.tuples(
    any_bytes(st.just(b"").map(lambda _: _record_stream()), max_size=300),
    st.lists(st.integers(0, 1000), max_size=3),
)


def _roster(fields: Any, share: bytes) -> bytes:
    body = _json_text(fields).encode()
    return struct.pack("!I", len(body)) + body + share


def _run_messages(value: tuple[int, bytes]) -> None:
    """A peer enclave's channel messages, as the enclave decodes them."""
    from accord.tee.core.messages import decode_confirm, decode_digests, decode_roster

    kind, data = value
    if kind == 0:
        decode_roster(data, "b")
    elif kind == 1:
        decode_digests(data, "b")
    else:
        decode_confirm(data, "b")


_VALID_MESSAGES = [
    _roster({"parties": ["a", "b"], "session": "s1", "key_columns": 1}, bytes(32)),
    struct.pack("!QB", 2, 0) + bytes(32),
    struct.pack("!Q32s", 5, bytes(32)),
]
MESSAGES = st.tuples(
    st.integers(0, 2),
    st.one_of(
        any_bytes(st.sampled_from(_VALID_MESSAGES)),
        st.builds(_roster, JSON_VALUES, st.binary(max_size=40)),
        DEEP_JSON.map(lambda text: _roster(0, b"").replace(b"0", text.encode(), 1)),
    ),
)


# ------------------------------------------------------------------ alignment: host calls


def _run_enclave_calls(calls: list[tuple[int, bytes, bytes]]) -> None:
    """The enclave's side of its host's calls (the host is not trusted by the enclave)."""
    from accord.tee.core.backend import SimulatedBackend
    from accord.tee.core.session import EnclaveSession
    from accord.tee.core.wire import decode_meta

    backend = SimulatedBackend(_PLATFORM, measurement=_MEASUREMENT, security_version=1, debug=False)
    session = EnclaveSession(backend, _drbg(b"enclave"))
    for code, meta, body in calls:
        session.call(code, decode_meta(meta, "call"), memoryview(body))


def _init_meta() -> bytes:
    from accord.tee.core.attestation import (
        AttestationPolicy,
        key_fingerprint,
        policy_toml,
        public_key_bytes,
    )

    policy = AttestationPolicy(
        allowed_measurements=frozenset({_MEASUREMENT.hex()}),
        trusted_platform_keys=frozenset({key_fingerprint(public_key_bytes(_PLATFORM))}),
        allow_simulated=True,
    )
    return _json_text(
        {"party_name": "a", "session": "s1", "parties": 2, "policy": policy_toml(policy),
         "key_columns": ["id"], "duplicates": "error"}
    ).encode()  # fmt: skip


_INIT = _init_meta()
ENCLAVE_CALLS = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.one_of(
            st.just(_INIT),
            json_documents(json.loads(_INIT), {"link": 0, "step": "hello"}, {"bucket": 0}),
        ),
        st.binary(max_size=64),
    ),
    min_size=1,
    max_size=4,
).map(lambda calls: [(1, _INIT, b""), *calls] if calls[0][0] != 1 else calls)


# ------------------------------------------------------------------ alignment run state


def _sealed_state(payload: bytes) -> bytes:
    from accord.tee.core.bucketed import _STATE_RUN
    from accord.tee.core.sealing import FileKind, SealedFile, seal_blob

    return seal_blob(bytes(32), SealedFile(_STATE_RUN, FileKind.STATE), _drbg(b"s"), payload)


def _run_sealed_state(blob: bytes) -> None:
    from accord.tee.core.bucketed import BucketedRun

    BucketedRun.resume(
        blob, party="a", session="s1", sealing_key=bytes(32), random_bytes=_drbg(b"r")
    )


SEALED_STATE = st.one_of(
    any_bytes(st.just(b"").map(lambda _: _sealed_state(b'{"version": 1}'))),
    json_documents({"version": 1, "party": "a", "session": "s1", "stage": "spill"}).map(
        _sealed_state
    ),
)


def _manifest_text() -> str:
    from accord.tee.runtime.runstate import MANIFEST_VERSION

    return _json_text(
        {"version": MANIFEST_VERSION, "party": "a", "session": "s1", "settings": {},
         "inputs": {"input": {"path": "a.csv", "size": 3, "sha256": "00"}},
         "sealed_state": "AAAA"}
    )  # fmt: skip


def _run_manifest(value: tuple[Path, bytes]) -> None:
    from accord.tee.runtime.runstate import RunDirectory

    folder, data = value
    run = folder / "input"
    run.mkdir()
    (run / "manifest.json").write_bytes(data)
    directory, manifest = RunDirectory.open(run)
    try:
        manifest.sealed_bytes()
    finally:
        directory.close()


MANIFEST = st.tuples(
    st.just(FOLDER),
    json_documents(json.loads(_manifest_text())) | any_bytes(st.just(_manifest_text().encode())),
)


# ------------------------------------------------------------------ key tables (CSV, Parquet)


def _run_key_table(value: tuple[Path, str, bytes]) -> None:
    from accord.alignment import prepare_ids
    from accord.tables import iter_key_batches
    from accord.tee.runtime.inputs import _plain_batches

    folder, suffix, data = value
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    try:
        for batch in _plain_batches(path, ["id"], iter_key_batches(path, ["id"])):
            prepare_ids([batch.column(0)], names=["id"], skip_invalid=True)
    finally:
        path.rename(folder / "input")


_CSV = b'id,age\nalice,30\n"bob, jr",40\ncarol,\n'
CSV_TEXT = st.lists(
    st.lists(
        st.one_of(
            st.sampled_from(["id", "alice", '"q,"', '"unterminated', "", "\x00", "\u00e9", "\r"]),
            st.text(max_size=8),
        ),
        min_size=1,
        max_size=4,
    ).map(",".join),
    min_size=1,
    max_size=6,
).map(lambda rows: "\n".join(rows).encode("utf-8", "surrogatepass"))
CSV_FILES = st.tuples(
    st.just(FOLDER),
    st.sampled_from([".csv", ".tsv", ".csv.gz"]),
    st.one_of(any_bytes(st.just(_CSV)), CSV_TEXT, mutated(CSV_TEXT)),
)


def _parquet(column: pa.Array, name: str = "id") -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({name: column, "x": pa.array(range(len(column)))}), buffer)
    return buffer.getvalue()


_PARQUET_COLUMNS = st.one_of(
    st.lists(st.text(max_size=6) | st.none(), max_size=5).map(pa.array),
    st.lists(st.binary(max_size=6) | st.none(), max_size=5).map(lambda v: pa.array(v, pa.binary())),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5).map(pa.array),
    st.lists(st.floats(), max_size=5).map(pa.array),
    st.lists(st.text(max_size=4), max_size=5).map(
        lambda v: pa.array(v, pa.string()).dictionary_encode()
    ),
    st.lists(st.text(max_size=4), max_size=5).map(lambda v: pa.array(v, pa.large_string())),
)
PARQUET_FILES = st.tuples(
    st.just(FOLDER),
    st.just(".parquet"),
    st.one_of(
        st.builds(_parquet, _PARQUET_COLUMNS, st.sampled_from(["id", "id", "other"])),
        mutated(st.builds(_parquet, _PARQUET_COLUMNS)),
        st.binary(max_size=200),
    ),
)


# ------------------------------------------------------------------ TOML configs


def _toml(table: dict[str, Any]) -> str:
    lines = []
    for key, value in table.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


TOML_VALUES = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5) | st.text(max_size=4), max_size=3),
)


def toml_texts(valid: str, keys: list[str]) -> st.SearchStrategy[bytes]:
    """TOML texts: the valid one, keys set to random values, random text, mutations."""
    table = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), TOML_VALUES, max_size=5)
    return st.one_of(
        st.just(valid.encode()),
        table.map(lambda t: _toml(t).encode()),
        st.builds(lambda t: (valid + _toml(t)).encode(), table),
        mutated(st.just(valid.encode())),
        st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.binary(max_size=100),
    )


def reads_file(load: Callable[[Path], object]) -> Callable[[tuple[Path, bytes]], None]:
    """A target's run that writes the input to ``input`` in its folder and loads that file."""

    def run(value: tuple[Path, bytes]) -> None:
        folder, data = value
        (folder / "input").write_bytes(data)
        load(folder / "input")

    return run


def _run_simulate_config(path: Path) -> None:
    from accord.config import load_simulate_config

    load_simulate_config(path)


_SIMULATE = 'policies = ["fedavg"]\nrounds = 3\n\n[scenario]\ndataset = "digits"\nnodes = 4\n'
SIMULATE_CONFIG = st.tuples(
    st.just(FOLDER),
    toml_texts(
        _SIMULATE,
        ["policies", "rounds", "seed", "format_version", "[scenario]", "target_accuracy"],
    ),
)


def _run_align_config(path: Path) -> None:
    from accord.commands.align_config import load_config

    load_config(path)


_ALIGN = 'party_name = "a"\nsession = "s1"\nparties = 2\ninput = "a.csv"\nkey = ["id"]\n'
ALIGN_CONFIG = st.tuples(
    st.just(FOLDER),
    toml_texts(_ALIGN, ["party_name", "session", "parties", "input", "key", "policy", "peer",
                        "listen", "memory_limit", "buckets", "duplicates", "connect_timeout"]),
)  # fmt: skip


def _run_policy(data: bytes) -> None:
    from accord.tee.core.attestation import parse_policy

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UndecodableError from error  # read_policy refuses it naming the file (tested apart)
    parse_policy(text, "p.toml")


def _policy_text() -> str:
    from accord.tee.core.attestation import (
        AttestationPolicy,
        PartyBinding,
        key_fingerprint,
        policy_toml,
        public_key_bytes,
    )

    fingerprint = key_fingerprint(public_key_bytes(_PLATFORM))
    return policy_toml(
        AttestationPolicy(
            allowed_measurements=frozenset({_MEASUREMENT.hex()}),
            trusted_platform_keys=frozenset({fingerprint}),
            allow_simulated=True,
            parties=(PartyBinding("a", frozenset({fingerprint})),),
        )
    )


POLICY = toml_texts(
    _policy_text(),
    ["allowed_measurements", "trusted_platform_keys", "min_security_version", "allow_debug",
     "allow_simulated", "parties", "[parties.b]", "platform_keys"],
)  # fmt: skip


# ------------------------------------------------------------------ the registry

TARGETS: dict[str, Target] = {
    target.name: target
    for target in [
        Target("federation.register", "peer", REGISTER, _run_register),
        Target("federation.node_messages", "peer", _node_messages(), _run_node_messages),
        Target("federation.welcome", "peer", WELCOME, _run_welcome),
        Target("federation.server_messages", "peer", _server_messages(), _run_server_messages),
        Target("federation.checkpoint", "file", CHECKPOINT, reads_file(_run_checkpoint)),
        Target("align.hello", "peer", HELLO, _run_hello),
        Target("align.handshake", "peer", HANDSHAKE, _run_handshake),
        Target("align.records", "peer", RECORDS, _run_records),
        Target("align.messages", "peer", MESSAGES, _run_messages),
        Target("align.enclave_calls", "peer", ENCLAVE_CALLS, _run_enclave_calls),
        Target("align.sealed_state", "file", SEALED_STATE, _run_sealed_state),
        Target("align.run_manifest", "file", MANIFEST, _run_manifest),
        Target("align.csv_keys", "file", CSV_FILES, _run_key_table),
        Target("align.parquet_keys", "file", PARQUET_FILES, _run_key_table),
        Target("config.simulate_toml", "file", SIMULATE_CONFIG, reads_file(_run_simulate_config)),
        Target("config.align_toml", "file", ALIGN_CONFIG, reads_file(_run_align_config)),
        Target("config.policy_toml", "file", POLICY, _run_policy),
    ]
}


def names() -> Iterator[str]:
    return iter(TARGETS)
