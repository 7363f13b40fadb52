"""The policies at scale (issue 9): 10, 100 and 1,000 nodes, an MLP and a ~1M-parameter CNN.

For every (model, N) cell, in a process of its own (so that its peak RSS is its own):

- ``mlp``: ``accord simulate --dataset synthetic --nodes N --samples 100·N --partition iid
  --hidden 64,32`` (scikit-learn's ``make_classification``; 70 % of the samples are the
  nodes', 10 % the server's validation set, 20 % the test set), run by
  :class:`accord.simulation.Simulation` exactly as the command runs it, with
  ``--node-training batched``.
- ``cnn``: 32×32 grey images generated here (10 class templates, each a sum of 3 random
  Gaussian blobs; a sample is its class template shifted by up to ±4 pixels in each axis
  plus Gaussian noise of σ 0.5), 100 training images per node, 256 validation images for the
  server; the CNN is conv 3×3 1→16, pool, conv 3×3 16→32, pool, linear 2048→480, linear
  480→10 (993,130 parameters), SGD 0.05, batch 16, one epoch. It is not a built-in model,
  so the cell drives :class:`accord.rounds.RoundEngine` itself with
  :class:`accord.training.local.LocalTrainer` nodes (what ``accord simulate`` does for its
  own models).

Figures per cell:

- local training per round, node by node (the loop) and batched
  (:class:`accord.training.batched.NodeBatch`), from the same weights, in the same process,
  and the largest difference between the two sets of first gradients;
- for Hedge-LOO and the Actor-Critic, with exact and with first-order credit: policy
  seconds per round (``aggregate_seconds + learn_seconds``, the Actor-Critic's safety check
  included) and round seconds; exact credit only where its ``(2N + 2) × dim`` candidates
  fit (the reason is given where it is skipped);
- the Spearman rank agreement of first-order (alone, without the policies' exact re-checks)
  with exact leave-one-out credit, per round, where exact credit ran;
- the peak RSS of the cell's process;
- the 1-minute load average before and after the cell (the machine is shared).

Then Flower 1.42's simulation (``run_simulation`` on Ray, one CPU per client, Flower's
``FedAvg``) of the same model, data and local training, for the node counts given, again
one process per cell; its seconds per round (after the first) stand beside Accord's FedAvg
round in the same run.

    python benchmarks/scale.py                 # N in {10, 100, 1000}, both models, Flower
    python benchmarks/scale.py --quick         # N in {10, 100}, 1 round, Flower at 10
    python benchmarks/scale.py --cell accord mlp 100  # one cell's JSON (what the run spawns)
    python benchmarks/scale.py --models mlp --reuse OLD.json  # re-measure the MLP cells only

prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model

SEED = 0
SAMPLES_PER_NODE = 100
CNN_VALIDATION = 256
CNN_LEARNING_RATE = 0.05
POLICIES = ("hedge-loo", "actor-critic")
CREDITS = ("exact", "first-order")
#: Exact credit runs where its (2N + 2) × dim candidate floats stay below this (2 GB) and
#: its (2N + 2) validation passes below ``EXACT_MAX_PASSES`` on the CNN.
EXACT_MAX_FLOATS = 500_000_000
EXACT_MAX_PASSES = 250


# ----------------------------------------------------------------------------- data, models


def cnn_templates(seed: int) -> np.ndarray:
    """10 class templates, 32×32: each the sum of 3 random Gaussian blobs, scaled to [0, 1]."""
    rng = np.random.default_rng([seed, 1])
    grid = np.stack(np.meshgrid(np.arange(32), np.arange(32), indexing="ij"), axis=-1)
    templates = np.zeros((10, 32, 32), dtype=np.float64)
    for c in range(10):
        for _ in range(3):
            centre = rng.uniform(4, 28, size=2)
            width = rng.uniform(2.0, 6.0)
            templates[c] += np.exp(-((grid - centre) ** 2).sum(-1) / (2 * width**2))
        templates[c] /= templates[c].max()
    return templates


def cnn_images(templates: np.ndarray, rng: np.random.Generator, count: int) -> tuple[Any, Any]:
    """``count`` images (count, 1, 32, 32) and their labels: a class template shifted by up
    to ±4 pixels per axis plus N(0, 0.5²) noise."""
    labels = rng.integers(0, 10, size=count)
    images = np.empty((count, 1, 32, 32), dtype=np.float32)
    for i, label in enumerate(labels):
        dx, dy = rng.integers(-4, 5, size=2)
        shifted = np.roll(templates[label], (int(dx), int(dy)), axis=(0, 1))
        images[i, 0] = shifted + rng.normal(0.0, 0.5, size=(32, 32))
    return images, labels.astype(np.int64)


def cnn_node_data(node: int) -> tuple[Any, Any]:
    """Node ``node``'s 100 training images (the same in the Accord and the Flower cells)."""
    return cnn_images(cnn_templates(SEED), np.random.default_rng([SEED, 7, node]), 100)


