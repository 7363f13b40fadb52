"""``accord align``'s progress on stderr: tqdm bars on a terminal, plain lines in a log.

:class:`ProgressDisplay` takes an in-memory run's stages and row counts and a bucketed
run's :class:`~accord.tee.runtime.progress.ProgressEvent` s, and shows them as ``--progress``
asks (``bar``, ``log``, ``none``; ``auto``: bars on a terminal, nothing otherwise).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["ProgressDisplay", "format_seconds"]


#: Seconds between two progress lines of one stage with ``--progress log``.
_LOG_INTERVAL = 5.0


def format_seconds(seconds: float) -> str:
    """``1:05`` (see :func:`accord.tee.runtime.progress.format_seconds`)."""
    from accord.tee.runtime.progress import format_seconds as formatted

    return formatted(seconds)


class ProgressDisplay:
    """Stage lines and row counters on stderr (tqdm bars on a terminal; with ``log``,
    plain lines: each stage, its rows at most every few seconds, and where it ended)."""

    def __init__(self, mode: str, prefix: str = "") -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self.prefix = prefix
        self._stage: str | None = None
        self._bar: Any = None
        self._last_rows = 0
        self._last_line = 0.0
        self._rows_seen = 0
        self._stage_start = 0.0

    def _line(self, text: str) -> None:
        if self.mode != "none":
            sys.stderr.write(f"{self.prefix}{text}\n")
            sys.stderr.flush()

    def listening(self, endpoint: Any) -> None:
        self._line(f"listening on {endpoint}")

    def event(self, event: Any) -> None:
        """A bucketed run's progress: a bar per stage, or a line (with time left)."""
        if self.mode == "none":
            return
        from accord.tee.runtime.progress import describe, format_seconds

        if self.mode == "log":
            # Plain lines (a log file, a pipe): each stage's start and end, and in between
            # at most one line every _LOG_INTERVAL seconds.
            import time

            now = time.monotonic()
            first = event.stage != self._stage
            if first or event.finished or now - self._last_line >= _LOG_INTERVAL:
                self._stage = None if event.finished else event.stage
                self._last_line = now
                self._line(describe(event))
            return
        if event.finished:
            return  # the bar shows it
        if event.stage != self._stage or self._bar is None:
            self.close()
            from tqdm import tqdm

            self._stage = event.stage
            unit = " buckets" if event.unit == "buckets" else " rows"
            self._bar = tqdm(
                desc=f"{self.prefix}{event.stage}",
                total=event.total,
                unit=unit,
                unit_scale=event.unit != "buckets",
            )
        if event.done is not None:
            self._bar.n = event.done
        if event.run_eta is not None:
            self._bar.set_postfix_str(f"~{format_seconds(event.run_eta)} left in all")
        self._bar.refresh()

    def __call__(self, stage: str, rows: int | None) -> None:
        """An in-memory run's stage, and the rows done in ``load`` and ``write``."""
        if self.mode == "none":
            return
        import time

        now = time.monotonic()
        if stage != self._stage:
            if self.mode == "log" and self._stage is not None and self._rows_seen:
                elapsed = format_seconds(now - self._stage_start)
                self._line(f"{self._stage}: {self._rows_seen:,} rows done in {elapsed}")
            self.close()
            self._stage = stage
            self._stage_start = self._last_line = now
            self._last_rows = self._rows_seen = 0
            if self.mode == "bar" and rows is not None:
                from tqdm import tqdm

                self._bar = tqdm(desc=f"{self.prefix}{stage}", unit=" rows", unit_scale=True)
            else:
                self._line(f"{stage}")
        if rows is None:
            return
        self._rows_seen = rows
        if self._bar is not None:
            self._bar.update(rows - self._last_rows)
        elif rows > self._last_rows and now - self._last_line >= _LOG_INTERVAL:
            self._last_line = now
            self._line(f"{stage}: {rows:,} rows")
        else:
            return
        self._last_rows = rows

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
