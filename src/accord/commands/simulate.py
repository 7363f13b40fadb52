"""``accord simulate``: federated training in one process, policies side by side.

The default is the scenario that shows why the Actor-Critic exists: digits, 10 nodes,
Dirichlet 0.5, 3 label-flipping nodes, 100 rounds, the Actor-Critic against FedAvg. Every
option maps onto one field of :class:`accord.simulation.SimulationSettings`; ``--config``
reads the same fields from a TOML file (:mod:`accord.config`) and options given on the
command line override it.

The policies run interleaved, round by round, each on its own copy of the model and the
same data, so the per-round table compares them as they go. Output: a progress bar on
stderr (only on a terminal), a compact table on stdout every few rounds, a final summary,
and the run folder (:mod:`accord.reporting.writer`).

Only the standard library and the option choices (numpy) load while parsing: torch, the
training stack and matplotlib load inside :func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accord.config import SimulateConfig
    from accord.errors import ConfigurationError
    from accord.scenario import ScenarioData, ScenarioSettings
    from accord.simulation.driver import RunResult, Simulation, SimulationSettings, TimedRecord

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CHOICES",
    "NO_FAULT",
    "RoundTable",
    "add_display_options",
    "add_parser",
    "add_scenario_options",
    "add_stop_options",
    "add_training_options",
    "config_from_args",
    "describe_scenario",
    "fault_option",
    "faulty_mass_note",
    "layer_widths",
    "policy_list",
    "process_age",
    "run",
    "scenario_from_npz",
    "scenario_helper_main",
    "scenario_to_npz",
    "summary_lines",
]

#: Model kinds (as :data:`accord.training.models.MODEL_KINDS`, which imports torch).
MODEL_CHOICES = ("logistic", "mlp")
#: ``--fault none``: no faulty nodes.
NO_FAULT = "none"
#: Rows of the per-round table for a full run (one every ``ceil(rounds / TABLE_ROWS)``).
TABLE_ROWS = 20

# option -> (argparse dest, path of the field in SimulationSettings)
_OPTION_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "--dataset": ("dataset", ("scenario", "dataset")),
    "--nodes": ("nodes", ("scenario", "nodes")),
    "--samples": ("samples", ("scenario", "samples")),
    "--partition": ("partition", ("scenario", "partition", "kind")),
    "--alpha": ("alpha", ("scenario", "partition", "alpha")),
    "--fault": ("fault", ("scenario", "fault", "kind")),
    "--faulty": ("faulty", ("scenario", "fault", "count")),
    "--fault-scale": ("fault_scale", ("scenario", "fault", "scale")),
    "--fault-start": ("fault_start", ("scenario", "fault", "start")),
    "--fault-end": ("fault_end", ("scenario", "fault", "end")),
    "--fault-probability": ("fault_probability", ("scenario", "fault", "probability")),
    "--seed": ("seed", ("scenario", "seed")),
    "--validation-fraction": ("validation_fraction", ("scenario", "validation_fraction")),
    "--test-fraction": ("test_fraction", ("scenario", "test_fraction")),
    "--model": ("model", ("model", "kind")),
    "--hidden": ("hidden", ("model", "hidden")),
    "--local-learning-rate": ("local_learning_rate", ("local", "learning_rate")),
    "--local-epochs": ("local_epochs", ("local", "epochs")),
    "--batch-size": ("batch_size", ("local", "batch_size")),
    "--momentum": ("momentum", ("local", "momentum")),
    "--server-learning-rate": ("server_learning_rate", ("rounds", "server_learning_rate")),
    "--rounds": ("rounds", ("stop", "max_rounds")),
    "--target-accuracy": ("target_accuracy", ("stop", "target_accuracy")),
    "--patience": ("patience", ("stop", "patience")),
    "--time-budget": ("time_budget", ("stop", "time_budget_seconds")),
}


# ----------------------------------------------------------------------------- parsing


def policy_list(text: str) -> tuple[str, ...]:
    """argparse type of ``--policies``: comma-separated names from ``POLICIES``, no repeats."""
    from accord.aggregation.registry import POLICIES

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    accepted = ", ".join(POLICIES)
    if not names:
        raise argparse.ArgumentTypeError(f"expected policy names from {accepted}")
    for name in names:
        if name not in POLICIES:
            raise argparse.ArgumentTypeError(f"unknown policy {name!r}; accepted: {accepted}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a policy is listed twice in {text!r}")
    return names


def fault_option(text: str) -> str | tuple[tuple[str, int, float | None], ...]:
    """argparse type of ``--fault``: a kind (or ``none``), or several fault groups as
    ``KIND:N[:SCALE]`` separated by commas (``label-flip:2,scale:1:10,free-rider:1``)."""
    from accord.data import FAULT_KINDS

    kinds = ", ".join((*sorted(FAULT_KINDS), NO_FAULT))
    text = text.strip()
    if ":" not in text and "," not in text:
        if text not in (*FAULT_KINDS, NO_FAULT):
            raise argparse.ArgumentTypeError(
                f"expected one of {kinds}, or KIND:N,... groups; got {text!r}"
            )
        return text
    groups: list[tuple[str, int, float | None]] = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3) or fields[0] not in FAULT_KINDS:
            raise argparse.ArgumentTypeError(
                f"expected fault groups KIND:N[:SCALE],... with KIND from "
                f"{', '.join(sorted(FAULT_KINDS))}; got {part.strip()!r}"
            )
        try:
            count = int(fields[1])
            scale = float(fields[2]) if len(fields) == 3 else None
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                "expected KIND:N[:SCALE] with an integer N and a number SCALE; got "
                f"{part.strip()!r}"
            ) from error
        groups.append((fields[0], count, scale))
    return tuple(groups)


def layer_widths(text: str) -> tuple[int, ...]:
    """argparse type of ``--hidden``: comma-separated positive layer widths."""
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 64,32; got {text!r}"
        ) from error
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer widths; got {text!r}")
    return widths


def add_scenario_options(group: Any) -> None:
    """The scenario options (dataset, split, faults, held-out shares) on ``group``: one
    definition for ``accord simulate``, ``server``, ``node`` and ``federate``."""
    from accord.data import DATASETS, FAULT_KINDS, PARTITIONS

    group.add_argument("--dataset", choices=DATASETS, default=None, help="[digits]")
    group.add_argument("--nodes", type=int, default=None, help="number of nodes [10]")
    group.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="samples of a generated dataset (synthetic, synthetic-hard) [3000]",
    )
    group.add_argument("--partition", choices=PARTITIONS, default=None, help="[dirichlet]")
    group.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="Dirichlet concentration, smaller is more skewed [0.5]",
    )
    group.add_argument(
        "--fault",
        type=fault_option,
        default=None,
        metavar="KIND|KIND:N[:SCALE],...",
        help=f"what the faulty nodes do: one of {', '.join((*sorted(FAULT_KINDS), NO_FAULT))} "
        "[label-flip]; or several groups in one run, e.g. label-flip:2,scale:1:10,free-rider:1 "
        "(N nodes each, SCALE for scale and sign-flip; --faulty and --fault-scale then do not "
        "apply)",
    )
    group.add_argument(
        "--faulty",
        type=int,
        default=None,
        metavar="N",
        help="faulty nodes [30%% of --nodes rounded down: 3 of 10, 0 of 3]; a run with every "
        "node faulty in every round is refused",
    )
    group.add_argument(
        "--fault-scale", type=float, default=None, help="factor of sign-flip and scale faults [4]"
    )
    group.add_argument(
        "--fault-start",
        type=int,
        default=None,
        metavar="R",
        help="faulty nodes are honest in the first R rounds and faulty from round R+1 on [0]",
    )
    group.add_argument(
        "--fault-end",
        type=int,
        default=None,
        metavar="R",
        help="faulty nodes are honest again after round R (faulty in rounds START+1..R) [never]",
    )
    group.add_argument(
        "--fault-probability",
        type=float,
        default=None,
        metavar="Q",
        help="a faulty node is faulty in each round of its window with probability Q, drawn "
        "from the seed, node and round [1]",
    )
    group.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="share of the data held out as the server's validation set [0.1]",
    )
    group.add_argument(
        "--test-fraction", type=float, default=None, help="share held out for testing [0.2]"
    )


def add_training_options(group: Any) -> None:
    """The model and local training options on ``group``."""
    group.add_argument("--model", choices=MODEL_CHOICES, default=None, help="[mlp]")
    group.add_argument(
        "--hidden", type=layer_widths, default=None, metavar="W[,W]", help="MLP hidden widths [32]"
    )
    group.add_argument(
        "--local-learning-rate", type=float, default=None, help="η_local of local SGD [0.2]"
    )
    group.add_argument("--local-epochs", type=int, default=None, help="local epochs [1]")
    group.add_argument("--batch-size", type=int, default=None, help="local batch size [16]")
    group.add_argument("--momentum", type=float, default=None, help="local SGD momentum [0]")
    group.add_argument("--server-learning-rate", type=float, default=None, help="η_server [1.0]")


def add_stop_options(group: Any, budget_help: str) -> None:
    """The stop conditions on ``group``."""
    group.add_argument(
        "--target-accuracy", type=float, default=None, help="stop at this validation accuracy"
    )
    group.add_argument(
        "--patience", type=int, default=None, help="stop after N rounds without a better one"
    )
    group.add_argument(
        "--time-budget", type=float, default=None, metavar="SECONDS", help=budget_help
    )


def add_display_options(parser: argparse.ArgumentParser) -> None:
    """Run folder, table spacing and ``--quiet``: what a training run shows and keeps."""
    parser.add_argument(
        "--out", metavar="RUN_DIR", default=None, help="run folder [runs/<time>-<id>]"
    )
    parser.add_argument(
        "--every", type=int, default=None, metavar="K", help="a table row every K rounds [auto]"
    )
    parser.add_argument(
        "--quiet",
        dest="simulate_quiet",
        action="store_true",
        help="no progress bar and no per-round table, only the final summary",
    )


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    from accord.aggregation.registry import POLICIES

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help=help_text,
        description="Federated training with every node in this process. Runs the policies "
        "side by side on the same nodes and prints a table every few rounds; writes "
        "metrics.jsonl, summary.json, config.toml and PNG plots into the run folder. "
        "Defaults: digits, 10 nodes, Dirichlet 0.5, 3 label-flipping nodes, 100 rounds, "
        "actor-critic against fedavg. Options override --config.",
    )
    parser.add_argument(
        "--config", metavar="FILE.toml", default=None, help="settings file (see README)"
    )
    parser.add_argument(
        "--policies",
        "--policy",
        dest="policies",
        type=policy_list,
        default=None,
        metavar="NAMES",
        help=f"comma-separated, from {', '.join(POLICIES)} [actor-critic,fedavg]",
    )
    parser.add_argument("--rounds", type=int, default=None, help="maximum rounds [100]")
    parser.add_argument("--seed", type=int, default=None, help="seed of everything [0]")
    add_display_options(parser)
    add_scenario_options(parser.add_argument_group("scenario"))
    add_training_options(parser.add_argument_group("model and training"))
    add_stop_options(
        parser.add_argument_group("stop conditions (per policy, whichever comes first)"),
        "stop after this much training time per policy",
    )
    parser.set_defaults(run=run)
    return parser


# ----------------------------------------------------------------------------- settings


def _option_of_field(field: str) -> str | None:
    option = "--" + field.replace("_", "-")
    return option if option in _OPTION_FIELDS else None


def _name_option(error: ConfigurationError, given: Sequence[tuple[str, Any]]) -> Exception:
    """Rewrite a settings error (``field: ...``) to name the command-line option."""
    from accord.errors import ConfigurationError

    match = re.match(r"^([a-z_]+): (.*)$", str(error), re.DOTALL)
    if match is None:
        return error
    option = _option_of_field(match.group(1))
    if option == "--faulty" and any(
        name == "--fault" and isinstance(value, tuple) and value for name, value in given
    ):
        option = "--fault"  # the counts are in the fault groups
    if option is None:
        return error
    text = f"{option}: {match.group(2)}"
    others = [
        f"{name} {_show(value)}"
        for name, value in given
        if name != option and value != () and not dataclasses.is_dataclass(value)
    ]
    if others and option not in {name for name, _ in given}:
        text += f" (with {', '.join(others)})"
    return ConfigurationError(text)


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and hasattr(value[0], "kind"):  # fault groups
        return ",".join(
            f"{group.kind}:{group.count}"
            + (f":{group.scale:g}" if group.kind in ("scale", "sign-flip") else "")
            for group in value
        )
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _apply(
    settings: Any,
    overrides: Mapping[tuple[str, ...], tuple[str, Any]],
    path: tuple[str, ...] = (),
) -> Any:
    """``settings`` with the overridden fields replaced, each dataclass rebuilt once."""
    from accord.errors import ConfigurationError

    changes: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        key = (*path, field.name)
        if any(len(p) > len(key) and p[: len(key)] == key for p in overrides):
            changes[field.name] = _apply(getattr(settings, field.name), overrides, key)
        elif key in overrides:
            changes[field.name] = overrides[key][1]
    if not changes:
        return settings
    try:
        return dataclasses.replace(settings, **changes)
    except ConfigurationError as error:
        raise _name_option(error, list(overrides.values())) from error


def _overrides(args: argparse.Namespace) -> dict[tuple[str, ...], tuple[str, Any]]:
    """``{field path: (option, value)}`` of the options given on the command line."""
    from accord.errors import ConfigurationError

    overrides: dict[tuple[str, ...], tuple[str, Any]] = {}
    for option, (dest, path) in _OPTION_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[path] = (option, value)
    if isinstance(getattr(args, "fault", None), tuple):
        overrides[("scenario", "faults")] = ("--fault", _fault_groups(args, overrides))
        overrides[("scenario", "fault")] = ("--fault", _default_fault())  # a config's is replaced
    elif any(getattr(args, name, None) is not None for name in ("fault", "faulty", "fault_scale")):
        overrides[("scenario", "faults")] = ("--fault", ())  # one group replaces a config's
    if getattr(args, "fault", None) == NO_FAULT:
        del overrides[_OPTION_FIELDS["--fault"][1]]
        if args.faulty not in (None, 0):
            raise ConfigurationError(
                f"--faulty: {args.faulty} faulty nodes need a fault recipe, but --fault none "
                "means no faulty node; choose a --fault or drop --faulty"
            )
        overrides[_OPTION_FIELDS["--faulty"][1]] = ("--fault", 0)
    return overrides


def _default_fault() -> Any:
    from accord.data.faults import FaultSpec

    return FaultSpec()


def _fault_groups(
    args: argparse.Namespace, overrides: dict[tuple[str, ...], tuple[str, Any]]
) -> tuple[Any, ...]:
    """``--fault KIND:N[:SCALE],...`` as fault groups, each with the timing options given;
    the single-fault overrides are taken out of ``overrides``."""
    from accord.data.faults import FaultSpec
    from accord.errors import ConfigurationError

    for option in ("--faulty", "--fault-scale"):
        if getattr(args, _OPTION_FIELDS[option][0], None) is not None:
            raise ConfigurationError(
                f"{option}: does not apply to fault groups; give N and SCALE in --fault "
                "KIND:N[:SCALE],..."
            )
    timing = {}
    for option, name in (
        ("--fault-start", "start"),
        ("--fault-end", "end"),
        ("--fault-probability", "probability"),
    ):
        path = _OPTION_FIELDS[option][1]
        if path in overrides:
            timing[name] = overrides.pop(path)[1]
    overrides.pop(_OPTION_FIELDS["--fault"][1], None)
    groups = []
    for kind, count, scale in args.fault:
        try:
            groups.append(
                FaultSpec(kind, count, **({} if scale is None else {"scale": scale}), **timing)
            )
        except ConfigurationError as error:
            raise _name_option(error, [("--fault", _show_groups(args.fault))]) from error
    return tuple(groups)


def _show_groups(groups: Sequence[tuple[str, int, float | None]]) -> str:
    return ",".join(
        f"{kind}:{count}" + ("" if scale is None else f":{scale:g}")
        for kind, count, scale in groups
    )


def config_from_args(args: argparse.Namespace) -> SimulateConfig:
    """The effective settings: defaults, then ``--config``, then the options given."""
    from accord.config import SimulateConfig, load_simulate_config
    from accord.errors import ConfigurationError
    from accord.simulation.driver import SimulationSettings

    if args.config is not None:
        config = load_simulate_config(args.config)
    else:
        config = SimulateConfig(simulation=SimulationSettings())
    if getattr(args, "every", None) is not None and args.every < 1:
        raise ConfigurationError(f"--every: expected an integer >= 1, got {args.every}")
    simulation = _apply(config.simulation, _overrides(args))
    return SimulateConfig(simulation=simulation, policies=args.policies or config.policies)


def _early_scenario(args: argparse.Namespace) -> ScenarioSettings | None:
    """The scenario settings without importing torch (for the helper), or ``None`` when
    they cannot be known yet (the full settings then report the error)."""
    from accord.config import read_toml, settings_from_mapping
    from accord.errors import AccordError
    from accord.scenario import ScenarioSettings

    try:
        base = ScenarioSettings()
        if args.config is not None:
            table = read_toml(args.config).get("scenario", {})
            if not isinstance(table, dict):
                return None
            base = settings_from_mapping(
                ScenarioSettings, table, source=str(args.config), prefix="scenario."
            )
        scenario_overrides = {
            path[1:]: given for path, given in _overrides(args).items() if path[0] == "scenario"
        }
        settings: ScenarioSettings = _apply(base, scenario_overrides)
    except AccordError:
        return None
    return settings


# ----------------------------------------------------------------------------- scenario helper

_HELPER_CODE = (
    "import sys\n"
    "from accord.commands.simulate import scenario_helper_main\n"
    "sys.exit(scenario_helper_main())\n"
)


def scenario_helper_main() -> int:
    """Body of the helper process: scenario settings (JSON) on stdin, the built scenario
    (``.npz``, no pickle) on stdout. Runs scikit-learn's import and the data split while
    the parent imports torch."""
    import json

    from accord.config import settings_from_mapping
    from accord.scenario import ScenarioSettings, build_scenario

    settings = settings_from_mapping(
        ScenarioSettings, json.loads(sys.stdin.buffer.read()), source="scenario helper"
    )
    sys.stdout.buffer.write(scenario_to_npz(build_scenario(settings)))
    sys.stdout.buffer.flush()
    return 0


def scenario_to_npz(data: ScenarioData) -> bytes:
    """A built scenario as ``.npz`` bytes (arrays plus a JSON index), read by
    :func:`scenario_from_npz`."""
    import io
    import json

    import numpy as np

    holdout = data.holdout
    arrays: dict[str, Any] = {}
    for part in ("train", "validation", "test"):
        dataset = getattr(holdout, part)
        arrays[f"{part}_features"] = dataset.features
        arrays[f"{part}_labels"] = dataset.labels
    for node in data.nodes:
        arrays[f"node{node.index}_features"] = node.features
        arrays[f"node{node.index}_labels"] = node.labels
        if node.flipped_labels is not None:
            arrays[f"node{node.index}_flipped_labels"] = node.flipped_labels
    index = {
        "name": holdout.train.name,
        "n_classes": holdout.train.n_classes,
        "nodes": [
            {"node_id": node.node_id, "index": node.index, "fault_group": data.fault_group_of(node)}
            for node in data.nodes
        ],
    }
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def scenario_from_npz(blob: bytes, settings: ScenarioSettings) -> ScenarioData:
    import io
    import json

    import numpy as np

    from accord.data.datasets import Dataset, HoldoutSplit
    from accord.scenario import NodeData, ScenarioData

    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        index = json.loads(arrays["index"].tobytes())
        name, n_classes = str(index["name"]), int(index["n_classes"])
        parts = {
            part: Dataset(name, arrays[f"{part}_features"], arrays[f"{part}_labels"], n_classes)
            for part in ("train", "validation", "test")
        }
        groups = settings.fault_groups
        nodes = tuple(
            NodeData(
                node_id=str(node["node_id"]),
                index=int(node["index"]),
                features=arrays[f"node{node['index']}_features"],
                labels=arrays[f"node{node['index']}_labels"],
                fault=None if node["fault_group"] is None else groups[int(node["fault_group"])],
                flipped_labels=arrays.get(f"node{node['index']}_flipped_labels"),
            )
            for node in index["nodes"]
        )
    return ScenarioData(settings=settings, holdout=HoldoutSplit(**parts), nodes=nodes)


class _ScenarioHelper:
    """Builds the scenario in a separate Python process while this one imports torch.

    Whatever goes wrong there (a bad setting, a crash), :meth:`collect` returns ``None`` and
    the caller builds the scenario itself, which raises the real error.
    """

    def __init__(self, settings: ScenarioSettings) -> None:
        import json
        import subprocess

        from accord.config import settings_to_mapping

        self.settings = settings
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        # The settings go now, so the helper starts at once (a few hundred bytes: the pipe
        # takes them without blocking); its stdin is then closed.
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(settings_to_mapping(settings)).encode())
            stdin.close()
        except OSError:  # the helper died already; collect() then reports nothing
            pass
        self.process.stdin = None

    def collect(self, settings: ScenarioSettings) -> ScenarioData | None:
        import subprocess

        if settings != self.settings:
            self.close()
            return None
        try:
            blob, _ = self.process.communicate(timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            self.close()
            return None
        if self.process.returncode != 0:
            return None
        try:
            return scenario_from_npz(blob, settings)
        except (OSError, ValueError, KeyError):
            return None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self.process.wait()


# ----------------------------------------------------------------------------- output


def process_age() -> float | None:
    """Seconds since this process started (Linux), for time-to-first-round."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


