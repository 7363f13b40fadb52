"""Progress of a long alignment run: per stage and bucket, with an estimate of time left.

:class:`ProgressTracker` turns "stage X, N of M done" into :class:`ProgressEvent` values
with the elapsed time and an estimate of the time left in the stage (the stage's own rate
so far) and in the whole run (the remaining stages estimated from the rows or buckets they
will handle, at the rates measured in stages already done, else from fixed shares).
The run calls :meth:`ProgressTracker.stage` and :meth:`ProgressTracker.advance`; whoever
displays progress (the CLI) passes a callback and renders :func:`describe`. Time comes from
the clock passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["ProgressEvent", "ProgressTracker", "describe", "format_seconds"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report."""

    stage: str
    #: Units done and expected in this stage (``None`` when unknown).
    done: int | None
    total: int | None
    #: ``rows`` or ``buckets``.
    unit: str
    #: Seconds since the stage started.
    elapsed: float
    #: Estimated seconds left in this stage, and in the whole run (``None``: no estimate yet).
    eta: float | None
    run_eta: float | None
    #: The stage is over (``done`` is where it ended, ``elapsed`` its whole time).
    finished: bool = False


def format_seconds(seconds: float) -> str:
    """``1:05`` or ``1:02:05``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(event: ProgressEvent) -> str:
    """One line: ``sort: bucket 12/32 (37%), 0:41 left in stage, ~2:10 left in all``, or
    at a stage's end ``sort: 32/32 buckets done in 1:05``."""
    if event.finished:
        if event.unit == "buckets" and event.done is not None:
            count = f"{event.done}/{event.total} buckets " if event.total else ""
        else:
            count = f"{event.done:,} rows " if event.done else ""
        return f"{event.stage}: {count}done in {format_seconds(event.elapsed)}"
    if event.done == 0 and not event.total:
        return event.stage
    parts = [event.stage]
    if event.done is not None:
        if event.unit == "buckets":
            count = f"bucket {event.done}" + (f"/{event.total}" if event.total else "")
        else:
            count = f"{event.done:,} {event.unit}" + (
                f" of ~{event.total:,}" if event.total else ""
            )
        if event.total:
            count += f" ({min(100, 100 * event.done // event.total)}%)"
        parts.append(count)
    timing = []
    if event.eta is not None:
        timing.append(f"{format_seconds(event.eta)} left in stage")
    if event.run_eta is not None:
        timing.append(f"~{format_seconds(event.run_eta)} left in all")
    text = ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
    return text + (" — " + ", ".join(timing) if timing else "")


class ProgressTracker:
    """Keeps stage timings and reports :class:`ProgressEvent` values to a callback.

    ``plan`` lists the stages still to come with their share of the whole run's work, used
    for the run estimate until measured rates replace it (e.g. spill 0.4, sort 0.2,
    exchange 0.2, write 0.2).
    """

    def __init__(
        self,
        report: Callable[[ProgressEvent], None],
        *,
        plan: Sequence[tuple[str, float]] = (),
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.5,
    ) -> None:
        self._report = report
        self._clock = clock
        self._plan = {stage: share for stage, share in plan}
        self._min_interval = min_interval
        self._stage: str | None = None
        self._unit = "rows"
        self._total: int | None = None
        self._start = clock()
        self._base = 0
        self._done = 0
        self._last_report = float("-inf")
        self._finished: dict[str, float] = {}

    def stage(
        self, name: str, *, total: int | None = None, unit: str = "rows", done: int = 0
    ) -> None:
        """Start stage ``name`` (``done`` units already done, e.g. after a resume)."""
        self._close_stage()
        self._stage, self._total, self._unit, self._base = name, total, unit, done
        self._start = self._clock()
        self._emit(done, force=True)

    def advance(self, done: int, *, force: bool = False) -> None:
        """``done`` units of the current stage are done (reports at most every interval)."""
        self._emit(done, force=force)

    def finish(self) -> None:
        """The run is over."""
        self._close_stage()

    def _close_stage(self) -> None:
        if self._stage is not None:
            elapsed = self._clock() - self._start
            self._finished[self._stage] = elapsed
            self._plan.pop(self._stage, None)
            self._report(
                ProgressEvent(
                    self._stage, self._done, self._total, self._unit, elapsed, 0.0, None, True
                )
            )
        self._stage = None

    def _emit(self, done: int, *, force: bool) -> None:
        if self._stage is None:
            return
        self._done = done
        now = self._clock()
        if not force and now - self._last_report < self._min_interval:
            return
        self._last_report = now
        elapsed = now - self._start
        eta: float | None = None
        progressed = done - self._base
        if self._total and progressed > 0 and elapsed > 0:
            eta = elapsed * max(0, self._total - done) / progressed
        run_eta = self._run_eta(eta, elapsed)
        self._report(
            ProgressEvent(self._stage, done, self._total, self._unit, elapsed, eta, run_eta)
        )

    def _run_eta(self, stage_eta: float | None, elapsed: float) -> float | None:
        """Stage estimate plus the later stages, scaled from the time per share so far."""
        if stage_eta is None:
            return None
        share_now = self._plan.get(self._stage or "", 0.0)
        later = sum(share for stage, share in self._plan.items() if stage != self._stage)
        if later == 0:
            return stage_eta
        if share_now <= 0:
            return None
        seconds_per_share = (elapsed + stage_eta) / share_now
        return stage_eta + later * seconds_per_share
