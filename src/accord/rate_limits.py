"""Bounds on unauthenticated attempts, per source address, and their rate-limited warnings.

Shared by the federation server (a gRPC stream until it has registered) and the alignment
listener (a TCP connection until its hello is accepted). :class:`SourceLimiter` keeps, per
source address:

* **pending attempts** — at most ``max_pending`` unauthenticated attempts are open at once,
  and at most ``max_pending_per_source`` from one address; one beyond is dropped at once, so
  half-open connections cannot use up the server's slots or memory;
* **a budget of failures** — a token bucket of ``failures_per_minute`` tokens, refilled at
  that rate. Every attempt takes a token and one that succeeds gives it back, so only
  failures spend the budget. A source that has spent it is throttled: its next attempt
  waits for a token before it is looked at (a good node behind the same address still gets
  in, late), and an attempt that would wait more than ``max_wait`` seconds is dropped;
* **one warning per source per interval** — the first failure or drop of a source is logged
  as a warning with its reason; the next ones within ``warning_interval`` seconds are
  counted, and the next warning says how many there were. Within the interval a failure
  is logged at info level with its precise reason (their number is bounded by the failure
  budget), a drop at debug level (a flood's drops are not bounded).

Time comes from the ``clock`` passed in; nothing here does I/O. Not thread-safe: each user
touches its limiter from one event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from accord._validation import require_int, require_number

__all__ = ["RateLimitSettings", "SourceLimiter", "source_address"]

#: Sources whose state is dropped once they are idle, full and quiet (bounds the memory).
_PRUNE_ABOVE = 4096


@dataclass(frozen=True)
class RateLimitSettings:
    """Bounds on unauthenticated attempts (defaults in brackets).

    ``failures_per_minute`` failed attempts a source may make before its attempts are
    throttled to that rate [10]; ``max_pending`` unauthenticated attempts open at once from
    all sources [64]; ``max_pending_per_source`` from one address [8]; ``max_wait`` seconds a
    throttled attempt may wait for its turn before it is dropped [10]; ``warning_interval``
    seconds between two warnings about one source [60].
    """

    failures_per_minute: int = 10
    max_pending: int = 64
    max_pending_per_source: int = 8
    max_wait: float = 10.0
    warning_interval: float = 60.0

    def __post_init__(self) -> None:
        require_int("failures_per_minute", self.failures_per_minute, minimum=1)
        require_int("max_pending", self.max_pending, minimum=1)
        require_int("max_pending_per_source", self.max_pending_per_source, minimum=1)
        require_number("max_wait", self.max_wait, minimum=0.0)
        require_number("warning_interval", self.warning_interval, minimum=0.0)


def source_address(peer: str) -> str:
    """The address part of a peer string, without its port.

    gRPC's ``ipv4:127.0.0.1:5000`` and ``ipv6:[::1]:5000`` become ``ipv4:127.0.0.1`` and
    ``ipv6:[::1]``; ``host:port`` becomes ``host``; anything else is kept whole.
    """
    if peer.startswith("unix:"):
        return peer
    head, separator, port = peer.rpartition(":")
    return head if separator and port.isdigit() and head not in ("", "ipv4", "ipv6") else peer


@dataclass
class _Source:
    tokens: float
    updated: float
    pending: int = 0
    warned_at: float | None = None
    quiet: int = 0  # failures and drops not warned about since the last warning


class SourceLimiter:
    """Pending attempts and failure budgets per source (see the module docstring)."""

    def __init__(
        self,
        settings: RateLimitSettings,
        logger: logging.Logger,
        *,
        what: str = "attempt",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._logger = logger
        self._what = what
        self._clock = clock
        self._rate = settings.failures_per_minute / 60.0
        self._sources: dict[str, _Source] = {}
        self._pending = 0
        #: Attempts dropped (pending bounds or too long a wait) and failures, for tests/stats.
        self.dropped = 0
        self.failures = 0

    def _source(self, source: str, now: float) -> _Source:
        state = self._sources.get(source)
        if state is None:
            if len(self._sources) > _PRUNE_ABOVE:
                self._prune(now)
            state = self._sources[source] = _Source(
                tokens=float(self.settings.failures_per_minute), updated=now
            )
        burst = float(self.settings.failures_per_minute)
        state.tokens = min(burst, state.tokens + (now - state.updated) * self._rate)
        state.updated = now
        return state

    def _prune(self, now: float) -> None:
        burst = float(self.settings.failures_per_minute)
        interval = self.settings.warning_interval
        for name, state in list(self._sources.items()):
            full = state.tokens + (now - state.updated) * self._rate >= burst
            quiet = state.warned_at is None or now - state.warned_at >= interval
            if state.pending == 0 and full and quiet and state.quiet == 0:
                del self._sources[name]

    def admit(self, source: str) -> float | None:
        """Open an attempt from ``source``: the seconds it must wait before it is looked at
        (0 when the source is within its budget), or ``None``: drop it now (logged)."""
        now = self._clock()
        state = self._source(source, now)
        settings = self.settings
        if self._pending >= settings.max_pending:
            self._drop(source, state, now, f"{self._pending} unauthenticated {self._what}s open")
            return None
        if state.pending >= settings.max_pending_per_source:
            self._drop(
                source, state, now, f"{state.pending} unauthenticated {self._what}s open from it"
            )
            return None
        wait = max(0.0, (1.0 - state.tokens) / self._rate)
        if wait > settings.max_wait:
            self._drop(
                source,
                state,
                now,
                f"throttled after failures (at most {settings.failures_per_minute} a minute)",
            )
            return None
        state.tokens -= 1.0
        state.pending += 1
        self._pending += 1
        return wait

    def finish(self, source: str, failure: str | None) -> None:
        """Close an attempt opened by :meth:`admit`: ``failure`` is the line to log (rate
        limited) if it failed, ``None`` if it succeeded (its token comes back)."""
        now = self._clock()
        state = self._source(source, now)
        state.pending = max(0, state.pending - 1)
        self._pending = max(0, self._pending - 1)
        if failure is None:
            state.tokens = min(float(self.settings.failures_per_minute), state.tokens + 1.0)
            return
        self.failures += 1
        self._note(source, state, now, failure, logging.INFO)

    def _drop(self, source: str, state: _Source, now: float, why: str) -> None:
        self.dropped += 1
        self._note(
            source, state, now, f"dropped a {self._what} from {source}: {why}", logging.DEBUG
        )

    def _note(self, source: str, state: _Source, now: float, line: str, quiet_level: int) -> None:
        interval = self.settings.warning_interval
        if state.warned_at is not None and now - state.warned_at < interval:
            state.quiet += 1
            self._logger.log(quiet_level, "%s", line)
            return
        more = ""
        if state.quiet:
            more = (
                f" (and {state.quiet} more refused or dropped from {source} since the last "
                f"warning: at most one warning per source every {interval:g} s)"
            )
        state.warned_at, state.quiet = now, 0
        self._logger.warning("%s%s", line, more)