class RoundTable:
    """The compact per-round table: round, then per policy test accuracy and faulty mass."""

    def __init__(self, policies: Sequence[str], with_faulty: bool) -> None:
        self.policies = policies
        self.with_faulty = with_faulty
        self.cell = 18 if with_faulty else 9
        self.width = max(self.cell, *(len(p) for p in policies))

    def header(self) -> list[str]:
        names = " | ".join(p.ljust(self.width) for p in self.policies)
        sub = ("test acc  faulty" if self.with_faulty else "test acc").ljust(self.width)
        subs = " | ".join(sub for _ in self.policies)
        return [f"round | {names}".rstrip(), f"      | {subs}".rstrip()]

    def row(
        self,
        round_number: int,
        cells: Mapping[str, tuple[float | None, float] | str | None],
    ) -> str:
        """``cells``: per policy (test accuracy, faulty mass), or its stop reason (or
        ``None``) once it stopped: shown as ``(diverged)``, ``(failed)`` or ``(stopped)``."""
        parts = []
        for policy in self.policies:
            cell = cells.get(policy)
            if cell is None or isinstance(cell, str):
                reason = cell or ""
                text = (
                    "(diverged)"
                    if reason.startswith("diverged")
                    else ("(failed)" if reason.startswith("failed") else "(stopped)")
                )
            else:
                accuracy, mass = cell
                text = f"{_fmt(accuracy):>8}"
                if self.with_faulty:
                    text += f"  {mass:6.3f}"
            parts.append(text.ljust(self.width))
        return (f"{round_number:>5} | " + " | ".join(parts)).rstrip()