def build_cnn() -> Any:
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2048, 480),
            nn.ReLU(),
            nn.Linear(480, 10),
        )


def mlp_settings(nodes: int, rounds: int, policy_credit: str = "auto") -> Any:
    from accord.aggregation.actor_critic_settings import ActorCriticSettings
    from accord.aggregation.hedge import HedgeLooSettings
    from accord.data.faults import FaultSpec
    from accord.data.partition import PartitionSpec
    from accord.scenario import ScenarioSettings
    from accord.simulation import SimulationSettings, StopConditions
    from accord.training.models import ModelSpec

    return SimulationSettings(
        scenario=ScenarioSettings(
            dataset="synthetic",
            nodes=nodes,
            samples=SAMPLES_PER_NODE * nodes,
            partition=PartitionSpec(kind="iid"),
            fault=FaultSpec("label-flip", 0),
            seed=SEED,
        ),
        model=ModelSpec(hidden=(64, 32)),
        stop=StopConditions(max_rounds=rounds),
        actor_critic=ActorCriticSettings(credit_method=policy_credit),
        hedge=HedgeLooSettings(credit_method=policy_credit),
        node_training="batched",
    )


# ----------------------------------------------------------------------------- one cell


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _spearman(round_input: Any, server_learning_rate: float = 1.0) -> float:
    """Spearman correlation of first-order (alone) and exact step-normalised leave-one-out
    credit at the data-size weights of one round."""
    from scipy.stats import spearmanr

    from accord.aggregation.combine import data_size_probabilities
    from accord.aggregation.credit import leave_one_out_credit

    p = data_size_probabilities(round_input.present_counts)
    common = (
        round_input.validate,
        round_input.global_weights,
        p,
        round_input.first_gradients,
        server_learning_rate,
    )
    exact = leave_one_out_credit(*common, step_normalised=True).credit
    first = leave_one_out_credit(
        *common, step_normalised=True, validation_gradient=round_input.validation_gradient
    ).credit
    return round(float(spearmanr(exact, first).statistic), 4)


def _exact_skip(nodes: int, dim: int, passes_limit: int | None) -> str | None:
    candidates = 2 * nodes + 2
    floats = candidates * dim
    if floats > EXACT_MAX_FLOATS:
        return (
            f"exact credit scores {candidates} candidates of {dim} weights: {floats / 1e9:.1f}G "
            f"floats ({4 * floats / 2**30:.1f} GiB) per round, over this run's "
            f"{EXACT_MAX_FLOATS / 1e9:.1f}G limit"
        )
    if passes_limit is not None and candidates > passes_limit:
        return (
            f"exact credit needs {candidates} validation passes of the CNN per round "
            f"(measured ~0.1 s each here); over this run's {passes_limit}-pass limit"
        )
    return None


