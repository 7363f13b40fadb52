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

This module drives the run (scenario helper process, policies round by round, signals);
the options and their mapping onto the settings are :mod:`accord.commands.run_options`, the
tables and ``summary.json`` :mod:`accord.commands.run_output`. Only the standard library
and the option choices (numpy) load while parsing: torch, the training stack and matplotlib
load inside :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from accord.commands.run_options import (
    add_display_options,
    add_scenario_options,
    add_stop_options,
    add_training_options,
    config_from_args,
    early_scenario,
    name_option,
    option_overrides,
    policy_list,
)
from accord.commands.run_output import (
    TABLE_ROWS,
    RoundTable,
    entry_age,
    faulty_mass_note,
    fmt,
    summary_json,
    summary_lines,
)

if TYPE_CHECKING:
    from accord.run import SimulationSettings, TimedRecord
    from accord.scenario import ScenarioData, ScenarioSettings
    from accord.simulation.driver import RunResult, Simulation

logger = logging.getLogger(__name__)

__all__ = ["add_parser", "run", "scenario_helper_main"]


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
    parser.add_argument(
        "--device", default="cpu", help="where the model trains: cpu or cuda[:k] [cpu]"
    )
    add_display_options(parser)
    add_scenario_options(parser.add_argument_group("scenario"))
    training = parser.add_argument_group("model and training")
    add_training_options(training)
    training.add_argument(
        "--node-training",
        choices=("auto", "batched", "loop"),
        default=None,
        help="train the built-in nodes of a round one after another (loop), or as one "
        "stack of their models (batched; the same batches, to float rounding); auto batches "
        "from 32 nodes on [auto]",
    )
    add_stop_options(
        parser.add_argument_group("stop conditions (per policy, whichever comes first)"),
        "stop after this much training time per policy",
    )
    parser.set_defaults(run=run)
    return parser


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
    from accord.scenario_codec import scenario_to_npz

    # The split's warnings (a Dirichlet draw topped up, say) reach the user through this
    # process's stderr, which is the command's; its errors do not: the command builds the
    # scenario again and reports the real error itself.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.WARNING)
    try:
        settings = settings_from_mapping(
            ScenarioSettings, json.loads(sys.stdin.buffer.read()), source="scenario helper"
        )
        built = scenario_to_npz(build_scenario(settings))
    except Exception:  # see above: the command reports it
        return 2
    sys.stdout.buffer.write(built)
    sys.stdout.buffer.flush()
    return 0


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

        from accord.scenario_codec import scenario_from_npz

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


# ----------------------------------------------------------------------------- running


def _default_out() -> str:
    import secrets

    return f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    early = early_scenario(args)
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
    from accord.training.device import resolve_device

    device = str(resolve_device(args.device))
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
            raise name_option(error, list(option_overrides(args).values())) from error
    startup["scenario_ready"] = time.perf_counter() - started
    folder = RunFolder(args.out or _default_out())
    folder.write_config(simulate_config_to_toml(config))
    simulations = {
        name: Simulation(settings, policies[name], data=data, device=device) for name in policies
    }
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