def summary_lines(results: Mapping[str, Mapping[str, Any]], with_faulty: bool) -> list[str]:
    """The final table: one line per policy from its ``summary.json`` entry."""
    width = max(6, *(len(name) for name in results))
    head = f"{'policy':<{width}}  final acc  best acc  rounds"
    if with_faulty:
        head += "  faulty mass"
    head += "  round ms  policy share  stop reason"
    lines = [head]
    for name, entry in results.items():
        final = (
            "diverged"
            if entry.get("diverged")
            else ("failed" if entry["stop_reason"].startswith("failed") else None)
        )
        line = (
            f"{name:<{width}}  {final or _fmt(entry['final_test_accuracy']):>9}  "
            f"{_fmt(entry['best_test_accuracy']):>8}  {entry['rounds']:>6}"
        )
        if with_faulty:
            line += f"  {_fmt(entry['faulty_mass_final'], '.3f'):>11}"
        mean_round = entry["mean_round_seconds"]
        share = entry["policy_share_of_round_time"]
        line += (
            f"  {_fmt(None if mean_round is None else mean_round * 1000, '.1f'):>8}"
            f"  {_fmt(None if share is None else share * 100, '.1f') + '%':>12}"
            f"  {entry['stop_reason']}"
        )
        lines.append(line)
    return lines