def mlp_cell(nodes: int, rounds: int) -> dict[str, Any]:
    from accord.simulation import Simulation

    out: dict[str, Any] = {"model": "mlp 64-32", "nodes": nodes, "rounds": rounds}
    # 1. local training, loop against batched, from the same weights (round 0)
    loop = Simulation(
        dataclasses.replace(mlp_settings(nodes, rounds), node_training="loop"), "fedavg"
    )
    batched = Simulation(mlp_settings(nodes, rounds), "fedavg")
    out["dim"] = batched.engine.dim
    weights = np.array(batched.engine.global_weights)
    tick = time.perf_counter()
    looped = loop.first_gradients(weights, 0)
    loop_seconds = time.perf_counter() - tick
    grid = batched._driver.grid
    tick = time.perf_counter()
    replies = grid.collect_first_gradients(0, weights, batched.engine.roster, 60.0)
    batched_seconds = time.perf_counter() - tick
    out["local_training"] = {
        "loop_seconds": round(loop_seconds, 4),
        "batched_seconds": round(batched_seconds, 4),
        "speedup": round(loop_seconds / batched_seconds, 2),
        "max_abs_difference": float(
            max(np.abs(replies.values[n] - g).max() for n, g in looped.items())  # type: ignore[operator]
        ),
        "what": "every node's first gradient of round 1 from the same weights, through the "
        "simulation's grid (batched) and Simulation.first_gradients (loop)",
        "load_1min": _load(),
    }
    del loop, batched
    # 2. FedAvg rounds: Accord's side of the Flower comparison
    simulation = Simulation(mlp_settings(nodes, rounds), "fedavg")
    out["fedavg"] = _rounds([simulation.run_round() for _ in range(rounds)])
    skip = _exact_skip(nodes, simulation.engine.dim, None)
    # the credit agreement along another FedAvg run, whose rounds are not timed (each
    # round computes exact credit once more)
    correlations: list[float] = []
    if skip is None:
        simulation = Simulation(mlp_settings(nodes, rounds), "fedavg")
        policy = simulation.engine.aggregator
        original = policy.aggregate

        def recording(round_input: Any) -> Any:
            correlations.append(_spearman(round_input))
            return original(round_input)

        policy.aggregate = recording  # type: ignore[method-assign]
        for _ in range(rounds):
            simulation.run_round()
    out["spearman_first_order_vs_exact"] = correlations if skip is None else skip
    out["peak_rss_mib_after_fedavg"] = _peak_rss_mib()
    del simulation
    # 3. the policies
    out["policies"] = {}
    for name in POLICIES:
        for credit in CREDITS:
            key = f"{name} {credit}"
            if credit == "exact" and skip is not None:
                out["policies"][key] = {"skipped": skip}
                continue
            simulation = Simulation(mlp_settings(nodes, rounds, credit), name)
            out["policies"][key] = _rounds([simulation.run_round() for _ in range(rounds)])
            del simulation
    return out


def _rounds(records: list[Any]) -> dict[str, Any]:
    """Per-round figures of a simulation's timed records."""
    return {
        "round_seconds": [round(t.round_seconds, 4) for t in records],
        "local_training_seconds": [round(t.local_training_seconds, 4) for t in records],
        "policy_seconds": [
            round(t.record.aggregate_seconds + t.record.learn_seconds, 4) for t in records
        ],
        "load_1min": _load(),
        "peak_rss_mib_so_far": _peak_rss_mib(),
    }


