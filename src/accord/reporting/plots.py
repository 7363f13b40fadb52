"""PNG figures of a run, drawn with matplotlib's Agg canvas (no display, no global state).

- ``accuracy.png``: test accuracy per round, one line per policy; with faulty nodes, a
  second panel with the probability mass on them.
- ``probabilities-<policy>.png``: a heat map of every node's probability per round, faulty
  nodes marked in red.

matplotlib is imported inside the functions: a command that never plots never pays for it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from accord.reporting.summary import PolicyRun, faulty_mass
from accord.reporting.writer import write_atomically

__all__ = ["plot_accuracy", "plot_probabilities", "plot_run"]

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


def plot_accuracy(
    runs: Sequence[PolicyRun], faulty_nodes: Collection[str], path: Path, title: str = ""
) -> Path:
    """Test accuracy per round per policy (and the faulty mass, when there are faulty nodes)."""
    panels = 2 if faulty_nodes else 1
    figure, _ = _new_figure(8.0, 3.4 * panels)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    for run in runs:
        rounds = [
            t.record.round_index + 1 for t in run.rounds if t.record.test_accuracy is not None
        ]
        accuracy = [
            t.record.test_accuracy for t in run.rounds if t.record.test_accuracy is not None
        ]
        axes[0].plot(rounds, accuracy, label=run.policy, linewidth=1.6)
        if faulty_nodes:
            axes[1].plot(
                [t.record.round_index + 1 for t in run.rounds],
                [faulty_mass(t.record, faulty_nodes) for t in run.rounds],
                label=run.policy,
                linewidth=1.6,
            )
    axes[0].set_ylabel("test accuracy")
    axes[0].grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    if title:
        axes[0].set_title(title)
    if faulty_nodes:
        axes[1].set_ylabel(f"probability on the {len(faulty_nodes)} faulty nodes")
        axes[1].set_ylim(bottom=0.0)
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("round")
    return _save(figure, path)


def plot_probabilities(
    run: PolicyRun, roster: Sequence[str], faulty_nodes: Collection[str], path: Path
) -> Path:
    """Heat map: one row per node, one column per round, colour = the node's probability."""
    import numpy as np

    matrix = np.array(
        [[t.record.probabilities.get(node, 0.0) for t in run.rounds] for node in roster],
        dtype=np.float64,
    ).reshape(len(roster), len(run.rounds))
    figure, _ = _new_figure(8.0, 1.2 + 0.28 * len(roster))
    axes = figure.subplots()
    image = axes.imshow(
        matrix,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        extent=(0.5, len(run.rounds) + 0.5, len(roster) - 0.5, -0.5),
    )
    axes.set_yticks(range(len(roster)))
    axes.set_yticklabels([f"{node} (faulty)" if node in faulty_nodes else node for node in roster])
    for label, node in zip(axes.get_yticklabels(), roster, strict=True):
        if node in faulty_nodes:
            label.set_color("tab:red")
            label.set_fontweight("bold")
    axes.set_xlabel("round")
    axes.set_title(f"{run.policy}: probability of each node per round")
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
    for run in runs:
        if run.rounds:
            paths.append(
                plot_probabilities(run, roster, faulty_nodes, directory / _file_name(run.policy))
            )
    return paths