def describe_scenario(data: ScenarioData, settings: SimulationSettings) -> str:
    """One line about the data: dataset, nodes, split and the faulty nodes."""
    scenario = settings.scenario
    partition = scenario.partition
    split = (
        f"Dirichlet {partition.alpha:g}"
        if partition.kind == "dirichlet"
        else ("IID" if partition.kind == "iid" else f"{partition.shards_per_node} label shards")
    )
    groups = []
    for group in scenario.fault_groups:
        members = [node.node_id for node in data.nodes if node.fault == group]
        if members:
            noun = "node" if len(members) == 1 else "nodes"
            when = f" {group.when()}" if group.when() else ""
            groups.append(f"{len(members)} {group.label()} {noun}{when} ({', '.join(members)})")
    faulty = ", ".join(groups) if groups else "no faulty node"
    return f"{scenario.dataset}, {scenario.nodes} nodes, {split}, {faulty}"


# ----------------------------------------------------------------------------- running


def _default_out() -> str:
    import secrets

    return f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    early = _early_scenario(args)
    helper = _ScenarioHelper(early) if early is not None else None
    try:
        return _run(args, started, helper)
    finally:
        if helper is not None:
            helper.close()


def _run(args: argparse.Namespace, started: float, helper: _ScenarioHelper | None) -> int:
    import contextlib

    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # set already, or torch already ran parallel work
        torch.set_num_interop_threads(1)
    startup = {"torch_imported": time.perf_counter() - started}

    from accord.aggregation.registry import make_policy
    from accord.config import simulate_config_to_toml
    from accord.errors import ConfigurationError
    from accord.reporting.writer import RunFolder
    from accord.scenario import build_scenario
    from accord.simulation.driver import Simulation

    config = config_from_args(args)
    settings = config.simulation
    # The policies need no data: build them (the Actor-Critic's networks and optimisers,
    # which import a good part of torch) while the helper process is still at work.
    # Same arguments as Simulation uses (tests check the runs are equal).
    policies = {
        name: make_policy(
            name,
            seed=settings.scenario.seed,
            server_learning_rate=settings.rounds.server_learning_rate,
            actor_critic=settings.actor_critic,
            hedge=settings.hedge,
        )
        for name in config.policies
    }
    startup["policies_ready"] = time.perf_counter() - started
    data = helper.collect(settings.scenario) if helper is not None else None
    source = "helper process" if data is not None else "built here"
    if data is None:
        try:
            data = build_scenario(settings.scenario)
        except ConfigurationError as error:
            raise _name_option(error, list(_overrides(args).values())) from error
    startup["scenario_ready"] = time.perf_counter() - started
    folder = RunFolder(args.out or _default_out())
    folder.write_config(simulate_config_to_toml(config))
    simulations = {name: Simulation(settings, policies[name], data=data) for name in policies}
    startup["simulations_ready"] = time.perf_counter() - started
    logger.debug(
        "startup: torch imported after %.2f s, policies ready after %.2f s, scenario ready "
        "after %.2f s (%s), simulations ready after %.2f s",
        startup["torch_imported"],
        startup["policies_ready"],
        startup["scenario_ready"],
        source,
        startup["simulations_ready"],
    )
    quiet = args.simulate_quiet or logging.getLogger().getEffectiveLevel() > logging.INFO
    from accord.reporting.model_files import (
        SCENARIO_INPUT_NOTE,
        ModelExport,
        scenario_feature_names,
    )

    export = ModelExport(
        folder.path,
        model=settings.model,
        n_features=data.n_features,
        n_classes=data.n_classes,
        feature_names=scenario_feature_names(data.n_features),
        policies=config.policies,
        input_note=SCENARIO_INPUT_NOTE,
    )
    return _drive(
        args, config.policies, simulations, data, settings, folder, quiet, started, startup, export
    )


