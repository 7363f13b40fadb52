"""Whole alignment runs: real party processes and enclave processes over TCP on 127.0.0.1.

The oracle is a plain Python set intersection of the generated IDs.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from align_support import (
    Party,
    Relay,
    make_ids,
    party_args,
    read_csv,
    write_policy,
    write_table,
)


@dataclass
class Setup:
    folder: Path
    tables: dict[str, Path]
    ids: dict[str, list[str]]
    policy: Path
    keys: dict[str, Path]


def build(folder: Path, sizes: dict[str, tuple[int, int]], universe: list[str]) -> Setup:
    """Each party takes a slice of ``universe`` (overlapping), in a party-specific order."""
    tables, ids, keys = {}, {}, {}
    for index, (name, (start, stop)) in enumerate(sizes.items()):
        order = universe[start:stop]
        random.Random(index).shuffle(order)
        ids[name] = order
        tables[name] = folder / f"{name}.csv"
        write_table(tables[name], order, feature=f"{name}_x")
        keys[name] = folder / f"{name}-platform.pem"
    policy = write_policy(folder / "policy.toml", platform_keys=list(keys.values()))
    return Setup(folder, tables, ids, policy, keys)


def run_pair(setup: Setup, out: Path, *, relay: dict[str, object] | None = None) -> tuple:
    """Run a (listening) and b (dialling), optionally through a relay; return both outcomes."""
    out.mkdir(exist_ok=True)
    a = Party(
        "a", party_args(setup.tables["a"], setup.policy, setup.keys["a"], out, "a", listen=True)
    )
    target = a.address()
    proxy = Relay(target, **relay) if relay is not None else None  # type: ignore[arg-type]
    b = Party(
        "b",
        party_args(
            setup.tables["b"], setup.policy, setup.keys["b"], out, "b",
            peers=[proxy.address if proxy else target],
        ),
    )  # fmt: skip
    results = (a.wait(), b.wait())
    if proxy is not None:
        proxy.close()
        proxy.join()
    return results, proxy


def aligned_ids(out: Path, name: str) -> list[str]:
    return [row["id"] for row in read_csv(out / f"{name}.aligned.csv")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    folder = tmp_path_factory.mktemp("pair")
    universe = make_ids(700, seed=1)
    return build(folder, {"a": (0, 450), "b": (250, 700)}, universe)


@pytest.fixture(scope="module")
def first_session(pair: Setup) -> tuple:
    return run_pair(pair, pair.folder / "session1", relay={})


def test_two_parties_equal_a_plain_set_intersection(pair: Setup, first_session: tuple) -> None:
    ((code_a, stdout_a, err_a), (code_b, _, err_b)), _ = first_session
    assert code_a == 0, err_a
    assert code_b == 0, err_b
    out = pair.folder / "session1"
    oracle = set(pair.ids["a"]) & set(pair.ids["b"])
    assert len(oracle) == 200
    ids_a, ids_b = aligned_ids(out, "a"), aligned_ids(out, "b")
    assert ids_a == ids_b  # every position holds the same sample on both sides
    assert set(ids_a) == oracle and len(ids_a) == len(oracle)
    # The row maps point at each party's own rows, position by position.
    for name in ("a", "b"):
        rows = read_csv(out / f"{name}.map.csv")
        assert [int(row["position"]) for row in rows] == list(range(len(oracle)))
        assert [pair.ids[name][int(row["row"])] for row in rows] == ids_a
        aligned = read_csv(out / f"{name}.aligned.csv")
        assert [int(row[f"{name}_x"]) for row in aligned] == [int(r["row"]) * 10 for r in rows]
    summary = json.loads(stdout_a)
    assert summary["own_ids"] == 450 and summary["peer_ids"] == {"b": 450}
    assert summary["intersection"] == 200
    assert summary["peer_enclaves"]["b"]["backend"] == "simulated"
    assert json.loads((out / "a.summary.json").read_text()) == summary


def test_shared_order_is_neither_input_nor_sorted_order(pair: Setup, first_session: tuple) -> None:
    ids = aligned_ids(pair.folder / "session1", "a")
    for name in ("a", "b"):
        in_input_order = [value for value in pair.ids[name] if value in set(ids)]
        assert ids != in_input_order
    assert ids != sorted(ids) and ids != sorted(ids, reverse=True)


def test_transport_bytes_carry_none_of_the_ids(pair: Setup, first_session: tuple) -> None:
    _, relay = first_session
    for direction, data in relay.captured.items():
        assert len(data) > 450 * 16, direction  # the digests did cross
        for value in pair.ids["a"] + pair.ids["b"]:
            encoded = value.encode()
            assert encoded not in data
            assert encoded.hex().encode() not in data


def test_a_second_session_shuffles_differently(pair: Setup, first_session: tuple) -> None:
    ((code_a, _, _), (code_b, _, _)), _ = run_pair(pair, pair.folder / "session2")
    assert (code_a, code_b) == (0, 0)
    first = aligned_ids(pair.folder / "session1", "a")
    second = aligned_ids(pair.folder / "session2", "a")
    assert sorted(first) == sorted(second)
    assert first != second
    assert aligned_ids(pair.folder / "session2", "b") == second


def test_three_parties_learn_only_the_full_intersection(tmp_path: Path) -> None:
    universe = make_ids(600, seed=2)
    setup = build(tmp_path, {"a": (0, 300), "b": (100, 400), "c": (200, 600)}, universe)
    out = tmp_path / "out"
    out.mkdir()

    def args(name: str, **kw: object) -> list[str]:
        return party_args(
            setup.tables[name], setup.policy, setup.keys[name], out, name, parties=3, **kw
        )  # type: ignore[arg-type]

    # c's table is Parquet, and so is its aligned output.
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa_csv.read_csv(setup.tables["c"]), parquet)
    c_args = args("c", peers=[])
    c_args[c_args.index(str(setup.tables["c"]))] = str(parquet)
    c_args[c_args.index(str(out / "c.aligned.csv"))] = str(out / "c.aligned.parquet")
    a = Party("a", args("a", listen=True))
    b = Party("b", args("b", listen=True, peers=[a.address()]))
    # c listens too, although it dials every peer (the README's "each party listens and
    # dials the parties started before it"): it needs no listener and must not wait for one.
    c = Party(
        "c", [*c_args, "--listen", "127.0.0.1:0", "--peer", a.address(), "--peer", b.address()]
    )
    results = [party.wait() for party in (a, b, c)]
    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    oracle = set(setup.ids["a"]) & set(setup.ids["b"]) & set(setup.ids["c"])
    assert len(oracle) == 100  # pairwise overlaps are 200, 100 and 200
    ids = aligned_ids(out, "a")
    assert set(ids) == oracle and len(ids) == 100
    assert aligned_ids(out, "b") == ids
    aligned_c = pq.read_table(out / "c.aligned.parquet")
    assert aligned_c.column("id").to_pylist() == ids
    assert aligned_c.column_names == ["id", "c_x"]
    summaries = [json.loads(stdout) for _, stdout, _ in results]
    assert [s["intersection"] for s in summaries] == [100, 100, 100]
    assert summaries[2]["peer_ids"] == {"a": 300, "b": 300}
    assert summaries[0]["parties"] == ["a", "b", "c"]


def test_config_file_and_padding_hide_the_set_size(tmp_path: Path) -> None:
    universe = make_ids(300, seed=3)
    setup = build(tmp_path, {"a": (0, 200), "b": (100, 300)}, universe)
    out = tmp_path / "out"
    out.mkdir()
    a = Party(
        "a", party_args(setup.tables["a"], setup.policy, setup.keys["a"], out, "a", listen=True)
    )
    config = tmp_path / "b.toml"
    config.write_text(
        "input = 'b.csv'\nkey = 'id'\npolicy = 'policy.toml'\n"
        f"peer = ['{a.address()}']\nplatform_key = 'b-platform.pem'\npad_to = 1000\n"
        "output_map = 'out/b.map.csv'\ninclude_ids = true\n"
    )
    b = Party("b", ["--config", str(config)])
    (code_a, stdout_a, err_a), (code_b, stdout_b, err_b) = a.wait(), b.wait()
    assert (code_a, code_b) == (0, 0), err_a + err_b
    assert json.loads(stdout_a)["peer_ids"] == {"b": None}  # b padded: its size stays hidden
    assert json.loads(stdout_b)["peer_ids"] == {"a": 200}
    rows = read_csv(out / "b.map.csv")
    assert [row["id"] for row in rows] == aligned_ids(out, "a")
    assert not (out / "b.aligned.csv").exists()
