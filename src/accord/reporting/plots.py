"""PNG figures of a run, drawn with matplotlib's Agg canvas (no display, no global state).

- ``accuracy.png``: test accuracy per round, one line per policy; with faulty nodes, a
  second panel with the probability mass on them (each round's own faulty nodes when the
  faults vary by round). A policy that stopped before the others' last round (diverged,
  patience, target, time) ends with a marker (``x`` when it diverged, ``o`` otherwise) and
  its legend entry says why. The legend sits below the axes, never over a curve.
- ``probabilities-<policy>.png``: a heat map of every node's probability per round, faulty
  nodes marked in red (and, when faults vary by round, a red dot on each faulty round). All
  heat maps of a run share one colour scale, said on each plot.

matplotlib is imported inside the functions: a command that never plots never pays for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from accord.atomic_files import write_atomically
from accord.reporting.summary import PolicyRun, faulty_mass, round_faulty

__all__ = [
    "plot_accuracy",
    "plot_curves",
    "plot_probabilities",
    "plot_run",
    "shared_colour_limit",
    "stop_note",
]

_DPI = 110


def _new_figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return figure, FigureCanvasAgg(figure)


def _save(figure: Any, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    write_atomically(path, buffer.getvalue())
    return path


def stop_note(run: PolicyRun) -> str | None:
    """The legend note of a run that stopped early (``diverged at round 48``, ``stopped at
    round 30: no improvement for 10 rounds``), or ``None`` when it ran all its rounds."""
    reason = run.stop_reason
    if reason.endswith("rounds done"):
        return None
    last = len(run.rounds)
    if reason.startswith("diverged"):
        number = re.search(r"at round (\d+)", reason)
        return f"diverged at round {number.group(1) if number else last + 1}"
    if reason.startswith("failed"):
        return f"failed after round {last}"
    return f"stopped at round {last}: {reason}"


def plot_accuracy(
    runs: Sequence[PolicyRun], faulty_nodes: Collection[str], path: Path, title: str = ""
) -> Path:
    """Test accuracy per round per policy (and the faulty mass, when there are faulty nodes)."""
    panels = 2 if faulty_nodes else 1
    figure, _ = _new_figure(8.0, 3.4 * panels + 0.5 + 0.25 * len(runs))
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    for run in runs:
        healthy = [t for t in run.rounds if t.record.diverged is None]
        points = [
            (t.record.round_index + 1, t.record.test_accuracy)
            for t in healthy
            if t.record.test_accuracy is not None
        ]
        note = stop_note(run)
        label = run.policy if note is None else f"{run.policy} ({note})"
        (line,) = axes[0].plot(
            [x for x, _ in points], [y for _, y in points], label=label, linewidth=1.6
        )
        if note is not None and points:
            marker = "x" if run.stop_reason.startswith("diverged") else "o"
            axes[0].plot(
                [points[-1][0]],
                [points[-1][1]],
                marker=marker,
                markersize=9,
                markeredgewidth=2,
                color=line.get_color(),
                linestyle="none",
            )
        if faulty_nodes:
            masses = [
                (t.record.round_index + 1, faulty_mass(t.record, round_faulty(t, faulty_nodes)))
                for t in healthy
            ]
            axes[1].plot(
                [x for x, _ in masses],
                [y for _, y in masses],
                color=line.get_color(),
                linewidth=1.6,
            )
            if note is not None and masses:
                axes[1].plot(
                    [masses[-1][0]],
                    [masses[-1][1]],
                    marker="x" if run.stop_reason.startswith("diverged") else "o",
                    markersize=9,
                    markeredgewidth=2,
                    color=line.get_color(),
                    linestyle="none",
                )
    axes[0].set_ylabel("test accuracy")
    axes[0].grid(alpha=0.3)
    if title:
        axes[0].set_title(title)
    if faulty_nodes:
        axes[1].set_ylabel("probability on the\nnodes faulty that round")
        axes[1].set_ylim(bottom=0.0)
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("round")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(3, len(handles)))
    return _save(figure, path)


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    integer_x: bool = False,
) -> Path:
    """One line per named curve of ``(x, y)`` points (a curve with no point is left out);
    ``integer_x``: whole-number ticks on the x axis (epochs, rounds)."""
    from matplotlib.ticker import MaxNLocator

    figure, _ = _new_figure(7.0, 3.6)
    axes = figure.subplots()
    if integer_x:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for name, points in curves.items():
        if points:
            axes.plot([x for x, _ in points], [y for _, y in points], label=name, linewidth=1.6)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best")
    return _save(figure, path)


def shared_colour_limit(runs: Sequence[PolicyRun]) -> float:
    """The top of the colour scale that every heat map of a run shares: the largest
    probability any policy gave any node (at least 0.01)."""
    top = 0.0
    for run in runs:
        for timed in run.rounds:
            for value in timed.record.probabilities.values():
                if math.isfinite(value):
                    top = max(top, float(value))
    return max(top, 0.01)


def plot_probabilities(
    run: PolicyRun,
    roster: Sequence[str],
    faulty_nodes: Collection[str],
    path: Path,
    colour_limit: float | None = None,
) -> Path:
    """Heat map: one row per node, one column per round, colour = the node's probability,
    on the scale ``0 .. colour_limit`` (shared by a run's maps; default: this run's max)."""
    import numpy as np

    matrix = np.array(
        [[t.record.probabilities.get(node, 0.0) for t in run.rounds] for node in roster],
        dtype=np.float64,
    ).reshape(len(roster), len(run.rounds))
    limit = colour_limit if colour_limit is not None else shared_colour_limit([run])
    figure, _ = _new_figure(8.0, 1.5 + 0.28 * len(roster))
    axes = figure.subplots()
    image = axes.imshow(
        matrix,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=limit,
        extent=(0.5, len(run.rounds) + 0.5, len(roster) - 0.5, -0.5),
    )
    axes.set_yticks(range(len(roster)))
    axes.set_yticklabels([f"{node} (faulty)" if node in faulty_nodes else node for node in roster])
    for label, node in zip(axes.get_yticklabels(), roster, strict=True):
        if node in faulty_nodes:
            label.set_color("tab:red")
            label.set_fontweight("bold")
    per_round = [round_faulty(t, faulty_nodes) for t in run.rounds]
    if any(set(faulty) != set(faulty_nodes) for faulty in per_round):
        rows = {node: row for row, node in enumerate(roster)}
        dots = [
            (t.record.round_index + 1, rows[node])
            for t, faulty in zip(run.rounds, per_round, strict=True)
            for node in faulty
            if node in rows
        ]
        axes.plot(
            [x for x, _ in dots],
            [y for _, y in dots],
            linestyle="none",
            marker=".",
            markersize=3,
            color="tab:red",
        )
    axes.set_xlabel("round")
    note = stop_note(run)
    dot_note = (
        "; red dots: faulty in that round"
        if any(set(faulty) != set(faulty_nodes) for faulty in per_round)
        else ""
    )
    axes.set_title(
        f"{run.policy}: probability of each node per round"
        + (f" ({note})" if note else "")
        + f"\ncolour scale 0 to {limit:.2f}, the same for every policy of this run{dot_note}",
        fontsize="medium",
    )
    figure.colorbar(image, ax=axes, label="probability")
    return _save(figure, path)


def _file_name(policy: str) -> str:
    return "probabilities-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", policy) + ".png"


def plot_run(
    runs: Sequence[PolicyRun],
    roster: Sequence[str],
    faulty_nodes: Collection[str],
    directory: Path,
    title: str = "",
) -> list[Path]:
    """Every figure of a run into ``directory``; returns the files written."""
    paths = [plot_accuracy(runs, faulty_nodes, directory / "accuracy.png", title)]
    limit = shared_colour_limit(runs)
    for run in runs:
        if run.rounds:
            paths.append(
                plot_probabilities(
                    run, roster, faulty_nodes, directory / _file_name(run.policy), limit
                )
            )
    return paths