class _GracefulStop:
    """The first Ctrl-C (SIGINT) or SIGTERM lets the current round finish for every policy,
    then the run stops and writes its summary and plots; a second signal stops at once."""

    def __init__(self) -> None:
        import signal

        self.requested = False
        self.signal_number: int | None = None
        self.previous: dict[int, Any] = {}
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: signals keep their usual effect
                return
            self.previous[number] = signal.SIG_DFL if previous is None else previous

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.signal_number = signum
        what = "Ctrl-C" if signum == _sigint() else "SIGTERM"
        sys.stderr.write(f"{what}: stopping after this round (again to stop at once)\n")
        self.restore()

    def restore(self) -> None:
        import signal

        for number, previous in self.previous.items():
            signal.signal(number, previous)
        self.previous = {}


def _sigint() -> int:
    import signal

    return int(signal.SIGINT)


def _drive(
    args: argparse.Namespace,
    policies: Sequence[str],
    simulations: Mapping[str, Simulation],
    data: ScenarioData,
    settings: SimulationSettings,
    folder: Any,
    quiet: bool,
    started: float,
    startup: Mapping[str, float],
    export: Any,
) -> int:
    """Run the policies round by round; ``export`` writes each policy's models. A policy
    whose model diverges, or that gives a malformed answer, ends alone (its stop reason says
    why and in which round); the others go on. Exit: 130 on Ctrl-C, 1 if a policy failed,
    4 if one diverged, else 0."""
    from tqdm import tqdm

    from accord.commands.exit_codes import ExitCode
    from accord.errors import ProtocolError
    from accord.reporting.summary import faulty_mass
    from accord.rounds import DivergedError
    from accord.simulation.driver import RunResult, stop_reason_of_round
    from accord.simulation.stop import StopTracker

    faulty = data.faulty_nodes
    max_rounds = settings.stop.max_rounds
    every = args.every or max(1, math.ceil(max_rounds / TABLE_ROWS))
    table = RoundTable(policies, with_faulty=bool(faulty))
    bar = tqdm(  # one step per round of the run, all policies together
        total=max_rounds,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        unit="round",
        dynamic_ncols=True,
        leave=False,
    )

    def say(line: str) -> None:
        if bar.disable:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            tqdm.write(line, file=sys.stdout)

    say(f"{describe_scenario(data, settings)}; {max_rounds} rounds; policies {', '.join(policies)}")
    if not quiet:
        for line in table.header():
            say(line)
    trackers = {name: StopTracker(settings.stop, 0.0) for name in policies}
    spent = dict.fromkeys(policies, 0.0)
    rounds: dict[str, list[TimedRecord]] = {name: [] for name in policies}
    reasons: dict[str, str] = {}
    active = list(policies)
    timing: dict[str, float | None] = {f"run_to_{k}_seconds": v for k, v in startup.items()}
    interrupted = False
    failure: BaseException | None = None
    stop = _GracefulStop()
    try:
        round_number = 0
        while active:
            round_number += 1
            cells: dict[str, tuple[float | None, float] | str | None] = {
                name: reasons[name] for name in policies if name in reasons
            }
            stopped_before = set(cells)
            for name in list(active):
                if "run_to_first_round_seconds" not in timing:
                    timing["run_to_first_round_seconds"] = time.perf_counter() - started
                    timing["process_to_first_round_seconds"] = _entry_age()
                try:
                    timed = simulations[name].run_round()
                except DivergedError as error:
                    reasons[name] = f"diverged: {error.reason}"
                    cells[name] = reasons[name]
                    active.remove(name)
                    continue
                except ProtocolError as error:  # a malformed answer from this policy
                    reasons[name] = f"failed: {error}"
                    cells[name] = reasons[name]
                    active.remove(name)
                    continue
                if "process_to_first_round_done_seconds" not in timing:
                    timing["process_to_first_round_done_seconds"] = _entry_age()
                rounds[name].append(timed)
                folder.append_round(name, timed)
                export.round_done(
                    name,
                    timed.record.round_index,
                    simulations[name].engine.global_weights,
                    timed.record.validation_accuracy_after,
                )
                spent[name] += timed.round_seconds
                record = timed.record
                mass = faulty_mass(record, timed.faulty if timed.faulty is not None else faulty)
                cells[name] = (record.test_accuracy, mass)
                reason = stop_reason_of_round(trackers[name], timed, spent[name])
                if reason is not None:
                    reasons[name] = reason
                    active.remove(name)
                    if record.diverged is not None:
                        cells[name] = reason
            bar.update(1)
            bar.set_postfix_str(
                " ".join(
                    f"{n}={_fmt(c[0], '.3f')}" for n, c in cells.items() if isinstance(c, tuple)
                ),
                refresh=False,
            )
            stopped_now = any(
                isinstance(cells.get(n), str) and n not in stopped_before for n in policies
            )
            if not quiet and (
                round_number % every == 0 or round_number == 1 or not active or stopped_now
            ):
                say(table.row(round_number, cells))
            if stop.requested and active:
                interrupted = True
                if (
                    not quiet
                    and round_number % every != 0
                    and round_number != 1
                    and not stopped_now
                ):
                    say(table.row(round_number, cells))
                for name in active:
                    reasons[name] = "interrupted"
                active = []
    except KeyboardInterrupt:
        interrupted = True
        for name in active:
            reasons[name] = "interrupted"
    except Exception as error:  # keep what was learned, then report the failure
        failure = error
        for name in active:
            reasons[name] = f"failed: {error}"
    finally:
        stop.restore()
        bar.close()
    results = [
        RunResult(
            policy=name,
            rounds=tuple(rounds[name]),
            stop_reason=reasons.get(name, "failed"),
            faulty_nodes=faulty,
            seconds=spent[name],
        )
        for name in policies
    ]
    for result in results:
        if result.rounds:
            engine = simulations[result.policy].engine
            export.finish(
                result.policy, result.rounds[-1].record.round_index, engine.global_weights
            )
    summary = _summary(results, simulations, data, settings, timing)
    folder.write_summary(summary)
    if failure is not None:
        raise failure
    plots = folder.write_plots(
        [r for r in results if r.rounds],
        [n.node_id for n in data.nodes],
        faulty,
        title=describe_scenario(data, settings),
    )
    summary["plots"] = [path.name for path in plots]
    folder.write_summary(summary)
    say("")
    for line in summary_lines(summary["results"], with_faulty=bool(faulty)):
        say(line)
    if faulty:
        say(faulty_mass_note(summary["faulty_data_share"], policies, data.time_varying))
    say(f"run folder: {folder.path}")
    if interrupted:
        terminated = stop.signal_number is not None and stop.signal_number != _sigint()
        return int(ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED)
    if any(reason.startswith("failed") for reason in reasons.values()):
        return int(ExitCode.FAILED)
    if any(reason.startswith("diverged") for reason in reasons.values()):
        return int(ExitCode.DIVERGED)
    return int(ExitCode.OK)


