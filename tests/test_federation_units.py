"""Pieces of the networked federation in isolation: wire tensors, checkpoints, credentials,
node data, settings, the node's checks, and the round driver over an in-memory grid."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.checkpoint_files import (
    dumps_tree,
    loads_tree,
    read_checkpoint,
    write_checkpoint,
)
from accord.credentials.auth import (
    Authenticator,
    hash_token,
    load_node_credentials,
    load_server_credentials,
)
from accord.credentials.issue import make_credentials, renew_node_credentials
from accord.data.faults import FaultSpec
from accord.errors import ConfigurationError, InputDataError, PeerError, ProtocolError
from accord.federation.driver import FederatedRun, load_run_checkpoint
from accord.federation.engine import load_server_data, prepare_run
from accord.federation.grid import InMemoryGrid, NodeInfo, RunSpec, admission_problem
from accord.federation.node_data import load_table, split_validation
from accord.federation.proto import federation_pb2 as pb
from accord.federation.proto import federation_pb2_grpc as pb_grpc
from accord.federation.server import GrpcGrid, TransportSettings
from accord.federation.settings import ServerSettings
from accord.federation.tensors import (
    PROTOCOL_VERSION,
    TensorAssembler,
    check_weights,
    decode_tensor,
    encode_tensor,
    weights_digest,
)
from accord.federation.worker import NodeFault, NodeWorker
from accord.run import StopConditions
from accord.scenario import ScenarioSettings, build_scenario, node_seed
from accord.settings_mapping import settings_from_mapping, settings_to_mapping
from accord.simulation.driver import Simulation, SimulationSettings
from accord.training.local import LocalTrainingSettings
from accord.training.models import ModelSpec

# ------------------------------------------------------------------ wire tensors


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
    dtype=st.sampled_from(["float32", "float64", "float16", "int64", "int32"]),
    chunk_bytes=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_tensor_survives_chunking(
    shape: list[int], dtype: str, chunk_bytes: int, seed: int
) -> None:
    array = (np.random.default_rng(seed).standard_normal(shape) * 100).astype(dtype)
    chunks = encode_tensor(array, chunk_bytes)
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    back = decode_tensor(chunks)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_a_big_endian_tensor_travels_little_endian() -> None:
    array = np.arange(5, dtype=">f4")
    [chunk] = encode_tensor(array)
    assert chunk.data == np.arange(5, dtype="<f4").tobytes()
    assert np.array_equal(decode_tensor([chunk]), np.arange(5, dtype=np.float32))


def _chunks(n: int = 10, chunk_bytes: int = 8) -> list[pb.TensorChunk]:
    return encode_tensor(np.arange(n, dtype=np.float32), chunk_bytes)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda cs: [cs[0], cs[2], *cs[3:]], "expected byte offset 8, got 16"),
        (lambda cs: [cs[0], cs[0], *cs[1:]], "expected byte offset 8, got 0"),
        (lambda cs: cs[:-1], "the last chunk is missing"),
        (lambda cs: [*cs[:-1], _with(cs[-1], shape=[11])], "dtype or shape changed"),
        (lambda cs: [*cs[:-1], _with(cs[-1], dtype=pb.DTYPE_INT32)], "dtype or shape changed"),
        (lambda cs: [_with(cs[0], last=True)], "last chunk after 8 of 40 bytes"),
        (lambda cs: [_with(cs[0], dtype=99)], "unknown dtype code 99"),
        (lambda cs: [_with(cs[0], shape=[-1])], "negative size"),
        (lambda cs: [*cs[:-1], _with(cs[-1], data=b"x" * 16)], "more than the 40 declared"),
    ],
)
def test_malformed_chunks_are_refused(tamper: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_tensor(tamper(_chunks()))


def _with(chunk: pb.TensorChunk, **changes: Any) -> pb.TensorChunk:
    copy = pb.TensorChunk()
    copy.CopyFrom(chunk)
    for name, value in changes.items():
        if name == "shape":
            del copy.shape[:]
            copy.shape.extend(value)
        else:
            setattr(copy, name, value)
    return copy


def test_a_declared_size_beyond_the_limit_is_refused_before_allocation() -> None:
    huge = pb.TensorChunk(dtype=pb.DTYPE_FLOAT64, shape=[1 << 40], offset=0, data=b"", last=False)
    with pytest.raises(ProtocolError, match="more than the 1000 allowed"):
        TensorAssembler(1000).add(huge)


def test_weights_digest_is_sha256_of_little_endian_float32_bytes() -> None:
    weights = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    expected = hashlib.sha256(b"\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@").digest()
    assert weights_digest(weights) == expected


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(3, dtype=np.float64), "expected dtype float32, got float64"),
        (np.zeros(4, dtype=np.float32), r"expected shape \(3,\), got \(4,\)"),
        (np.array([0, np.inf, 0], dtype=np.float32), "NaN or Inf"),
    ],
)
def test_check_weights_refuses_bad_tensors(array: np.ndarray, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        check_weights(array, 3, "second gradient")


# ------------------------------------------------------------------ checkpoints


def test_a_checkpoint_round_trips_every_kind_of_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    state = {
        "weights": np.arange(6, dtype=np.float32).reshape(2, 3),
        "blob": b"\x00\xffnetworks",
        "tuple": (1, 2.5, None, "x"),
        "int_keys": {3: "three"},
        "scalar": np.float64(0.1),
        "big_int": 2**100,
        "rng": rng.bit_generator.state,
        "nested": [{"a": np.int64(7)}, [True, False]],
        "nan": float("nan"),
    }
    path = tmp_path / "checkpoint.npz"
    write_checkpoint(path, state)
    back = read_checkpoint(path)
    assert np.array_equal(back["weights"], state["weights"])
    assert back["blob"] == state["blob"] and back["tuple"] == state["tuple"]
    assert back["int_keys"] == {3: "three"} and back["big_int"] == 2**100
    assert back["scalar"] == np.float64(0.1) and type(back["scalar"]) is np.float64
    assert back["nested"] == [{"a": 7}, [True, False]] and np.isnan(back["nan"])
    restored = np.random.default_rng(0)
    restored.bit_generator.state = back["rng"]
    assert restored.random() == rng.random()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temporary left


def test_a_checkpoint_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(
        path, __tree__=np.frombuffer(b'{"a": 1}', dtype=np.uint8), a0=np.array([{}], dtype=object)
    )
    with pytest.raises(InputDataError, match="not a readable checkpoint"):
        read_checkpoint(path)


def test_a_truncated_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    data = dumps_tree({"weights": np.zeros(1000, dtype=np.float32)})
    with pytest.raises(InputDataError, match="not a readable checkpoint"):
        loads_tree(data[: len(data) // 2], "cut.npz")
    with pytest.raises(InputDataError, match="no checkpoint there"):
        read_checkpoint(tmp_path / "missing.npz")


# ------------------------------------------------------------------ credentials


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("credentials")
    make_credentials(
        directory,
        ["node-00", "node-01"],
        hosts=["fl.example.org", "10.1.2.3"],
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        days=3650,
    )
    return directory


def test_certs_form_a_chain_with_the_right_names_and_private_keys(credentials: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = x509.load_pem_x509_certificate((credentials / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((credentials / "server.pem").read_bytes())
    node = x509.load_pem_x509_certificate((credentials / "node-00" / "node.pem").read_bytes())
    for leaf in (server, node):
        leaf.verify_directly_issued_by(ca)
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "::1",
        "10.1.2.3",
    }
    for secret in ("ca.key", "server.key", "node-00/node.key", "node-00/token"):
        assert stat.S_IMODE((credentials / secret).stat().st_mode) == 0o600
    tokens = load_server_credentials(credentials, "token").token_hashes
    assert tokens is not None
    token = (credentials / "node-01" / "token").read_text().strip()
    assert (
        tokens["node-01"] == hash_token(token)
        and token not in (credentials / "tokens.json").read_text()
    )


def test_certs_refuse_to_overwrite(credentials: Path) -> None:
    with pytest.raises(ConfigurationError, match="exists already"):
        make_credentials(credentials, ["node-00"], now=dt.datetime.now(dt.UTC))


def _context(credentials: Path, pem: str) -> dict[str, list[bytes]]:
    return {"x509_pem_cert": [(credentials / pem).read_bytes()]}


def test_a_token_is_bound_to_its_node(credentials: Path) -> None:
    server = load_server_credentials(credentials, "token")
    check = Authenticator(server.token_hashes, require_client_cert=False)
    token = load_node_credentials(credentials / "node-00").token
    bearer = [("authorization", f"Bearer {token}")]
    assert check.refusal("node-00", bearer, {}) is None
    assert check.refusal("node-01", bearer, {}) == "wrong token for node id 'node-01'"
    assert check.refusal("node-07", bearer, {}) == "no token is registered for node id 'node-07'"
    assert check.refusal("node-00", [], {}) == "expected one authorization header, got 0"
    assert check.refusal("node-00", bearer * 2, {}) == "expected one authorization header, got 2"
    assert check.refusal("node-00", [("authorization", token or "")], {}) == (
        "authorization header is not a bearer token"
    )


def test_a_client_certificate_must_name_the_node_and_be_for_clients(credentials: Path) -> None:
    check = Authenticator(None, require_client_cert=True)
    assert check.refusal("node-00", [], _context(credentials, "node-00/node.pem")) is None
    assert check.refusal("node-01", [], _context(credentials, "node-00/node.pem")) == (
        "client certificate is for 'node-00', not 'node-01'"
    )
    assert check.refusal("accord-server", [], _context(credentials, "server.pem")) == (
        "client certificate is not for client authentication"
    )
    assert check.refusal("node-00", [], {}) == "no client certificate"


def test_claimed_node_ids_do_not_grow_the_certificate_cache(credentials: Path) -> None:
    # The node id a peer claims is unchecked input (up to a message's size): a cache keyed on
    # it would keep every one an attacker sends.
    from accord.credentials.auth import _parsed_certificate

    check = Authenticator(None, require_client_cert=True)
    _parsed_certificate.cache_clear()
    for index in range(50):
        claimed = f"{index}-" + "x" * 100_000
        assert check.refusal(claimed, [], _context(credentials, "node-00/node.pem")) == (
            f"client certificate is for 'node-00', not {claimed!r}"
        )
    assert _parsed_certificate.cache_info().currsize == 1


def _presented(check: Authenticator, node: str, folder: Path) -> str | None:
    """``check``'s verdict on ``node`` presenting the token and certificate in ``folder``."""
    token = load_node_credentials(folder).token
    return check.refusal(
        node,
        [("authorization", f"Bearer {token}")],
        {"x509_pem_cert": [(folder / "node.pem").read_bytes()]},
    )


