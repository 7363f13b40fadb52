"""What ``accord simulate``, ``accord federate`` and ``accord server`` print and write: the
per-round table, the final summary table with its footnote, ``summary.json``, and the
networked commands' :class:`RunDisplay`."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accord.run import SimulationSettings
    from accord.scenario import ScenarioData
    from accord.simulation.driver import RunResult, Simulation

__all__ = [
    "TABLE_ROWS",
    "RoundTable",
    "RunDisplay",
    "entry_age",
    "faulty_mass_note",
    "fmt",
    "summary_json",
    "summary_lines",
]

#: Rows of the per-round table for a full run (one every ``ceil(rounds / TABLE_ROWS)``).
TABLE_ROWS = 20


def fmt(value: float | None, spec: str = ".4f") -> str:
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
                text = f"{fmt(accuracy):>8}"
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
            f"{name:<{width}}  {final or fmt(entry['final_test_accuracy']):>9}  "
            f"{fmt(entry['best_test_accuracy']):>8}  {entry['rounds']:>6}"
        )
        if with_faulty:
            line += f"  {fmt(entry['faulty_mass_final'], '.3f'):>11}"
        mean_round = entry["mean_round_seconds"]
        share = entry["policy_share_of_round_time"]
        line += (
            f"  {fmt(None if mean_round is None else mean_round * 1000, '.1f'):>8}"
            f"  {fmt(None if share is None else share * 100, '.1f') + '%':>12}"
            f"  {entry['stop_reason']}"
        )
        lines.append(line)
    return lines


def faulty_mass_note(share: float | None, policies: Sequence[str], time_varying: bool) -> str:
    """The footnote under the final table that says what "faulty mass" is."""
    what = (
        "probability on the nodes faulty in the last round"
        if time_varying
        else "probability on the faulty nodes at the end"
    )
    if "fedavg" in policies:
        return f"(faulty mass: {what}; FedAvg gives them their data share, {fmt(share, '.3f')})"
    return f"(faulty mass: {what}; the faulty nodes' data share is {fmt(share, '.3f')})"


def entry_age() -> float | None:
    """Seconds since the ``accord`` command started (:func:`accord.cli.entry_seconds`)."""
    from accord.cli import entry_seconds

    return entry_seconds()


def summary_json(
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
    from accord.scenario import describe_scenario

    counts = {node.node_id: float(node.sample_count) for node in data.nodes}
    return {
        "format": "accord-simulate-run",
        "version": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "accord_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "scenario": describe_scenario(data),
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


class RunDisplay:
    """What ``accord simulate`` shows, for one policy: a line about the scenario, a table
    row every few rounds (a progress bar on a terminal), then the summary. Rounds are
    numbered from 1, as in ``accord simulate``'s table and the plots (``metrics.jsonl``
    keeps the 0-based ``round`` of the protocol). ``accord federate`` and ``accord server``
    both show it; ``transport`` says what kind of federation runs, given the address;
    ``progress_bar`` False keeps stderr for log lines (the server's)."""

    def __init__(
        self,
        policy: str,
        max_rounds: int,
        every: int | None,
        quiet: bool,
        transport: Callable[[str], str],
        progress_bar: bool = True,
    ) -> None:
        self.policy = policy
        self.transport = transport
        self.max_rounds = max_rounds
        self.every = every or max(1, math.ceil(max_rounds / TABLE_ROWS))
        self.quiet = quiet
        self.progress_bar = progress_bar
        self.faulty: tuple[str, ...] = ()
        self.table: Any = None
        self.bar: Any = None
        self.last_row: tuple[int, Mapping[str, Any]] | None = None
        self.printed = 0

    def say(self, line: str) -> None:
        if self.bar is None or self.bar.disable:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)

    def start(self, description: str, faulty_nodes: tuple[str, ...], address: str) -> None:
        from tqdm import tqdm

        self.faulty = faulty_nodes
        self.table = RoundTable([self.policy], with_faulty=bool(self.faulty))
        self.bar = tqdm(
            total=self.max_rounds,
            file=sys.stderr,
            disable=self.quiet or not self.progress_bar or not sys.stderr.isatty(),
            unit="round",
            dynamic_ncols=True,
            leave=False,
        )
        self.say(f"{description}; {self.max_rounds} rounds; policies {self.policy}")
        self.say(self.transport(address))
        if not self.quiet:
            for line in self.table.header():
                self.say(line)

    def round(self, timed: Any) -> None:
        from accord.reporting import faulty_mass

        record = timed.record
        number = record.round_index + 1
        cells = {self.policy: (record.test_accuracy, faulty_mass(record, self.faulty))}
        self.last_row = (number, cells)
        if self.bar is not None:
            self.bar.n = number
            accuracy = record.test_accuracy
            if accuracy is not None:
                self.bar.set_postfix_str(f"{self.policy}={accuracy:.3f}", refresh=False)
            self.bar.refresh()
        due = number % self.every == 0 or self.printed == 0
        if not self.quiet and self.table is not None and due:
            self.say(self.table.row(number, cells))
            self.printed = number

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        if self.bar is not None:
            self.bar.close()
        if (
            not self.quiet
            and self.table is not None
            and self.last_row is not None
            and self.printed != self.last_row[0]
        ):
            self.say(self.table.row(*self.last_row))
        self.say("")
        for line in summary_lines(summary["results"], with_faulty=bool(self.faulty)):
            self.say(line)
        if self.faulty:
            share = summary["faulty_data_share"]
            self.say(
                "(faulty mass: probability on the faulty nodes at the end; FedAvg gives them "
                f"their data share, {'-' if share is None else f'{share:.3f}'})"
            )
        self.say(f"run folder: {run_dir}")
