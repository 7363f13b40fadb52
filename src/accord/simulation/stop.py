"""Stop conditions: whichever comes first of max rounds, target accuracy, patience, time."""

from __future__ import annotations

from dataclasses import dataclass

from accord._validation import require_int, require_number, require_probability

__all__ = ["StopConditions", "StopTracker"]


@dataclass(frozen=True)
class StopConditions:
    """``max_rounds`` (default 100); ``target_accuracy`` on validation (default none);
    ``patience``: rounds without a better validation accuracy (default none);
    ``time_budget_seconds``: wall-clock budget (default none)."""

    max_rounds: int = 100
    target_accuracy: float | None = None
    patience: int | None = None
    time_budget_seconds: float | None = None

    def __post_init__(self) -> None:
        require_int("rounds", self.max_rounds, minimum=1)
        if self.target_accuracy is not None:
            require_probability("target_accuracy", self.target_accuracy)
        if self.patience is not None:
            require_int("patience", self.patience, minimum=1)
        if self.time_budget_seconds is not None:
            require_number(
                "time_budget", self.time_budget_seconds, minimum=0.0, exclusive_minimum=True
            )


class StopTracker:
    """Feeds on each round's accuracy and elapsed time; says when and why to stop."""

    def __init__(self, conditions: StopConditions, started_at: float) -> None:
        self.conditions = conditions
        self.started_at = started_at
        self.rounds_done = 0
        self.best_accuracy: float | None = None
        self.rounds_since_best = 0

    def update(self, accuracy: float | None, now: float) -> str | None:
        """Record a finished round; return the reason to stop, or ``None`` to go on."""
        self.rounds_done += 1
        c = self.conditions
        if accuracy is not None:
            if self.best_accuracy is None or accuracy > self.best_accuracy:
                self.best_accuracy = accuracy
                self.rounds_since_best = 0
            else:
                self.rounds_since_best += 1
            if c.target_accuracy is not None and accuracy >= c.target_accuracy:
                return f"target accuracy {c.target_accuracy:.4f} reached"
        if c.patience is not None and self.rounds_since_best >= c.patience:
            return f"no improvement for {c.patience} rounds"
        if c.time_budget_seconds is not None and now - self.started_at >= c.time_budget_seconds:
            return f"time budget of {c.time_budget_seconds:g} s used"
        if self.rounds_done >= c.max_rounds:
            return f"{c.max_rounds} rounds done"
        return None