def test_renewing_a_node_revokes_its_old_certificate_and_token(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    from accord.credentials.auth import certificate_fingerprint, read_revoked

    directory = tmp_path / "creds"
    make_credentials(directory, ["node-00", "node-01"], now=dt.datetime.now(dt.UTC))
    leaked = tmp_path / "leaked-node-01"
    shutil.copytree(directory / "node-01", leaked)
    kept = load_node_credentials(directory / "node-00")
    done = subprocess.run(
        [sys.executable, "-m", "accord.cli", "certs", str(directory), "--renew", "node-01,node-02"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "renewed node-01, node-02" in done.stdout
    server = load_server_credentials(directory, "both")
    assert server.revoked_certificates == read_revoked(directory / "revoked.json")
    assert server.revoked_certificates == {
        certificate_fingerprint((leaked / "node.pem").read_bytes())
    }
    check = Authenticator(server.token_hashes, True, server.revoked_certificates)

    def refusal(node: str, folder: Path) -> str | None:
        return _presented(check, node, folder)

    assert refusal("node-01", leaked) == "wrong token for node id 'node-01'"
    assert refusal("node-00", directory / "node-00") is None  # untouched
    assert kept == load_node_credentials(directory / "node-00")
    assert refusal("node-01", directory / "node-01") is None  # the new folder
    assert refusal("node-02", directory / "node-02") is None  # added
    # The leaked certificate with the new token (say both leaked, then one was renewed).
    new_token = load_node_credentials(directory / "node-01").token
    assert (
        check.refusal(
            "node-01",
            [("authorization", f"Bearer {new_token}")],
            {"x509_pem_cert": [(leaked / "node.pem").read_bytes()]},
        )
        == "client certificate of 'node-01' is revoked (revoked.json)"
    )
    # Without the CA key nothing can be renewed, and nothing is written.
    (directory / "ca.key").unlink()
    before = (directory / "tokens.json").read_bytes()
    with pytest.raises(ConfigurationError, match=r"ca\.key: not found; renewing issues"):
        renew_node_credentials(directory, ["node-00"], now=dt.datetime.now(dt.UTC))
    assert (directory / "tokens.json").read_bytes() == before


def test_a_running_server_applies_a_renewal_and_fails_closed_on_a_broken_list(
    tmp_path: Path,
) -> None:
    import shutil

    directory = tmp_path / "creds"
    make_credentials(directory, ["node-00", "node-01"], now=dt.datetime.now(dt.UTC))
    leaked = tmp_path / "leaked"
    shutil.copytree(directory / "node-01", leaked)
    check = Authenticator.reloading(
        lambda: load_server_credentials(directory, "both"),
        [directory / "tokens.json", directory / "revoked.json"],
    )

    def refusal(node: str, folder: Path) -> str | None:
        return _presented(check, node, folder)

    assert refusal("node-01", leaked) is None  # not renewed yet
    renew_node_credentials(directory, ["node-01"], now=dt.datetime.now(dt.UTC))
    assert refusal("node-01", leaked) == "wrong token for node id 'node-01'"
    assert refusal("node-01", directory / "node-01") is None
    (directory / "revoked.json").write_text("{broken")
    assert (refusal("node-00", directory / "node-00") or "").startswith(
        "node credentials files unreadable: "
    )
    with pytest.raises(InputDataError, match=r"revoked\.json: not valid JSON"):
        renew_node_credentials(directory, ["node-00"], now=dt.datetime.now(dt.UTC))
    (directory / "revoked.json").unlink()
    assert refusal("node-00", directory / "node-00") is None  # fixed: accepted again
    assert refusal("node-01", directory / "node-01") is None


def test_a_revocation_list_is_checked_when_read(tmp_path: Path) -> None:
    from accord.credentials.auth import read_revoked

    bad = tmp_path / "revoked.json"
    bad.write_text('{"format": "accord-revoked-certificates", "certificates": ["abc"]}')
    with pytest.raises(InputDataError, match="certificates: expected a list of SHA-256 hex"):
        read_revoked(bad)
    bad.write_text("{")
    with pytest.raises(InputDataError, match=r"revoked\.json: not valid JSON"):
        read_revoked(bad)


def test_server_credentials_need_their_files(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="server certificate not found"):
        load_server_credentials(tmp_path, "both")
    with pytest.raises(ConfigurationError, match="client_auth: expected one of"):
        load_server_credentials(tmp_path, "password")


# ------------------------------------------------------------------ node data


def test_a_csv_node_file_loads_and_bad_rows_are_named(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("a,b,label\n0.5,1,0\n1.5,2,2\n")
    table = load_table(good, "label")
    assert table.features.dtype == np.float32 and table.features.tolist() == [[0.5, 1], [1.5, 2]]
    assert table.labels.tolist() == [0, 2] and table.feature_names == ("a", "b")
    cases = {
        "a,b,y\n1,2,0\n": "no label column 'label'; columns are \\['a', 'b', 'y'\\]",
        "a,label\n1,0\nx,1\n": "column 'a': expected numbers, found type string",
        "a,label\n1,0\n,1\n": r"column 'a', data row 1 \(0-based\): missing or NaN value$",
        "a,label\n1,0\n2,-1\n": r"column 'label', data row 1 \(0-based\): expected an "
        r"integer label >= 0, found -1$",
        "a,label\n1,0\n2,0.5\n": r"column 'label', data row 1 \(0-based\): expected an "
        r"integer label >= 0, found 0.5$",
        "a,label\n1,0\n2,inf\n": r"column 'label', data row 1 \(0-based\): infinite value$",
    }
    for index, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{index}.csv"
        path.write_text(text)
        with pytest.raises(InputDataError, match=message):
            load_table(path, "label")
    with pytest.raises(InputDataError, match="no such file"):
        load_table(tmp_path / "none.csv", "label")


def test_a_parquet_node_file_loads(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "node.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "label": [1, 0, 1]}), path)
    table = load_table(path, "label")
    assert table.features[:, 0].tolist() == [1.0, 2.0, 3.0] and table.labels.tolist() == [1, 0, 1]


def test_split_validation_is_seeded_and_disjoint() -> None:
    features = np.arange(20, dtype=np.float32)[:, None]
    labels = np.arange(20) % 3
    train_x, _, held = split_validation(features, labels, 0.25, seed=4)
    again = split_validation(features, labels, 0.25, seed=4)[2]
    assert held is not None and again is not None
    assert len(held[0]) == 5 and np.array_equal(held[0], again[0])
    assert sorted(train_x[:, 0].tolist() + held[0][:, 0].tolist()) == list(range(20))
    assert split_validation(features, labels, 0.0, seed=4)[2] is None


# ------------------------------------------------------------------ settings and admission


def test_server_settings_survive_json() -> None:
    base = ServerSettings()
    settings_in = dataclasses.replace(
        base,
        policy="hedge-loo",
        run=dataclasses.replace(
            base.run,
            scenario=dataclasses.replace(base.run.scenario, nodes=7, fault=FaultSpec("noise", 2)),
            model=dataclasses.replace(base.run.model, hidden=(16, 8)),
            stop=StopConditions(max_rounds=9, patience=3),
        ),
    )
    saved = json.loads(json.dumps(settings_to_mapping(settings_in)))
    assert settings_from_mapping(ServerSettings, saved, source="settings") == settings_in
    with pytest.raises(ConfigurationError, match=r"^settings: unknown key 'run\.bogus'; accepted"):
        settings_from_mapping(ServerSettings, {"run": {"bogus": 1}}, source="settings")
    with pytest.raises(ConfigurationError, match=r"^settings: run: expected a table \[run\]"):
        settings_from_mapping(ServerSettings, {"run": [1]}, source="settings")
    with pytest.raises(ConfigurationError, match=r"^settings: the top level: expected a table"):
        settings_from_mapping(ServerSettings, [1], source="settings")  # type: ignore[arg-type]


def test_admission_checks_name_the_problem() -> None:
    data = build_scenario(ScenarioSettings(nodes=2, fault=FaultSpec("label-flip", 0)))
    spec, _ = prepare_run(ServerSettings(), load_server_data(ServerSettings(), data), "run")
    good = NodeInfo("node-00", 10, 64, 10)
    assert admission_problem(good, spec, None) is None
    assert "not in this run's roster" in str(admission_problem(good, spec, frozenset({"x"})))
    wrong = dataclasses.replace(good, n_features=63)
    assert admission_problem(wrong, spec, None) == "the model takes 64 features; the node has 63"
    assert "holds label 11" in str(
        admission_problem(dataclasses.replace(good, n_classes=12), spec, None)
    )
    assert "node id" in str(
        admission_problem(dataclasses.replace(good, node_id="../x"), spec, None)
    )
    federated = dataclasses.replace(spec, federated_evaluation=True)
    assert "no validation split" in str(admission_problem(good, federated, None))


# ------------------------------------------------------------------ node worker


@pytest.fixture(scope="module")
def small() -> tuple[Any, Any]:
    scenario = ScenarioSettings(nodes=3, fault=FaultSpec("noise", 1), seed=2)
    return scenario, build_scenario(scenario)


def _workers(scenario: ScenarioSettings, data: Any) -> dict[str, NodeWorker]:
    return {
        node.node_id: NodeWorker(
            node.node_id,
            node.features,
            node.labels,
            seed=node_seed(scenario.seed, node.index),
            fault=NodeFault(scenario.fault, scenario.seed, node.index) if node.faulty else None,
        )
        for node in data.nodes
    }


def test_a_node_checks_what_it_is_sent(small: tuple[Any, Any]) -> None:
    scenario, data = small
    settings_ = ServerSettings(run=SimulationSettings(scenario=scenario))
    spec, factory = prepare_run(settings_, load_server_data(settings_, data), "run")
    worker = _workers(scenario, data)["node-00"]
    worker.configure(spec)
    weights = factory(("node-00",), {"node-00": 1.0}).global_weights.copy()
    digest = weights_digest(weights)
    with pytest.raises(ProtocolError, match="out of date"):
        worker.start_round(0, None, digest)
    with pytest.raises(ProtocolError, match="digest does not match"):
        worker.start_round(0, weights, b"\x00" * 32)
    gradient = worker.start_round(0, weights, digest)
    assert worker.start_round(0, None, digest).tobytes() == gradient.tobytes()  # same seed
    with pytest.raises(ProtocolError, match="second gradient: expected shape"):
        worker.apply_second_gradient(0, gradient[:-1], 1.0, digest)
    with pytest.raises(ProtocolError, match="differ from the server's"):
        worker.apply_second_gradient(0, gradient, 1.0, digest)
    assert worker.weights is None  # a copy that disagrees with the server is dropped
    with pytest.raises(ProtocolError, match="features"):
        worker.configure(dataclasses.replace(spec, n_features=10))


# ------------------------------------------------------------------ the round driver


def _federated_run(
    scenario: ScenarioSettings, data: Any, rounds: int, **kwargs: Any
) -> tuple[FederatedRun, InMemoryGrid]:
    settings_ = ServerSettings(
        run=SimulationSettings(scenario=scenario, stop=StopConditions(max_rounds=rounds))
    )
    spec, factory = prepare_run(settings_, load_server_data(settings_, data), "run")
    grid = InMemoryGrid(spec, _workers(scenario, data))
    run = FederatedRun(
        grid,
        factory,
        settings_.policy,
        settings_.run.stop,
        settings_.federation,
        expected_nodes=scenario.nodes,
        quorum=scenario.nodes,
        run_id="run",
        **kwargs,
    )
    return run, grid


def test_a_run_times_each_stage_of_each_round(small: tuple[Any, Any]) -> None:
    from accord.federation.driver import ROUND_STAGES

    scenario, data = small
    run, _ = _federated_run(scenario, data, 3)

    result = run.run()

    # one entry per round, every stage, and the stages fit in the round's wall time
    assert len(result.stage_seconds) == len(result.rounds) == 3
    for stages, timed in zip(result.stage_seconds, result.rounds, strict=True):
        assert set(stages) == {*ROUND_STAGES, "process_cpu"}
        assert all(seconds >= 0 for seconds in stages.values())
        assert stages["first_gradients"] == timed.local_training_seconds
        assert sum(stages[name] for name in ROUND_STAGES) <= timed.round_seconds


def test_the_in_memory_grid_reproduces_the_simulation(small: tuple[Any, Any]) -> None:
    scenario, data = small  # with a node sending noise
    run, _ = _federated_run(scenario, data, 4)
    federated = run.run()
    simulation_settings = SimulationSettings(scenario=scenario, stop=StopConditions(max_rounds=4))
    expected = Simulation(simulation_settings, "actor-critic", data).run()
    for got, want in zip(federated.rounds, expected.rounds, strict=True):
        assert got.record.to_json() | _timing() == want.record.to_json() | _timing()


def test_a_noise_node_draws_its_noise_from_seed_node_and_round(small: tuple[Any, Any]) -> None:
    from accord.data.faults import corrupt_gradient, fault_rng

    scenario, data = small
    settings_ = ServerSettings(run=SimulationSettings(scenario=scenario))
    spec, factory = prepare_run(settings_, load_server_data(settings_, data), "run")
    faulty = next(node for node in data.nodes if node.faulty)
    worker = _workers(scenario, data)[faulty.node_id]
    worker.configure(spec)
    honest = NodeWorker(faulty.node_id, faulty.features, faulty.labels, seed=worker.seed)
    honest.configure(spec)
    weights = factory((faulty.node_id,), {faulty.node_id: 1.0}).global_weights.copy()
    digest = weights_digest(weights)
    for round_index in (0, 3):
        expected = corrupt_gradient(
            scenario.fault,
            honest.start_round(round_index, weights, digest),
            fault_rng(scenario.seed, faulty.index, round_index),
        )
        sent = worker.start_round(round_index, weights, digest)
        assert sent.tobytes() == expected.tobytes()
        assert np.linalg.norm(sent) == pytest.approx(np.linalg.norm(expected), rel=1e-6)


def _timing() -> dict[str, Any]:
    return {"aggregate_seconds": 0, "learn_seconds": 0, "diagnostics": {}}


class _CrashError(Exception):
    pass


def test_a_run_interrupted_after_round_2_resumes_to_the_same_records(
    small: tuple[Any, Any], tmp_path: Path
) -> None:
    scenario, data = small
    uninterrupted, _ = _federated_run(scenario, data, 5)
    expected = uninterrupted.run()
    path = tmp_path / "checkpoint.npz"

    def crash(rounds_done: int) -> None:
        if rounds_done == 2:
            raise _CrashError

    first, _ = _federated_run(scenario, data, 5, checkpoint_path=path, after_round=crash)
    with pytest.raises(_CrashError):
        first.run()
    state = load_run_checkpoint(path)
    assert state["rounds_done"] == 2 and len(state["records"]) == 2
    resumed, _ = _federated_run(scenario, data, 5, checkpoint_path=path, resume=state)
    result = resumed.run()
    assert result.resumed_at == 2
    for got, want in zip(result.rounds, expected.rounds, strict=True):
        assert got.record.to_json() | _timing() == want.record.to_json() | _timing()


def test_a_disconnected_node_is_left_out_and_rejoins(small: tuple[Any, Any]) -> None:
    scenario, data = small
    run, grid = _federated_run(scenario, data, 3)
    run.quorum = 2

    def toggle(rounds_done: int) -> None:
        if rounds_done == 1:
            grid.disconnect("node-01")
        if rounds_done == 2:
            assert grid.connect("node-01") is None

    run.after_round = toggle
    result = run.run()
    records = [timed.record for timed in result.rounds]
    assert records[0].dropped == {} and records[2].dropped == {}
    assert records[1].dropped == {"node-01": "not connected"}
    assert records[1].probabilities["node-01"] == 0.0
    assert sum(records[1].probabilities.values()) == pytest.approx(1.0)


# ------------------------------------------------------------------ command-line options


def test_command_line_options_map_onto_the_settings() -> None:
    from accord.cli import build_parser
    from accord.commands.server import run_settings_from_args

    argv = [
        "server",
        "--insecure",
        *("--dataset", "wine", "--nodes", "5", "--partition", "iid", "--alpha", "0.3"),
        *("--fault", "noise", "--faulty", "2", "--fault-scale", "2", "--seed", "9"),
        *("--model", "mlp", "--hidden", "16,8", "--local-learning-rate", "0.05"),
        *("--local-epochs", "2", "--batch-size", "8", "--momentum", "0.5"),
        *("--server-learning-rate", "0.5", "--rounds", "7", "--target-accuracy", "0.9"),
        *("--patience", "3", "--time-budget", "60", "--policy", "hedge-loo"),
    ]
    settings_, policy = run_settings_from_args(build_parser(argv).parse_args(argv))
    scenario = settings_.scenario
    assert (scenario.dataset, scenario.nodes, scenario.seed) == ("wine", 5, 9)
    assert (scenario.partition.kind, scenario.partition.alpha) == ("iid", 0.3)
    assert scenario.fault == FaultSpec("noise", 2, 2.0)
    assert settings_.model.hidden == (16, 8)
    local = settings_.local
    assert (local.learning_rate, local.epochs, local.batch_size, local.momentum) == (
        0.05,
        2,
        8,
        0.5,
    )
    assert settings_.rounds.server_learning_rate == 0.5
    assert settings_.stop == StopConditions(7, 0.9, 3, 60.0)
    assert policy == "hedge-loo"
    two = ["server", "--policy", "fedavg,median"]
    with pytest.raises(ConfigurationError, match="a federation runs one policy"):
        run_settings_from_args(build_parser(two).parse_args(two))
    unset = ["server"]
    assert run_settings_from_args(build_parser(unset).parse_args(unset)) == (
        SimulationSettings(),
        "actor-critic",
    )


def test_a_run_stops_when_the_quorum_is_lost(small: tuple[Any, Any]) -> None:
    scenario, data = small
    run, grid = _federated_run(scenario, data, 5)
    run.quorum = 2
    run.settings = dataclasses.replace(run.settings, quorum_timeout=0.0)

    def leave(rounds_done: int) -> None:
        if rounds_done == 2:
            grid.disconnect("node-00")
            grid.disconnect("node-02")

    run.after_round = leave
    with pytest.raises(PeerError, match="quorum lost before round 3: 1 of 2 nodes connected"):
        run.run()


class _BrokenNode:
    """A node that registers and then fails every round."""

    def __init__(self, info: NodeInfo) -> None:
        self._info = info

    def info(self) -> NodeInfo:
        return self._info

    def configure(self, spec: Any) -> None:
        pass

    def start_round(self, round_index: int, weights: Any, weights_sha256: bytes) -> Any:
        raise ProtocolError("disk full")

    def apply_second_gradient(self, *args: Any) -> None:
        raise ProtocolError("disk full")

    def evaluate(self, round_index: int, weights_sha256: bytes) -> Any:
        raise ProtocolError("disk full")


def test_a_run_without_usable_gradients_gives_up_after_three_attempts(
    small: tuple[Any, Any],
) -> None:
    scenario, data = small
    settings_ = ServerSettings(run=SimulationSettings(scenario=scenario))
    spec, factory = prepare_run(settings_, load_server_data(settings_, data), "run")
    grid = InMemoryGrid(spec, {"node-00": _BrokenNode(NodeInfo("node-00", 50, 64, 10))})
    run = FederatedRun(
        grid,
        factory,
        "fedavg",
        StopConditions(max_rounds=5),
        settings_.federation,
        expected_nodes=1,
        quorum=1,
        run_id="run",
    )
    with pytest.raises(PeerError, match="round 1: no usable first gradient in 3 attempts"):
        run.run()


def test_the_server_can_score_on_its_own_files(tmp_path: Path) -> None:
    validation, test = tmp_path / "validation.csv", tmp_path / "test.parquet"
    validation.write_text("a,b,label\n0,1,0\n1,0,1\n1,1,1\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [0.0], "b": [0.0], "label": [3]}), test)
    server = ServerSettings(validation_data=str(validation), test_data=str(test))
    data = load_server_data(server)
    assert (data.n_features, data.n_classes) == (2, 4)
    assert data.validation[1].tolist() == [0, 1, 1] and data.test is not None
    spec, factory = prepare_run(server, data, "run")
    engine = factory(("n",), {"n": 1.0})
    assert spec.dim == engine.dim == 2 * 32 + 32 + 32 * 4 + 4
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("a,c,label\n0,1,0\n")
    with pytest.raises(InputDataError, match="differ from the validation file's"):
        load_server_data(ServerSettings(validation_data=str(validation), test_data=str(renamed)))


def test_a_node_admitted_before_the_roster_is_fixed_and_left_out_is_told_why() -> None:
    # Arrange: a real gRPC server (insecure, port 0) and a raw client registered as node-03
    spec = RunSpec("run", ModelSpec(), 64, 10, 2410, LocalTrainingSettings(), 1.0, False)
    grid = GrpcGrid(spec, TransportSettings(port=0), None, Authenticator(None, False))
    channel = grpc.insecure_channel(f"127.0.0.1:{grid.port}")
    hang_up = threading.Event()
    try:
        register = pb.NodeMessage(
            register=pb.Register(
                protocol_version=PROTOCOL_VERSION,
                node_id="node-03",
                sample_count=10,
                n_features=64,
                n_classes=10,
            )
        )

        def messages() -> Iterator[pb.NodeMessage]:
            yield register
            hang_up.wait()  # keep this side of the stream open, as a live node does

        stream = pb_grpc.FederationStub(channel).Session(messages(), timeout=20)
        assert next(stream).WhichOneof("body") == "welcome"

        # Act: the roster is fixed without node-03
        grid.fix_roster(("node-00", "node-01"))

        # Assert: its session ends with a final refusal that names the reason
        with pytest.raises(grpc.RpcError) as caught:
            next(stream)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == "node node-03 is not in this run's roster"
    finally:
        hang_up.set()
        channel.close()
        grid.shutdown(None)


class _VanishingPeer:
    """The server side of a stream whose node was killed: the read sees EOF, and gRPC then
    cancels the handler too, here at the latest moment (while it stops its writer)."""

    handler: asyncio.Task[None] | None = None

    async def read(self) -> object:
        return grpc.aio.EOF

    async def write(self, message: object) -> None:
        raise AssertionError("nothing is written to a vanished node")


def test_a_node_whose_stream_ends_twice_is_still_dropped_at_once() -> None:
    # Arrange: a real server's loop; a registered node owes it a first gradient, and its
    # stream's end is seen twice: EOF on the read, then the handler's cancellation, which
    # lands in the handler's clean-up (the order that once left a dead node registered).
    from accord.federation.connection import Connection

    spec = RunSpec("run", ModelSpec(), 64, 10, 2410, LocalTrainingSettings(), 1.0, False)
    grid = GrpcGrid(spec, TransportSettings(port=0), None, Authenticator(None, False))
    peer = _VanishingPeer()

    async def vanish() -> tuple[dict[str, NodeInfo], tuple[str, Any, float] | None, bool]:
        connection = Connection(NodeInfo("node-03", 10, 64, 10), peer)  # type: ignore[arg-type]
        grid._attach(connection)
        owed: asyncio.Future[tuple[str, Any, float]] = asyncio.get_running_loop().create_future()
        connection.expect, connection.future = ("first", 0), owed
        writer = asyncio.create_task(grid._write_loop(connection))
        handler = asyncio.create_task(grid._serve_node(peer, connection, writer))  # type: ignore[arg-type]
        writer.add_done_callback(lambda _: handler.cancel())
        with contextlib.suppress(asyncio.CancelledError):
            await handler

        outcome = owed.result() if owed.done() else None
        return {n: c.info for n, c in grid._connections.items()}, outcome, handler.cancelled()

    try:
        # Act
        connected, outcome, cancelled = grid._call(vanish())

        # Assert: the cancellation did land in the clean-up, and the node is gone all the same
        assert cancelled
        assert connected == {}
        assert outcome == ("failed", "node disconnected", 0.0)
    finally:
        grid.shutdown(None)


def test_a_federation_worker_sends_what_the_simulation_sends_round_by_round() -> None:
    # Time-varying and mixed faults: a label flipper that starts late, a scale node that
    # switches off, a noise node faulty in each round with probability 0.5.
    scenario = ScenarioSettings(
        nodes=5,
        seed=3,
        faults=(
            FaultSpec("label-flip", 1, start=2),
            FaultSpec("scale", 1, 10.0, end=2),
            FaultSpec("noise", 1, probability=0.5),
        ),
    )
    simulation = Simulation(
        SimulationSettings(scenario=scenario, stop=StopConditions(max_rounds=1)), "fedavg"
    )
    data = simulation.data
    settings_ = ServerSettings(run=SimulationSettings(scenario=scenario))
    spec, _ = prepare_run(settings_, load_server_data(settings_, data), "run")
    workers = {
        node.node_id: NodeWorker(
            node.node_id,
            node.features,
            node.labels,
            seed=node_seed(scenario.seed, node.index),
            fault=data.node_fault(node),
        )
        for node in data.nodes
    }
    for worker in workers.values():
        worker.configure(spec)
    weights = np.array(simulation.engine.global_weights)
    digest = weights_digest(weights)
    seen_faulty: set[tuple[str, int]] = set()
    for round_index in range(4):
        expected = simulation.first_gradients(weights, round_index)
        for node_name, worker in workers.items():
            sent = worker.start_round(round_index, weights, digest)
            assert sent.tobytes() == expected[node_name].tobytes(), (node_name, round_index)
        seen_faulty |= {(name, round_index) for name in data.faulty_in_round(round_index)}
    flipper = next(n for n in data.nodes if n.fault is not None and n.fault.kind == "label-flip")
    scaler = next(n for n in data.nodes if n.fault is not None and n.fault.kind == "scale")
    assert {r for name, r in seen_faulty if name == flipper.node_id} == {2, 3}
    assert {r for name, r in seen_faulty if name == scaler.node_id} == {0, 1}
    # Honest rounds of the flipper equal an honest node's gradient on its own labels.
    honest = NodeWorker(
        flipper.node_id, flipper.features, flipper.labels, seed=workers[flipper.node_id].seed
    )
    honest.configure(spec)
    assert (
        honest.start_round(0, weights, digest).tobytes()
        == workers[flipper.node_id].start_round(0, weights, digest).tobytes()
    )
    assert (
        honest.start_round(2, weights, digest).tobytes()
        != workers[flipper.node_id].start_round(2, weights, digest).tobytes()
    )


def test_fault_groups_survive_the_servers_settings_json() -> None:

    settings_ = ServerSettings(
        run=SimulationSettings(
            scenario=ScenarioSettings(
                nodes=6,
                faults=(FaultSpec("scale", 1, 10.0, start=3), FaultSpec("noise", 1, end=9)),
            )
        )
    )
    again = settings_from_mapping(
        ServerSettings, json.loads(json.dumps(settings_to_mapping(settings_))), source="settings"
    )
    assert again == settings_


# ------------------------------------------------------------- stopping on a signal


def test_a_stop_request_ends_the_run_after_the_round_and_resume_continues_it(
    small: tuple[Any, Any], tmp_path: Path
) -> None:
    # Arrange: the stop is requested while round 2 runs (as a signal handler would)
    from accord.federation.driver import INTERRUPTED, StopRequest

    scenario, data = small
    stop = StopRequest(grace=0.0)
    checkpoint = tmp_path / "checkpoint.npz"
    run, _ = _federated_run(scenario, data, 4, checkpoint_path=checkpoint, stop_request=stop)
    run.on_round = lambda timed: stop.request(15) if timed.record.round_index == 1 else None

    # Act
    stopped = run.run()
    state = load_run_checkpoint(checkpoint)
    resumed_run, _ = _federated_run(scenario, data, 4, resume=state)
    resumed = resumed_run.run()
    whole, _ = _federated_run(scenario, data, 4)
    expected = whole.run()

    # Assert
    assert stopped.stop_reason == INTERRUPTED and len(stopped.rounds) == 2
    assert state["stop_reason"] is None  # resumable
    assert resumed.resumed_at == 2 and resumed.stop_reason == expected.stop_reason
    for got, want in zip(resumed.rounds, expected.rounds, strict=True):
        assert got.record.to_json() | _timing() == want.record.to_json() | _timing()


def test_a_stop_request_before_registration_ends_the_run_without_rounds(
    small: tuple[Any, Any],
) -> None:
    from accord.federation.driver import INTERRUPTED, StopRequest

    scenario, data = small
    stop = StopRequest()
    stop.request(2)
    stop.request(15)  # a later request changes nothing
    run, _ = _federated_run(scenario, data, 4, stop_request=stop)

    result = run.run()

    assert (result.stop_reason, result.rounds, stop.signal_number) == (INTERRUPTED, (), 2)


def test_an_interrupted_grpc_grid_stops_waiting_for_nodes_at_once(
    small: tuple[Any, Any],
) -> None:
    # Arrange: a real server on 127.0.0.1 that nobody joins, waiting up to 120 s
    from accord.credentials.auth import Authenticator

    scenario, data = small
    settings_ = ServerSettings(run=SimulationSettings(scenario=scenario))
    spec, _ = prepare_run(settings_, load_server_data(settings_, data), "run")
    grid = GrpcGrid(
        spec, TransportSettings(port=0), None, Authenticator(None, require_client_cert=False)
    )
    waited: list[dict[str, NodeInfo]] = []
    waiter = threading.Thread(target=lambda: waited.append(grid.wait_for_nodes(3, 120.0)))
    try:
        waiter.start()

        # Act
        grid.interrupt(10.0)
        waiter.join(timeout=60)

        # Assert: returned long before its 120 s, with nobody
        assert not waiter.is_alive() and waited == [{}]
        assert grid.wait_for_nodes(3, 120.0) == {}  # later waits return at once too
    finally:
        grid.shutdown(None)


# ------------------------------------------------------------- registration fingerprint


def test_a_fingerprint_is_canonical_and_compares_only_the_parts_both_sides_have() -> None:
    from accord.federation.fingerprint import (
        MODEL,
        SCENARIO,
        Fingerprint,
        canonical_digest,
        model_part,
        scenario_part,
    )

    three, ten = ScenarioSettings(nodes=3), ScenarioSettings(nodes=10)
    parameters = [("0.weight", (32, 64), "float32"), ("0.bias", (32,), "float32")]

    # canonical: key order and spacing do not matter; the digest is SHA-256 of that text
    assert canonical_digest({"b": 1, "a": [1.5, "x"]}) == canonical_digest(
        {"a": [1.5, "x"], "b": 1}
    )
    assert canonical_digest({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()
    assert scenario_part(three) == scenario_part(ScenarioSettings(nodes=3))
    assert scenario_part(three) != scenario_part(ten)
    assert model_part(parameters) != model_part(parameters[::-1])
    assert model_part(parameters) != model_part([("0.weight", (32, 64), "float64")])

    server = Fingerprint.of(scenario=three, model=parameters)
    assert set(server.parts) == {SCENARIO, MODEL}
    assert server.mismatches(Fingerprint.of(scenario=three)) == ()
    assert server.mismatches(Fingerprint.of(scenario=ten)) == (SCENARIO,)
    assert server.mismatches(Fingerprint()) == ()  # a --data node has no scenario part
    assert Fingerprint.of(scenario=ten, model=parameters[:1]).mismatches(server) == (
        MODEL,
        SCENARIO,
    )
    with pytest.raises(ConfigurationError, match="expected 64 hex digits"):
        Fingerprint({SCENARIO: "not a digest"})


def test_a_node_of_another_scenario_is_refused_at_admission(small: tuple[Any, Any]) -> None:
    from accord.federation.fingerprint import Fingerprint

    scenario, data = small
    settings_ = ServerSettings(run=SimulationSettings(scenario=scenario))
    spec, _ = prepare_run(settings_, load_server_data(settings_, data), "run")

    def info(fingerprint: Fingerprint) -> NodeInfo:
        return NodeInfo("node-00", 100, spec.n_features, spec.n_classes, fingerprint=fingerprint)

    same = info(Fingerprint.of(scenario=scenario))
    other = info(Fingerprint.of(scenario=dataclasses.replace(scenario, nodes=10)))

    assert admission_problem(same, spec, None) is None
    assert admission_problem(info(Fingerprint()), spec, None) is None
    problem = admission_problem(other, spec, None)
    assert problem is not None
    assert problem.startswith("the node's scenario options differ from the server's (")
    assert "nodes 3," in problem and "\n" not in problem


# ------------------------------------------------------------- node reconnect logging


def test_a_node_logs_once_per_state_and_gives_up_after_its_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange: nobody listens on the port; a fake clock moves 1 s per reading
    from accord.federation.client import NodeClient, NodeSettings

    scenario = ScenarioSettings(nodes=3, seed=2)
    node = build_scenario(scenario).nodes[0]
    worker = NodeWorker(node.node_id, node.features, node.labels, seed=1)
    ticks = iter(range(1000))
    client = NodeClient(
        worker,
        NodeSettings(server=f"127.0.0.1:{_closed_port()}", insecure=True, give_up_after=5.0),
        None,
        rng=np.random.default_rng(0),
        clock=lambda: float(next(ticks)),
        sleep=lambda seconds: None,
    )

    # Act
    with (
        caplog.at_level("DEBUG", logger="accord.federation.client"),
        pytest.raises(PeerError) as raised,
    ):
        client.run()

    # Assert: several attempts, one warning, one final error naming the last cause
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    attempts = [r for r in caplog.records if r.getMessage().startswith("reconnecting in")]
    assert len(attempts) >= 3
    assert len(warnings) == 1
    assert warnings[0].startswith("cannot reach the server at 127.0.0.1:")
    assert "retrying every 2 s at most, for up to 5 s" in warnings[0]
    assert str(raised.value).startswith("no session with the server at 127.0.0.1:")
    assert "for 5 s (last error: " in str(raised.value)


def test_node_settings_default_to_a_finite_give_up_and_a_short_backoff() -> None:
    from accord.federation.client import DEFAULT_GIVE_UP_AFTER, NodeSettings

    settings_ = NodeSettings(server="127.0.0.1:50051")

    assert settings_.give_up_after == DEFAULT_GIVE_UP_AFTER == 600.0
    assert settings_.reconnect_max == 2.0
    with pytest.raises(ConfigurationError, match="give_up_after: expected seconds > 0"):
        NodeSettings(server="127.0.0.1:50051", give_up_after=0.0)


# ------------------------------------------------------------- gRPC's handshake lines


def test_failed_tls_handshakes_become_one_warning_per_cause_and_minute() -> None:
    from accord.commands.grpc_log import (
        GRPC_LINE,
        NO_CLIENT_CERTIFICATE,
        PLAINTEXT_CLIENT,
        HandshakeLog,
        handshake_cause,
    )

    def grpc_line(reason: str) -> str:
        return (
            "I1203 07:54:01.043274    9910 ssl_transport_security.cc:2563] Handshake failed "
            f"with error SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:{reason}: "
            "Invalid certificate verification context\n"
        )

    now = [0.0]
    log = HandshakeLog(clock=lambda: now[0], quiet=60.0)
    plaintext, no_certificate = (
        grpc_line("WRONG_VERSION_NUMBER"),
        grpc_line("PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    )

    assert GRPC_LINE.match(plaintext) and not GRPC_LINE.match("2026-12-03 07:55 INFO x\n")
    assert handshake_cause("I1203 07:54:01.0 1 x.cc:1] something else") is None
    assert handshake_cause(grpc_line("NO_SHARED_CIPHER")) == (
        "a client's TLS handshake failed (NO_SHARED_CIPHER)"
    )
    assert log.feed(plaintext) == PLAINTEXT_CLIENT
    assert log.feed(plaintext) is None  # the same cause within a minute
    now[0] = 5.0
    assert log.feed(no_certificate) is None  # the plaintext node's own TLS check
    now[0] = 61.0
    assert log.feed(plaintext) == PLAINTEXT_CLIENT
    now[0] = 75.0
    assert log.feed(no_certificate) == NO_CLIENT_CERTIFICATE


def test_an_interrupt_cuts_a_round_short_after_its_grace() -> None:
    # Arrange: a real gRPC server and a raw client, registered, that never answers a round
    spec = RunSpec("run", ModelSpec(), 64, 10, 2410, LocalTrainingSettings(), 1.0, False)
    grid = GrpcGrid(spec, TransportSettings(port=0), None, Authenticator(None, False))
    channel = grpc.insecure_channel(f"127.0.0.1:{grid.port}")
    hang_up = threading.Event()
    replies: list[Any] = []
    try:
        register = pb.NodeMessage(
            register=pb.Register(
                protocol_version=PROTOCOL_VERSION,
                node_id="node-00",
                sample_count=10,
                n_features=64,
                n_classes=10,
            )
        )

        def messages() -> Iterator[pb.NodeMessage]:
            yield register
            hang_up.wait()

        stream = pb_grpc.FederationStub(channel).Session(messages(), timeout=60)
        assert next(stream).WhichOneof("body") == "welcome"
        weights = np.zeros(2410, dtype=np.float32)
        collector = threading.Thread(
            target=lambda: replies.append(
                grid.collect_first_gradients(0, weights, ("node-00",), 120.0)
            )
        )
        collector.start()
        assert next(stream).WhichOneof("body") == "round_start"  # the round is under way

        # Act: a stop with 0.2 s of grace, against the round's 120 s deadline
        grid.interrupt(0.2)
        collector.join(timeout=60)

        # Assert
        assert not collector.is_alive()
        assert replies[0].failures == {"node-00": "no first gradient before the server stopped"}
    finally:
        hang_up.set()
        channel.close()
        grid.shutdown(None)


def test_fltrust_over_the_in_memory_grid_reproduces_the_simulation(
    small: tuple[Any, Any],
) -> None:
    # FLTrust needs the server's own update on its root data: the networked engine builds it
    # exactly as the simulation does, so the runs are equal.
    scenario, data = small
    settings_ = ServerSettings(
        run=SimulationSettings(scenario=scenario, stop=StopConditions(max_rounds=3)),
        policy="fltrust",
    )
    spec, factory = prepare_run(settings_, load_server_data(settings_, data), "run")
    run = FederatedRun(
        InMemoryGrid(spec, _workers(scenario, data)),
        factory,
        "fltrust",
        settings_.run.stop,
        settings_.federation,
        expected_nodes=scenario.nodes,
        quorum=scenario.nodes,
        run_id="run",
    )
    federated = run.run()
    expected = Simulation(settings_.run, "fltrust", data).run()
    assert len(federated.rounds) == 3
    for got, want in zip(federated.rounds, expected.rounds, strict=True):
        assert got.record.to_json() | _timing() == want.record.to_json() | _timing()


def test_a_run_that_diverges_in_aggregation_saves_its_reason_and_resume_reports_it(
    small: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: from round 3 on every node sends NaN (the engine calls that divergence)
    scenario, data = small
    path = tmp_path / "checkpoint.npz"
    honest_start_round = NodeWorker.start_round

    def nan_from_round_3(self: NodeWorker, round_index: int, *args: Any) -> Any:
        gradient = honest_start_round(self, round_index, *args)
        return gradient * np.float32("nan") if round_index >= 2 else gradient

    monkeypatch.setattr(NodeWorker, "start_round", nan_from_round_3)
    run, _ = _federated_run(scenario, data, 5, checkpoint_path=path)

    # Act
    result = run.run()
    state = load_run_checkpoint(path)
    resumed, _ = _federated_run(scenario, data, 5, checkpoint_path=path, resume=state)
    again = resumed.run()

    # Assert: not resumable as an interrupted run; the reason survives the round trip
    reason = "diverged: every first gradient is not finite at round 3"
    assert result.stop_reason == reason and len(result.rounds) == 2
    assert state["stop_reason"] == reason and state["rounds_done"] == 2
    assert again.stop_reason == reason and len(again.rounds) == 2


def test_a_diverged_record_survives_the_checkpoint_json() -> None:
    from accord.federation.driver import record_from_json
    from accord.rounds import RoundRecord

    record = RoundRecord(
        round_index=4,
        probabilities={"node-00": 1.0},
        present=("node-00",),
        dropped={},
        validation_accuracy_before=0.5,
        validation_accuracy_after=None,
        validation_loss_before=0.7,
        validation_loss_after=None,
        test_accuracy=None,
        test_loss=None,
        aggregate_seconds=0.0,
        learn_seconds=0.0,
        diverged="validation loss is not finite at round 5",
    )
    assert record_from_json(record.to_json()) == record


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '{"format": "accord-federation-run", "version": 2}',
            "expected a run_id (text) and settings",
        ),
        (
            '{"format": "accord-federation-run", "version": 2, "run_id": "r", "settings": {}, '
            '"transport": {"host": "h"}}',
            "transport: expected a host (text) and a port (integer)",
        ),
        ("[1, 2]", "not an Accord federation run file"),
        ("{", "not JSON"),
    ],
)
def test_a_damaged_run_file_is_refused_with_one_line(
    content: str, expected: str, tmp_path: Path
) -> None:
    from accord.errors import InputDataError
    from accord.federation.run_files import RUN_FILE, read_run_file

    (tmp_path / RUN_FILE).write_text(content)
    with pytest.raises(InputDataError, match=re.escape(expected)):
        read_run_file(tmp_path)


def _closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on: bound, read back and closed again (the
    one use of a port number that is not bound by its user)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
