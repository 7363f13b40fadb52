"""The label party's run folder: where it listens, one metrics line per epoch, the summary
and the plots.

::

    RUN_DIR/label.json     where the label party listens (written once it is bound; a
                           refused run removes it, and the folder if the run made it)
    RUN_DIR/metrics.jsonl  one line per epoch: train loss, validation and test loss/AUC,
                           seconds, bytes exchanged with the feature parties
    RUN_DIR/summary.json   the parties, settings, best epoch and its scores, totals
    RUN_DIR/loss.png       train and validation loss per epoch
    RUN_DIR/auc.png        validation and test AUC per epoch
    RUN_DIR/checkpoint.npz the label party's state after the last epoch (``--resume``)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from accord.atomic_files import write_atomically
from accord.errors import ConfigurationError, InputDataError
from accord.reporting.plots import plot_curves
from accord.reporting.writer import finite_json
from accord.vertical.results import EpochMetrics, VerticalResult

__all__ = [
    "CHECKPOINT_FILE",
    "ENDPOINT_FILE",
    "LabelRunFolder",
    "epoch_line",
    "read_endpoint",
    "write_scores",
]

logger = logging.getLogger(__name__)

ENDPOINT_FILE = "label.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.npz"


def _json(value: Any) -> str:
    data, _ = finite_json(value)
    return json.dumps(data, allow_nan=False, sort_keys=True)


def epoch_line(metrics: EpochMetrics, extra: Mapping[str, Any]) -> str:
    """One ``metrics.jsonl`` line (no newline); NaN and infinities become ``null``."""
    return _json({**asdict(metrics), **extra})


def read_endpoint(run_dir: Path) -> dict[str, Any]:
    """What ``label.json`` says (the address a feature party dials)."""
    path = run_dir / ENDPOINT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputDataError(f"{path}: not readable: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("port"), int):
        raise InputDataError(f"{path}: expected an object with a port")
    return data


class LabelRunFolder:
    """The label party's run folder. Nothing is written before :meth:`listening`; until
    :meth:`start`, :meth:`discard` removes what was written (a refused run leaves nothing).
    ``resume``: the folder of a run that stopped, continued in place."""

    def __init__(self, path: Path, *, resume: bool = False) -> None:
        self.path = path
        self.resume = resume
        self.checkpoint = path / CHECKPOINT_FILE
        if resume:
            if not self.checkpoint.is_file():
                raise ConfigurationError(
                    f"--resume: {self.checkpoint} not found (the run stopped before its first"
                    " epoch ended, or --run-dir is another folder)"
                )
        elif path.exists() and not path.is_dir():
            raise ConfigurationError(f"--run-dir: {path} exists and is not a folder")
        elif path.is_dir() and any(path.iterdir()):
            raise ConfigurationError(
                f"--run-dir: {path} exists and is not empty; choose another folder (or --resume)"
            )
        self._created = False
        self._started = False

    def listening(self, address: str, port: int, party: str) -> None:
        """Write ``label.json`` (atomically) once the label party is bound."""
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
            except OSError as error:
                raise ConfigurationError(
                    f"--run-dir: cannot create {self.path}: {error.strerror or error}"
                ) from error
            self._created = True
        text = _json({"address": address, "port": port, "party": party, "pid": os.getpid()})
        write_atomically(self.path / ENDPOINT_FILE, (text + "\n").encode())

    def start(self, epochs_done: int = 0) -> None:
        """The parties agreed: from now on the folder is the run's. A resumed run keeps
        the metrics lines of the ``epochs_done`` epochs of its checkpoint."""
        self._started = True
        metrics = self.path / METRICS_FILE
        kept = metrics.read_text().splitlines()[:epochs_done] if metrics.exists() else []
        write_atomically(metrics, "".join(line + "\n" for line in kept).encode())

    def discard(self) -> None:
        """Remove what a run that never started wrote."""
        if self._started:
            return
        (self.path / ENDPOINT_FILE).unlink(missing_ok=True)
        if self._created:
            try:
                self.path.rmdir()
            except OSError:
                logger.debug("left %s in place (not empty)", self.path)

    def append_epoch(self, metrics: EpochMetrics, extra: Mapping[str, Any]) -> None:
        with (self.path / METRICS_FILE).open("a", encoding="utf-8") as file:
            file.write(epoch_line(metrics, extra) + "\n")

    def finish(self, result: VerticalResult, summary: Mapping[str, Any]) -> dict[str, Path]:
        """Write ``summary.json`` and the plots; the paths written."""
        data = {
            **summary,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.epochs),
            "stopped_early": result.stopped_early,
            "validation": None if result.validation is None else asdict(result.validation),
            "test": None if result.test is None else asdict(result.test),
        }
        summary_path = self.path / SUMMARY_FILE
        write_atomically(summary_path, (_json(data) + "\n").encode())
        epochs = result.epochs
        loss = plot_curves(
            {
                "train": [(m.epoch, m.train_loss) for m in epochs],
                "validation": [(m.epoch, m.validation.loss) for m in epochs if m.validation],
                "test": [(m.epoch, m.test.loss) for m in epochs if m.test],
            },
            self.path / "loss.png",
            xlabel="epoch",
            ylabel="log loss",
            title="vertical training: loss",
            integer_x=True,
        )
        auc = plot_curves(
            {
                split: [
                    (m.epoch, getattr(m, split).auc)
                    for m in epochs
                    if getattr(m, split) is not None and getattr(m, split).auc is not None
                ]
                for split in ("validation", "test")
            },
            self.path / "auc.png",
            xlabel="epoch",
            ylabel="AUC",
            title="vertical training: AUC",
            integer_x=True,
        )
        return {"summary": summary_path, "loss_plot": loss, "auc_plot": auc}


def write_scores(path: Path, probabilities: Any) -> Path:
    """``position,probability`` (the new alignment's shared order), written atomically."""
    lines = ["position,probability"]
    lines += [f"{position},{float(p):.9g}" for position, p in enumerate(probabilities)]
    try:
        write_atomically(path, ("\n".join(lines) + "\n").encode())
    except OSError as error:
        raise ConfigurationError(f"--out: cannot write {path}: {error}") from error
    return path
