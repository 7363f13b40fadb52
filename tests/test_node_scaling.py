"""Node data from files is standardised with the roster's pooled statistics (in memory).

The server combines the feature moments the nodes send at registration, standardises its
own validation data with the result, sends it with the first full weights, and keeps it in
the checkpoint so that a resumed run uses the same transform.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from accord.checkpoint_files import read_checkpoint
from accord.data.standardise import Standardisation
from accord.errors import ConfigurationError, InputDataError, ProtocolError
from accord.federation.driver import FederatedRun
from accord.federation.engine import (
    load_given_standardisation,
    load_server_data,
    prepare_run,
    standardisation_fit,
)
from accord.federation.grid import InMemoryGrid
from accord.federation.settings import ServerSettings
from accord.federation.tensors import weights_digest
from accord.federation.worker import NodeWorker
from accord.run import StopConditions
from accord.simulation.driver import SimulationSettings

NAMES = ("a", "b", "c")


def _blobs(rng: np.random.Generator, n: int, centre: float) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, n)
    features = rng.normal(0.0, 3.0, (n, 3)) + centre + 20.0 * labels[:, None]
    return features.astype(np.float32), labels.astype(np.int64)


def _write_csv(path: Path, features: np.ndarray, labels: np.ndarray) -> None:
    rows = [",".join([*NAMES, "label"])]
    rows += [
        ",".join([*map(repr, map(float, row)), str(int(y))])
        for row, y in zip(features, labels, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ServerSettings, dict[str, NodeWorker], list[np.ndarray]]:
    rng = np.random.default_rng(3)
    _write_csv(tmp_path / "validation.csv", *_blobs(rng, 60, 100.0))
    settings = ServerSettings(
        run=SimulationSettings(stop=StopConditions(max_rounds=2)),
        policy="fedavg",
        validation_data=str(tmp_path / "validation.csv"),
    )
    raw = [_blobs(rng, n, centre) for n, centre in ((40, 90.0), (25, 110.0), (30, 100.0))]
    workers = {
        f"node-{i}": NodeWorker(f"node-{i}", f, y, seed=i, global_standardisation=True)
        for i, (f, y) in enumerate(raw)
    }
    return settings, workers, [f for f, _ in raw]


def _run(
    settings: ServerSettings, workers: dict[str, NodeWorker], checkpoint: Path, **kwargs: object
) -> FederatedRun:
    data = load_server_data(settings)
    spec, factory = prepare_run(settings, data, "run")
    run = FederatedRun(
        InMemoryGrid(spec, workers),
        factory,
        settings.policy,
        settings.run.stop,
        settings.federation,
        expected_nodes=len(workers),
        quorum=len(workers),
        run_id="run",
        checkpoint_path=checkpoint,
        fit_standardisation=standardisation_fit(settings, data),
        **kwargs,  # type: ignore[arg-type]
    )
    run.run()
    return run


def test_the_run_standardises_every_node_with_the_pooled_statistics(
    setup: tuple[ServerSettings, dict[str, NodeWorker], list[np.ndarray]], tmp_path: Path
) -> None:
    # Arrange
    settings, workers, raw = setup
    pooled = Standardisation.fit(np.concatenate(raw))

    # Act
    run = _run(settings, workers, tmp_path / "checkpoint")

    # Assert: the pooled transform, applied at every node, and saved in the checkpoint
    assert run.standardisation is not None
    np.testing.assert_allclose(run.standardisation.mean, pooled.mean, rtol=1e-12)
    np.testing.assert_allclose(run.standardisation.scale, pooled.scale, rtol=1e-12)
    for worker, features in zip(workers.values(), raw, strict=True):
        np.testing.assert_array_equal(worker.features, run.standardisation.apply(features))
    saved = read_checkpoint(tmp_path / "checkpoint")["standardisation"]
    assert Standardisation.from_json(saved).mean.tolist() == run.standardisation.mean.tolist()
    assert run.engine is not None and run.engine.round_index == 2


def test_a_resumed_run_keeps_the_saved_transform(
    setup: tuple[ServerSettings, dict[str, NodeWorker], list[np.ndarray]], tmp_path: Path
) -> None:
    settings, workers, _ = setup
    first = _run(settings, workers, tmp_path / "checkpoint")
    state = read_checkpoint(tmp_path / "checkpoint")
    state["standardisation"]["mean"] = [0.0, 0.0, 0.0]  # a transform no moments would give
    state["stop_reason"] = None
    longer = ServerSettings(
        run=SimulationSettings(stop=StopConditions(max_rounds=3)),
        policy="fedavg",
        validation_data=settings.validation_data,
    )

    resumed = _run(longer, workers, tmp_path / "checkpoint2", resume=state)

    assert first.standardisation is not None and resumed.standardisation is not None
    assert resumed.standardisation.mean.tolist() == [0.0, 0.0, 0.0]
    assert resumed.standardisation.scale.tolist() == first.standardisation.scale.tolist()


def test_a_node_waiting_for_the_transform_refuses_to_train_without_it(
    setup: tuple[ServerSettings, dict[str, NodeWorker], list[np.ndarray]],
) -> None:
    settings, workers, _ = setup
    spec, factory = prepare_run(settings, load_server_data(settings), "run")
    worker = workers["node-0"]
    worker.configure(spec)
    weights = np.array(factory(("node-0",), {"node-0": 1.0}).global_weights)

    with pytest.raises(ProtocolError, match="the server sent none"):
        worker.start_round(0, weights, weights_digest(weights))


def test_the_server_can_give_the_transform(
    setup: tuple[ServerSettings, dict[str, NodeWorker], list[np.ndarray]], tmp_path: Path
) -> None:
    settings, workers, _ = setup
    given = Standardisation(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]), NAMES)
    (tmp_path / "transform.json").write_text(json.dumps(given.to_json()))
    from dataclasses import replace

    run = _run(
        replace(settings, standardise_from=str(tmp_path / "transform.json")),
        workers,
        tmp_path / "checkpoint",
    )

    assert run.standardisation is not None
    assert run.standardisation.scale.tolist() == [4.0, 5.0, 6.0]
    assert workers["node-1"].standardisation is not None
    fitted = load_given_standardisation(
        replace(settings, standardise_from=settings.validation_data), NAMES
    )
    assert fitted is not None and fitted.feature_names == NAMES


def test_a_given_transform_with_other_columns_is_one_clear_error(tmp_path: Path) -> None:
    other = Standardisation(np.zeros(2), np.ones(2), ("a", "z"))
    (tmp_path / "t.json").write_text(json.dumps(other.to_json()))
    (tmp_path / "v.csv").write_text("a,b,c,label\n1,2,3,0\n")
    settings = ServerSettings(validation_data=str(tmp_path / "v.csv"))
    from dataclasses import replace

    with pytest.raises(
        ConfigurationError,
        match=r"missing column\(s\) b, c; extra column\(s\) z in the standardisation",
    ):
        load_given_standardisation(
            replace(settings, standardise_from=str(tmp_path / "t.json")), NAMES
        )
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputDataError, match=r"bad\.json: standardisation: expected an object"):
        load_given_standardisation(
            replace(settings, standardise_from=str(tmp_path / "bad.json")), NAMES
        )
    with pytest.raises(ConfigurationError, match="standardise_from: give validation_data"):
        ServerSettings(standardise_from="x.json")


def test_without_moments_the_server_warns_about_unscaled_files(
    setup: tuple[ServerSettings, dict[str, NodeWorker], list[np.ndarray]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, _, raw = setup
    plain = {"node-0": NodeWorker("node-0", raw[0], np.zeros(len(raw[0]), dtype=np.int64), seed=0)}

    with caplog.at_level(logging.WARNING):
        run = _run(settings, plain, tmp_path / "checkpoint")

    assert run.standardisation is None
    assert "the server's validation data: 3 of 3 features are far from unit scale" in caplog.text
    assert "start the nodes with the default --standardise global" in caplog.text


def test_the_cli_options_are_checked_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from accord.cli import main

    server = ["server", "--insecure", "--port", "0", "--out", str(tmp_path / "run")]
    node = ["node", "--insecure", "--server", "127.0.0.1:9", "--scenario-node", "0"]

    assert main([*server, "--standardise-from", str(tmp_path / "t.json")]) == 2
    assert "standardise_from: give validation_data as well" in capsys.readouterr().err
    assert main([*node, "--standardise", "own"]) == 2
    assert "--standardise: only with --data" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_node_file_with_other_columns_is_refused_at_registration(
    setup: tuple[ServerSettings, dict[str, NodeWorker], list[np.ndarray]],
) -> None:
    # Arrange: the server's files have columns a, b, c; one node's file has b, a, c
    from dataclasses import replace

    from accord.federation.fingerprint import Fingerprint
    from accord.federation.grid import admission_problem

    settings, workers, _ = setup
    spec, _ = prepare_run(settings, load_server_data(settings), "run")
    same = replace(workers["node-0"].info(), fingerprint=Fingerprint.of(features=NAMES))
    swapped = replace(same, fingerprint=Fingerprint.of(features=("b", "a", "c")))

    # Act
    accepted = admission_problem(same, spec, None)
    refused = admission_problem(swapped, spec, None)

    # Assert
    assert accepted is None
    assert refused == (
        "the node's feature columns differ from the server's files (names and order must "
        "agree; the server's: a, b, c (3 columns))"
    )
