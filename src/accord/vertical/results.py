"""Results of a vertical run and the early-stopping rule, shared by every driver and by
the centralised baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass

from accord.vertical.parties import SplitMetrics

__all__ = ["DriverState", "EarlyStopping", "EpochMetrics", "VerticalResult"]


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch: mean training loss (on the labels trained on), validation and test scores
    (true labels; ``None`` when the split is empty) and the seconds spent training."""

    epoch: int
    train_loss: float
    validation: SplitMetrics | None
    test: SplitMetrics | None
    train_seconds: float


@dataclass(frozen=True)
class VerticalResult:
    """A finished run: every epoch, the epoch whose weights were kept, and their scores."""

    epochs: tuple[EpochMetrics, ...]
    best_epoch: int
    validation: SplitMetrics | None
    test: SplitMetrics | None
    stopped_early: bool


@dataclass(frozen=True)
class DriverState:
    """Where the label party's driver stands after an epoch: enough to resume the run."""

    next_epoch: int
    history: tuple[EpochMetrics, ...]
    best_loss: float
    best_epoch: int | None
    epochs_without_improvement: int


class EarlyStopping:
    """Keep the epoch with the lowest validation loss; stop after ``patience`` epochs
    without a lower one (never when ``patience`` is ``None`` or there is no validation)."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.epochs_without_improvement = 0

    def update(self, epoch: int, validation_loss: float | None) -> bool:
        """Record ``epoch``'s validation loss; ``True`` if its weights are the best so far."""
        if validation_loss is None or math.isnan(validation_loss):
            self.best_epoch = epoch  # nothing to choose by: the latest weights are kept
            return True
        if validation_loss < self.best_loss:
            self.best_loss = validation_loss
            self.best_epoch = epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    def state(self, next_epoch: int, history: tuple[EpochMetrics, ...]) -> DriverState:
        """The driver's state after ``history`` (to resume at ``next_epoch``)."""
        return DriverState(
            next_epoch, history, self.best_loss, self.best_epoch, self.epochs_without_improvement
        )

    def resume(self, state: DriverState) -> None:
        """Continue from ``state``."""
        self.best_loss = state.best_loss
        self.best_epoch = state.best_epoch
        self.epochs_without_improvement = state.epochs_without_improvement

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.epochs_without_improvement >= self.patience