def _peak_rss_mib() -> int:
    """This process's peak RSS so far (MiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def cnn_cell(nodes: int, rounds: int) -> dict[str, Any]:
    from accord.scenario import node_seed
    from accord.training.batched import NodeBatch
    from accord.training.evaluation import make_validation_fn, make_validation_gradient_fn
    from accord.training.local import LocalTrainer, LocalTrainingSettings
    from accord.training.models import FlatModel

    module = build_cnn()  # one module for every node's trainer (each sets w_t first)
    flat = FlatModel(module)
    initial = flat.get_flat()
    settings = LocalTrainingSettings(learning_rate=CNN_LEARNING_RATE)
    trainers = []
    for node in range(nodes):
        features, labels = cnn_node_data(node)
        trainers.append(LocalTrainer(module, features, labels, settings, node_seed(SEED, node)))
    val_x, val_y = cnn_images(cnn_templates(SEED), np.random.default_rng([SEED, 8]), CNN_VALIDATION)
    scorers = (
        make_validation_fn(flat, val_x, val_y, chunk=4),
        make_validation_gradient_fn(flat, val_x, val_y),
    )
    out: dict[str, Any] = {"model": "cnn", "nodes": nodes, "rounds": rounds, "dim": flat.dim}

    def loop(weights: Any, round_index: int) -> list[Any]:
        return [trainer.first_gradient(weights, round_index) for trainer in trainers]

    batch = NodeBatch(trainers)
    tick = time.perf_counter()
    looped = loop(initial, 0)
    loop_seconds = time.perf_counter() - tick
    # the batched gradients chunk by chunk, compared as they come (not two sets at once)
    batched_seconds, difference, step = 0.0, 0.0, batch.nodes_per_chunk
    for start in range(0, nodes, step):
        tick = time.perf_counter()
        chunk = batch.first_gradients(initial, 0, trainers[start : start + step])
        batched_seconds += time.perf_counter() - tick
        for a, b in zip(looped[start : start + step], chunk, strict=True):
            difference = max(difference, float(np.abs(a - b).max()))
    del looped, chunk
    faster: Callable[[Any, int], list[Any]] = (
        loop if loop_seconds <= batched_seconds else batch.first_gradients
    )
    out["local_training"] = {
        "loop_seconds": round(loop_seconds, 4),
        "batched_seconds": round(batched_seconds, 4),
        "speedup": round(loop_seconds / batched_seconds, 2),
        "max_abs_difference": difference,
        "nodes_per_chunk": batch.nodes_per_chunk,
        "policy_rounds_train_with": "loop" if faster is loop else "batched",
        "load_1min": _load(),
        "peak_rss_mib_so_far": _peak_rss_mib(),
    }
    skip = _exact_skip(nodes, flat.dim, EXACT_MAX_PASSES)
    correlations: list[float] = []
    out["policies"] = {}
    for name in ("fedavg", *POLICIES):
        for credit in ("exact",) if name == "fedavg" else CREDITS:
            key = name if name == "fedavg" else f"{name} {credit}"
            if credit == "exact" and skip is not None and name != "fedavg":
                out["policies"][key] = {"skipped": skip}
                continue
            agreement = correlations if key == "hedge-loo exact" else None
            out["policies"][key] = _cnn_rounds(
                name, credit, initial, scorers, faster, rounds, nodes, agreement
            )
    out["spearman_first_order_vs_exact"] = skip if skip is not None else correlations
    out["fedavg"] = out["policies"].pop("fedavg")
    return out


def _cnn_rounds(
    name: str,
    credit: str,
    initial: Any,
    scorers: tuple[Any, Any],
    train: Callable[[Any, int], list[Any]],
    rounds: int,
    nodes: int,
    agreement: list[float] | None,
) -> dict[str, Any]:
    """``rounds`` rounds of one policy on the CNN's nodes; with ``agreement``, each round's
    Spearman correlation of first-order with exact credit is appended to it (untimed)."""
    from accord.aggregation.actor_critic_settings import ActorCriticSettings
    from accord.aggregation.base import RoundInput
    from accord.aggregation.hedge import HedgeLooSettings
    from accord.aggregation.registry import make_policy
    from accord.rounds import RoundEngine

    ids = tuple(f"node-{i:04d}" for i in range(nodes))
    validate, validation_gradient = scorers
    engine = RoundEngine(
        ids,
        dict.fromkeys(ids, 100.0),
        initial,
        make_policy(
            name,
            seed=SEED,
            actor_critic=ActorCriticSettings(credit_method=credit),
            hedge=HedgeLooSettings(credit_method=credit),
        ),
        validate=validate,
        validation_gradient=validation_gradient,
    )
    row: dict[str, Any] = {"round_seconds": [], "local_training_seconds": [], "policy_seconds": []}
    for round_index in range(rounds):
        weights = np.array(engine.global_weights)
        tick = time.perf_counter()
        gradients = train(weights, round_index)
        trained = time.perf_counter()
        if agreement is not None:
            probe = RoundInput(
                round_index=round_index,
                roster=ids,
                sample_counts=engine.sample_counts,
                present=np.ones(nodes, dtype=bool),
                global_weights=weights,
                first_gradients=np.stack(gradients),
                validate=validate,
                validation_gradient=validation_gradient,
            )
            agreement.append(_spearman(probe))
            tick += time.perf_counter() - trained  # not part of the round
            trained = time.perf_counter()
        record = engine.conclude(engine.aggregate(dict(zip(ids, gradients, strict=True))))
        done = time.perf_counter()
        row["round_seconds"].append(round(done - tick, 4))
        row["local_training_seconds"].append(round(trained - tick, 4))
        row["policy_seconds"].append(round(record.aggregate_seconds + record.learn_seconds, 4))
        del gradients
    row["load_1min"] = _load()
    row["peak_rss_mib_so_far"] = _peak_rss_mib()
    return row


# ----------------------------------------------------------------------------- Flower


def flower_cell(model: str, nodes: int, rounds: int) -> dict[str, Any]:
    """Flower's simulation of the same model, data and local training, Flower's FedAvg."""
    import flwr
    from flwr.app import ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from accord.flower import ScenarioClientSettings, node_client_app, scenario_client_app
    from accord.flower.records import weights_to_arrays
    from accord.training.models import FlatModel
    from accord.training.weights import WeightLayout

    if model == "mlp":
        settings = mlp_settings(nodes, rounds)
        client = scenario_client_app(
            ScenarioClientSettings(
                scenario=settings.scenario, model=settings.model, local=settings.local
            )
        )
        from accord.simulation import Simulation

        module = Simulation(settings, "fedavg").flat.module
    else:
        client = node_client_app(_cnn_flower_node)
        module = build_cnn()
    initial = weights_to_arrays(
        WeightLayout.of_module(module).unflatten(FlatModel(module).get_flat())
    )
    stamps: list[float] = []

    class Stamped(FedAvg):  # type: ignore[misc]
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            result = super().aggregate_train(server_round, replies)
            stamps.append(time.perf_counter())
            return result

    started = time.perf_counter()
    out: dict[str, Any] = {"model": model, "nodes": nodes, "rounds": rounds}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        out["serverapp_entered_seconds"] = round(time.perf_counter() - started, 3)
        strategy = Stamped(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_available_nodes=nodes,
        )
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=rounds,
            train_config=ConfigRecord({}),
            timeout=3600.0,
        )

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
        verbose_logging=False,
    )
    out["first_round_done_seconds"] = round(stamps[0] - started, 3) if stamps else None
    out["round_seconds"] = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    out["rounds_done"] = len(stamps)
    out["wall_seconds"] = round(time.perf_counter() - started, 3)
    out["flwr"] = flwr.__version__
    return out


_CNN_NODES: dict[int, Any] = {}


def _cnn_flower_node(context: Any) -> Any:
    """The Flower client's node ``partition-id``: the CNN and its 100 images, trained by
    :class:`LocalTrainer` as in the Accord cell."""
    index = int(context.node_config["partition-id"])
    if index not in _CNN_NODES:
        _CNN_NODES.clear()  # one node's model and data at a time per actor
        _CNN_NODES[index] = CnnNode(index)
    return _CNN_NODES[index]


class CnnNode:
    """An :class:`accord.fl.Node` around one CNN node's :class:`LocalTrainer`."""

    def __init__(self, index: int) -> None:
        from accord.scenario import node_seed
        from accord.training.local import LocalTrainer, LocalTrainingSettings
        from accord.training.weights import WeightLayout

        features, labels = cnn_node_data(index)
        module = build_cnn()
        self._layout = WeightLayout.of_module(module)
        self.trainer = LocalTrainer(
            module,
            features,
            labels,
            LocalTrainingSettings(learning_rate=CNN_LEARNING_RATE),
            node_seed(SEED, index),
        )
        self.sample_count = self.trainer.sample_count
        self.validation_sample_count = 0

    def layout(self) -> Any:
        return self._layout

    def fit(self, weights: Any, config: Any) -> Any:
        from accord.fl.contracts import ROUND, FitResult

        gradient = self.trainer.first_gradient(
            self._layout.flatten(weights), int(config.get(ROUND, 0))
        )
        return FitResult(
            sample_count=self.sample_count, first_gradient=self._layout.unflatten(gradient)
        )

    def evaluate(self, weights: Any, config: Any) -> Any:
        from accord.fl.contracts import EvalResult

        loss, accuracy = self.trainer.evaluate()
        return EvalResult(loss=loss, accuracy=accuracy, sample_count=self.sample_count)


