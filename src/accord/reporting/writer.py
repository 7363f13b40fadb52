"""The run folder: what a training run leaves on disk.

::

    RUN_DIR/
      metrics.jsonl                one line per round per policy, appended as rounds finish
      summary.json                 per policy: accuracies, faulty mass, time split, settings
      config.toml                  the effective settings; --config RUN_DIR/config.toml repeats
      accuracy.png                 test accuracy (and faulty mass) per round per policy
      probabilities-<policy>.png   each node's probability per round, faulty nodes marked

``metrics.jsonl`` grows one flushed line at a time, so an interrupted run keeps every round
it finished; the other files are written atomically (temporary file, fsync, rename).

Every file is valid JSON: a value that is not finite (a diverged model's loss) is written as
``null`` and its dotted path listed under ``"non_finite"`` in the same object (the line of
``metrics.jsonl``, or the top level of ``summary.json``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from accord.atomic_files import write_atomically
from accord.errors import ConfigurationError
from accord.reporting.summary import PolicyRun, TimedRound, metrics_line

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "RunFolder",
    "finite_json",
    "metrics_json",
]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"


def _json_default(value: object) -> object:
    # numpy scalars and tuples sneak into records; write them as plain JSON values.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def finite_json(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by ``None`` (numpy scalars become plain
    values, tuples lists), and the dotted paths of the replaced values."""
    found: list[str] = []

    def clean(item: Any, where: str) -> Any:
        if isinstance(item, Mapping):
            return {
                key: clean(inner, f"{where}.{key}" if where else str(key))
                for key, inner in item.items()
            }
        if isinstance(item, list | tuple):
            return [clean(inner, f"{where}[{index}]") for index, inner in enumerate(item)]
        if isinstance(item, bool | int | str) or item is None:
            return item
        if isinstance(item, float) or hasattr(item, "item"):
            number = item.item() if hasattr(item, "item") else item
            if isinstance(number, float) and not math.isfinite(number):
                found.append(where)
                return None
            return number
        return item

    return clean(value, path), found


def metrics_json(policy: str, timed: TimedRound) -> str:
    """One ``metrics.jsonl`` line (without its newline), non-finite values as ``null``."""
    data, non_finite = finite_json(metrics_line(policy, timed))
    if non_finite:
        data["non_finite"] = non_finite
    return json.dumps(data, default=_json_default, allow_nan=False)


class RunFolder:
    """A new, empty run folder (created with its parents). An existing non-empty folder is
    refused, so one run never overwrites another."""

    def __init__(self, path: str | Path, *, option: str = "--out") -> None:
        self.path = Path(path)
        if self.path.exists():
            if not self.path.is_dir():
                raise ConfigurationError(f"{option}: {self.path} exists and is not a folder")
            if any(self.path.iterdir()):
                raise ConfigurationError(
                    f"{option}: {self.path} exists and is not empty; choose another folder"
                )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(
                f"{option}: cannot create {self.path}: {error.strerror or error}"
            ) from error
        self.metrics_path = self.path / METRICS_FILE
        self.summary_path = self.path / SUMMARY_FILE
        self.config_path = self.path / CONFIG_FILE
        self.metrics_path.touch()

    @classmethod
    def reopen(cls, path: str | Path, lines: Sequence[str]) -> RunFolder:
        """An existing run folder (a resumed run) whose ``metrics.jsonl`` is replaced,
        atomically, by ``lines`` (JSON lines without their newline): the run goes on
        with exactly the rounds of its checkpoint."""
        folder = cls.__new__(cls)
        folder.path = Path(path)
        if not folder.path.is_dir():
            raise ConfigurationError(f"{folder.path}: not a run folder")
        folder.metrics_path = folder.path / METRICS_FILE
        folder.summary_path = folder.path / SUMMARY_FILE
        folder.config_path = folder.path / CONFIG_FILE
        write_atomically(folder.metrics_path, "".join(line + "\n" for line in lines).encode())
        return folder

    def append_round(self, policy: str, timed: TimedRound) -> None:
        """Add one round's line to ``metrics.jsonl`` and flush it."""
        line = metrics_json(policy, timed)
        with self.metrics_path.open("a", encoding="utf-8") as file:
            file.write(line + "\n")

    def write_config(self, text: str) -> Path:
        write_atomically(self.config_path, text.encode("utf-8"))
        return self.config_path

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        data, non_finite = finite_json({k: v for k, v in summary.items() if k != "non_finite"})
        if non_finite:
            data["non_finite"] = non_finite
        text = json.dumps(data, indent=2, default=_json_default, allow_nan=False)
        write_atomically(self.summary_path, (text + "\n").encode("utf-8"))
        return self.summary_path

    def write_plots(
        self,
        runs: Sequence[PolicyRun],
        roster: Sequence[str],
        faulty_nodes: Collection[str],
        title: str = "",
    ) -> list[Path]:
        from accord.reporting.plots import plot_run

        return plot_run(runs, roster, faulty_nodes, self.path, title)
