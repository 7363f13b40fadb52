"""The options that ``accord simulate``, ``accord server`` and ``accord federate`` share,
and how they map onto :class:`accord.run.SimulationSettings`.

Each option maps onto one settings field (``_OPTION_FIELDS``); ``--config`` reads the same
fields from a TOML file (:mod:`accord.config`) and options given on the command line
override it. A value the settings reject is reported under the option's name
(:func:`name_option`). Only the standard library and the option choices load here: torch
and the training stack are imported by the commands' ``run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accord.config import SimulateConfig
    from accord.errors import ConfigurationError
    from accord.scenario import ScenarioSettings

__all__ = [
    "MODEL_CHOICES",
    "NO_FAULT",
    "add_display_options",
    "add_scenario_options",
    "add_stop_options",
    "add_training_options",
    "config_from_args",
    "early_scenario",
    "fault_option",
    "layer_widths",
    "name_option",
    "option_overrides",
    "policy_list",
]

#: Model kinds (as :data:`accord.training.models.MODEL_KINDS`, which imports torch).
MODEL_CHOICES = ("logistic", "mlp")
#: ``--fault none``: no faulty nodes.
NO_FAULT = "none"
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
    # Also sets hedge.credit_method (option_overrides): one method for both policies.
    "--credit-method": ("credit_method", ("actor_critic", "credit_method")),
    "--nodes-per-round": ("nodes_per_round", ("rounds", "nodes_per_round")),
    "--node-training": ("node_training", ("node_training",)),
    "--rounds": ("rounds", ("stop", "max_rounds")),
    "--target-accuracy": ("target_accuracy", ("stop", "target_accuracy")),
    "--patience": ("patience", ("stop", "patience")),
    "--time-budget": ("time_budget", ("stop", "time_budget_seconds")),
}


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
    group.add_argument(
        "--nodes-per-round",
        type=int,
        default=None,
        metavar="K",
        help="ask only K of the nodes each round, a sample drawn from the seed and the round "
        "[every node]",
    )
    group.add_argument(
        "--credit-method",
        choices=("auto", "exact", "first-order"),
        default=None,
        help="how Hedge-LOO and the Actor-Critic measure each node's credit: exact (2N+2 "
        "validation passes), first-order (two backward passes) or auto (first-order above 32 "
        "nodes or 20M candidate floats) [auto]",
    )


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


# ----------------------------------------------------------------------------- settings


def _option_of_field(field: str) -> str | None:
    option = "--" + field.replace("_", "-")
    return option if option in _OPTION_FIELDS else None


def name_option(error: ConfigurationError, given: Sequence[tuple[str, Any]]) -> Exception:
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
        raise name_option(error, list(overrides.values())) from error


def option_overrides(args: argparse.Namespace) -> dict[tuple[str, ...], tuple[str, Any]]:
    """``{field path: (option, value)}`` of the options given on the command line."""
    from accord.errors import ConfigurationError

    overrides: dict[tuple[str, ...], tuple[str, Any]] = {}
    for option, (dest, path) in _OPTION_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[path] = (option, value)
    if getattr(args, "credit_method", None) is not None:
        overrides[("hedge", "credit_method")] = ("--credit-method", args.credit_method)
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
            raise name_option(error, [("--fault", _show_groups(args.fault))]) from error
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
    from accord.run import SimulationSettings

    if args.config is not None:
        config = load_simulate_config(args.config)
    else:
        config = SimulateConfig(simulation=SimulationSettings())
    if getattr(args, "every", None) is not None and args.every < 1:
        raise ConfigurationError(f"--every: expected an integer >= 1, got {args.every}")
    simulation = _apply(config.simulation, option_overrides(args))
    return SimulateConfig(simulation=simulation, policies=args.policies or config.policies)


def early_scenario(args: argparse.Namespace) -> ScenarioSettings | None:
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
            path[1:]: given
            for path, given in option_overrides(args).items()
            if path[0] == "scenario"
        }
        settings: ScenarioSettings = _apply(base, scenario_overrides)
    except AccordError:
        return None
    return settings