# ----------------------------------------------------------------------------- the run


def run_cell(kind: str, model: str, nodes: int, rounds: int) -> dict[str, Any]:
    """One cell in a process of its own; its JSON, its peak RSS and the load around it."""
    before = _load()
    tick = time.perf_counter()
    command = [sys.executable, os.path.abspath(__file__), "--cell", kind, model, str(nodes)]
    command += ["--rounds", str(rounds)]
    print(f"scale: {' '.join(command[2:])} (load {before})", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        return {"failed": f"exit {done.returncode}", "stderr_tail": tail, "load_before": before}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["cell_wall_seconds"] = round(time.perf_counter() - tick, 1)
    result["load_1min_before"], result["load_1min_after"] = before, _load()
    return result


def summary(cells: dict[str, Any]) -> dict[str, Any]:
    """Medians of the per-round lists, and the Flower/Accord ratios of the same run."""

    def median(values: Any) -> float | None:
        return round(float(np.median(values)), 4) if isinstance(values, list) and values else None

    table: dict[str, Any] = {}
    for key, cell in cells.items():
        if not key.startswith("accord") or "failed" in cell:
            continue
        row: dict[str, Any] = {
            "local_training_loop_s": cell["local_training"]["loop_seconds"],
            "local_training_batched_s": cell["local_training"]["batched_seconds"],
            "fedavg_round_s": median(cell["fedavg"]["round_seconds"]),
            "peak_rss_mib": cell.get("peak_rss_mib"),
            "median_spearman": median(cell["spearman_first_order_vs_exact"]),
        }
        for name, figures in cell["policies"].items():
            if "skipped" in figures:
                row[f"{name} policy_s"] = "skipped"
                continue
            row[f"{name} policy_s"] = median(figures["policy_seconds"])
            row[f"{name} round_s"] = median(figures["round_seconds"])
        flower = cells.get(key.replace("accord", "flower"))
        if flower and "failed" not in flower and flower.get("round_seconds"):
            row["flower_fedavg_round_s"] = median(flower["round_seconds"])
            if row["fedavg_round_s"]:
                row["flower_over_accord_fedavg_round"] = round(
                    row["flower_fedavg_round_s"] / row["fedavg_round_s"], 1
                )
        table[key] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N in {10, 100}, 1 round")
    parser.add_argument("--nodes", type=int, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--rounds", type=int, default=None, help="[3, or 1 with --quick]")
    parser.add_argument(
        "--flower-nodes", type=int, nargs="*", default=None, help="[10 100 1000; 10 --quick]"
    )
    parser.add_argument("--cell", nargs=3, metavar=("KIND", "MODEL", "N"), default=None)
    parser.add_argument(
        "--reuse",
        default=None,
        metavar="JSON",
        help="an earlier run's output: its cells that this run does not measure are copied "
        "in, marked with that run's date",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as `accord simulate` (Flower's actors: one CPU each)
    if args.cell is not None:
        kind, model, nodes = args.cell[0], args.cell[1], int(args.cell[2])
        rounds = args.rounds or 1
        if kind == "flower":
            result = flower_cell(model, nodes, rounds)
        else:
            result = (mlp_cell if model == "mlp" else cnn_cell)(nodes, rounds)
        result["peak_rss_mib"] = _peak_rss_mib()
        print(json.dumps(result))
        return
    nodes = args.nodes or ([10, 100] if args.quick else [10, 100, 1000])
    rounds = args.rounds or (1 if args.quick else 3)
    flower_nodes = (
        args.flower_nodes
        if args.flower_nodes is not None
        else ([10] if args.quick else [10, 100, 1000])
    )
    started = time.perf_counter()
    cells: dict[str, Any] = {}
    for model in args.models:
        for n in nodes:
            # the CNN's 1,000-node cell trains 100,000 images per round: one round
            cell_rounds = 1 if (model == "cnn" and n >= 1000) else rounds
            cells[f"accord {model} {n}"] = run_cell("accord", model, n, cell_rounds)
            if n in flower_nodes and not (model == "cnn" and n >= 1000):
                cells[f"flower {model} {n}"] = run_cell("flower", model, n, max(cell_rounds, 2))
    if args.reuse is not None:
        with open(args.reuse) as handle:
            earlier = json.load(handle)
        for key, cell in earlier["cells"].items():
            if key not in cells:
                cells[key] = {**cell, "from_earlier_run": earlier["date"]}
    report = {
        "benchmark": "scale",
        "summary_medians": summary(cells),
        "cells": cells,
        "setup": {
            "mlp": "accord simulate --dataset synthetic --nodes N --samples 100N --partition iid "
            "--hidden 64,32 --node-training batched (make_classification; 70 training samples "
            "per node, 10 % validation, 20 % test); SGD 0.2, batch 16, 1 epoch",
            "cnn": "993,130 parameters (conv 1-16, pool, conv 16-32, pool, linear 2048-480-10) "
            "on generated 32x32 grey images: 10 class templates of 3 Gaussian blobs, shifted "
            "up to 4 px, noise sigma 0.5; 100 images per node, 256 validation images; SGD "
            "0.05, batch 16, 1 epoch; RoundEngine driven directly",
            "policy_seconds": "aggregate_seconds + learn_seconds of the round record (the "
            "Actor-Critic's safety check included)",
            "spearman": "first-order credit alone (no exact re-checks) against exact "
            "leave-one-out credit, step-normalised, at the data-size weights, per round",
            "flower": "run_simulation on Ray, one CPU per client (2 actors on 2 cores), "
            "Flower's FedAvg, the same nodes' local training; seconds per round after the "
            "first (the first includes start-up)",
            "threads": "torch.set_num_threads(1) in every Accord cell",
            "rounds": rounds,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