class _Output:
    """The run's output on stdout (through tqdm's writer while its bar is on stderr)."""

    def __init__(self, total_rounds: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.bar = tqdm(  # one step per round of the run, all policies together
            total=total_rounds,
            file=sys.stderr,
            disable=quiet or not sys.stderr.isatty(),
            unit="round",
            dynamic_ncols=True,
            leave=False,
        )

    def say(self, line: str) -> None:
        if self.bar.disable:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            self.tqdm.write(line, file=sys.stdout)

    def advance(self, cells: Mapping[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(
            " ".join(f"{n}={fmt(c[0], '.3f')}" for n, c in cells.items() if isinstance(c, tuple)),
            refresh=False,
        )


#: A policy's cell in the round table: (test accuracy, faulty mass), or its stop reason.
Cell = tuple[float | None, float] | str | None


class _Race:
    """The policies side by side, one round each at a time, until each has stopped."""

    def __init__(
        self,
        policies: Sequence[str],
        simulations: Mapping[str, Simulation],
        settings: SimulationSettings,
        data: ScenarioData,
        folder: Any,
        started: float,
        startup: Mapping[str, float],
        export: Any,
    ) -> None:
        from accord.run import StopTracker

        self.export = export
        self.policies = policies
        self.simulations = simulations
        self.folder = folder
        self.started = started
        self.faulty = data.faulty_nodes
        self.trackers = {name: StopTracker(settings.stop, 0.0) for name in policies}
        self.spent = dict.fromkeys(policies, 0.0)
        self.rounds: dict[str, list[TimedRecord]] = {name: [] for name in policies}
        self.reasons: dict[str, str] = {}
        self.active = list(policies)
        self.timing: dict[str, float | None] = {
            f"run_to_{k}_seconds": v for k, v in startup.items()
        }

    def play_round(self) -> tuple[dict[str, Cell], bool]:
        """One round of every active policy: the table's cells, and whether a policy
        stopped in it."""
        cells: dict[str, Cell] = {
            name: self.reasons[name] for name in self.policies if name in self.reasons
        }
        stopped_before = set(cells)
        for name in list(self.active):
            cells[name] = self._play(name)
        stopped_now = any(
            isinstance(cells.get(n), str) and n not in stopped_before for n in self.policies
        )
        return cells, stopped_now

    def _play(self, name: str) -> Cell:
        from accord.errors import ProtocolError
        from accord.reporting.summary import faulty_mass
        from accord.rounds import DivergedError
        from accord.run import stop_reason_of_round

        if "run_to_first_round_seconds" not in self.timing:
            self.timing["run_to_first_round_seconds"] = time.perf_counter() - self.started
            self.timing["process_to_first_round_seconds"] = entry_age()
        try:
            timed = self.simulations[name].run_round()
        except DivergedError as error:
            if self.simulations[name].engine.diverged is None:  # found while aggregating
                logger.warning("%s: diverged: %s", name, error.reason)
            return self._stop(name, f"diverged: {error.reason}")
        except ProtocolError as error:  # a malformed answer from this policy
            return self._stop(name, f"failed: {error}")
        except Exception as error:  # a bug in this policy's round: it ends, the others go on
            number = self.simulations[name].engine.round_index + 1
            logger.error("%s failed at round %d", name, number, exc_info=True)
            return self._stop(name, f"failed: {type(error).__name__} at round {number}: {error}")
        if "process_to_first_round_done_seconds" not in self.timing:
            self.timing["process_to_first_round_done_seconds"] = entry_age()
        self.rounds[name].append(timed)
        self.folder.append_round(name, timed)
        self.export.round_done(
            name,
            timed.record.round_index,
            self.simulations[name].engine.global_weights,
            timed.record.validation_accuracy_after,
        )
        self.spent[name] += timed.round_seconds
        record = timed.record
        mass = faulty_mass(record, timed.faulty if timed.faulty is not None else self.faulty)
        reason = stop_reason_of_round(self.trackers[name], timed, self.spent[name])
        if reason is not None:
            self._stop(name, reason)
            if record.diverged is not None:
                return reason
        return (record.test_accuracy, mass)

    def _stop(self, name: str, reason: str) -> str:
        self.reasons[name] = reason
        self.active.remove(name)
        return reason

    def stop_all(self, reason: str) -> None:
        for name in self.active:
            self.reasons[name] = reason
        self.active = []

    def results(self) -> list[RunResult]:
        from accord.simulation.driver import RunResult

        return [
            RunResult(
                policy=name,
                rounds=tuple(self.rounds[name]),
                stop_reason=self.reasons.get(name, "failed"),
                faulty_nodes=self.faulty,
                seconds=self.spent[name],
            )
            for name in self.policies
        ]


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
    whose model diverges, that gives a malformed answer or whose round raises, ends alone
    (its stop reason says why and in which round); the others go on. Exit: 130 on Ctrl-C,
    1 if a policy failed, 4 if one diverged, else 0."""
    from accord.scenario import describe_scenario

    max_rounds = settings.stop.max_rounds
    every = args.every or max(1, math.ceil(max_rounds / TABLE_ROWS))
    table = RoundTable(policies, with_faulty=bool(data.faulty_nodes))
    out = _Output(max_rounds, quiet)
    out.say(f"{describe_scenario(data)}; {max_rounds} rounds; policies {', '.join(policies)}")
    if not quiet:
        for line in table.header():
            out.say(line)
    race = _Race(policies, simulations, settings, data, folder, started, startup, export)
    interrupted = False
    failure: BaseException | None = None
    stop = _GracefulStop()
    try:
        round_number = 0
        while race.active:
            round_number += 1
            cells, stopped_now = race.play_round()
            out.advance(cells)
            shown = round_number % every == 0 or round_number == 1 or stopped_now
            if not quiet and (shown or not race.active or stop.requested):
                out.say(table.row(round_number, cells))
            if stop.requested and race.active:
                interrupted = True
                race.stop_all("interrupted")
    except KeyboardInterrupt:
        interrupted = True
        race.stop_all("interrupted")
    except Exception as error:  # keep what was learned, then report the failure
        failure = error
        race.stop_all(f"failed: {error}")
    finally:
        stop.restore()
        out.bar.close()
    _report(race, data, settings, folder, out, failure)
    return _exit_code(race.reasons, interrupted, stop.signal_number)


def _report(
    race: _Race,
    data: ScenarioData,
    settings: SimulationSettings,
    folder: Any,
    out: _Output,
    failure: BaseException | None,
) -> None:
    """``summary.json`` (first, so a failure keeps it), then the plots and the final table;
    re-raises ``failure`` after the summary is written."""
    from accord.scenario import describe_scenario

    results = race.results()
    for result in results:
        if result.rounds:
            engine = race.simulations[result.policy].engine
            race.export.finish(
                result.policy, result.rounds[-1].record.round_index, engine.global_weights
            )
    summary = summary_json(results, race.simulations, data, settings, race.timing)
    folder.write_summary(summary)
    if failure is not None:
        raise failure
    faulty = data.faulty_nodes
    plots = folder.write_plots(
        [r for r in results if r.rounds],
        [n.node_id for n in data.nodes],
        faulty,
        title=describe_scenario(data),
    )
    summary["plots"] = [path.name for path in plots]
    folder.write_summary(summary)
    out.say("")
    for line in summary_lines(summary["results"], with_faulty=bool(faulty)):
        out.say(line)
    if faulty:
        out.say(faulty_mass_note(summary["faulty_data_share"], race.policies, data.time_varying))
    out.say(f"run folder: {folder.path}")


def _exit_code(reasons: Mapping[str, str], interrupted: bool, signal_number: int | None) -> int:
    """130 on Ctrl-C (143 on SIGTERM), else 1 if a policy failed, 4 if one diverged, 0."""
    from accord.commands.exit_codes import ExitCode

    if interrupted:
        terminated = signal_number is not None and signal_number != _sigint()
        return int(ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED)
    if any(reason.startswith("failed") for reason in reasons.values()):
        return int(ExitCode.FAILED)
    if any(reason.startswith("diverged") for reason in reasons.values()):
        return int(ExitCode.DIVERGED)
    return int(ExitCode.OK)