def faulty_mass_note(share: float | None, policies: Sequence[str], time_varying: bool) -> str:
    """The footnote under the final table that says what "faulty mass" is."""
    what = (
        "probability on the nodes faulty in the last round"
        if time_varying
        else "probability on the faulty nodes at the end"
    )
    if "fedavg" in policies:
        return f"(faulty mass: {what}; FedAvg gives them their data share, {_fmt(share, '.3f')})"
    return f"(faulty mass: {what}; the faulty nodes' data share is {_fmt(share, '.3f')})"


def _entry_age() -> float | None:
    """Seconds since the ``accord`` command started (:func:`accord.cli.entry_seconds`)."""
    from accord.cli import entry_seconds

    return entry_seconds()


def _summary(
    results: Sequence[RunResult],
    simulations: Mapping[str, Simulation],
    data: ScenarioData,
    settings: SimulationSettings,
    timing: Mapping[str, float | None],
) -> dict[str, Any]:
    """The content of ``summary.json``.

    ``faulty_nodes``: the nodes in a fault group (faulty in some round); ``fault_groups``:
    each group in words; ``time_varying``: whether a faulty node is honest in some rounds
    (then each ``metrics.jsonl`` line's ``faulty`` lists that round's faulty nodes, and the
    faulty masses use them). ``diverged``: the policies whose model diverged (exit code 4).

    ``timing`` (seconds): ``run_to_*_seconds`` count from the start of ``accord simulate``'s
    ``run`` (torch imported, policies, scenario and simulations ready, first round started);
    ``process_to_first_round_seconds`` and ``process_to_first_round_done_seconds`` count from
    the ``accord`` entry point (the import of :mod:`accord.cli`, the console script's first
    step; or the call of :func:`accord.cli.main` when called in a process that had imported it
    before), not from the start of the OS process, which may have run something else first.
    """
    import datetime as dt
    import platform

    import torch

    from accord import __version__
    from accord.config import settings_to_mapping
    from accord.reporting.summary import data_share, policy_summary

    counts = {node.node_id: float(node.sample_count) for node in data.nodes}
    return {
        "format": "accord-simulate-run",
        "version": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "accord_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "scenario": describe_scenario(data, settings),
        "policies": [r.policy for r in results],
        "roster": [node.node_id for node in data.nodes],
        "faulty_nodes": list(data.faulty_nodes),
        "fault_groups": [
            group.describe() for group in settings.scenario.fault_groups if group.count
        ],
        "time_varying": data.time_varying,
        "diverged": [r.policy for r in results if r.stop_reason.startswith("diverged")],
        "sample_counts": counts,
        "faulty_data_share": data_share(counts, data.faulty_nodes),
        "timing": dict(timing),
        "results": {
            r.policy: policy_summary(
                r,
                data.faulty_nodes,
                policy_settings=getattr(simulations[r.policy].policy, "settings", None),
            )
            for r in results
        },
        "settings": settings_to_mapping(settings),
    }


# The names `accord federate` and `accord server` imported before they were public.
_policy_list = policy_list
_widths = layer_widths
_describe = describe_scenario
_Table = RoundTable
_summary_lines = summary_lines
_process_age = process_age
