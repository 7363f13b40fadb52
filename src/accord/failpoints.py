"""Testing failpoints: deliberate misbehaviour, switched on by an environment variable.

``ACCORD_FAILPOINT`` holds comma-separated entries ``ACTION@STEP[:SECONDS]``. One variable
serves every process of a test (server, nodes, alignment hosts); each reads the entries
for its own actions with :func:`failpoints_for` and ignores the others. An entry with an
unknown action, a bad step or bad seconds is refused with one line naming the entry.

============================  ==============================================================
entry                         who, and what it does
============================  ==============================================================
``exit@R``                    ``accord node``: SIGKILL itself when round R starts
``stall@R:S``                 ``accord node``: sleep S seconds before answering round R
``nan@R``, ``shape@R``        ``accord node``: send a first gradient of NaN, or one short
``crash-after-round@N``       ``accord server``: SIGKILL itself after the checkpoint of N
                              rounds is written
``align-pause@B``             ``accord align`` host: stop (sleep until killed) after bucket
                              B of the exchange; ``align-pause@done``: after the last one
``vertical-exit@E``           ``accord vertical label|feature``: SIGKILL itself after the
                              training step of batch 2 of epoch E (in the middle of it)
============================  ==============================================================

R is the 0-based round index of the protocol (``round`` in ``metrics.jsonl``). The node
processes that ``accord federate`` forks read the node entries too.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from accord.errors import ConfigurationError

__all__ = [
    "ALIGN_ACTIONS",
    "FAILPOINT_ENV",
    "NODE_ACTIONS",
    "SERVER_ACTIONS",
    "VERTICAL_ACTIONS",
    "Failpoint",
    "failpoints_for",
    "parse_failpoints",
]

#: The environment variable that holds the failpoints.
FAILPOINT_ENV = "ACCORD_FAILPOINT"

NODE_ACTIONS = ("exit", "nan", "shape", "stall")
SERVER_ACTIONS = ("crash-after-round",)
ALIGN_ACTIONS = ("align-pause",)
VERTICAL_ACTIONS = ("vertical-exit",)
_ALL_ACTIONS = NODE_ACTIONS + SERVER_ACTIONS + ALIGN_ACTIONS + VERTICAL_ACTIONS
#: The actions whose step may be ``done`` (after the last step).
_DONE_ALLOWED = frozenset(ALIGN_ACTIONS)


@dataclass(frozen=True)
class Failpoint:
    """One entry: ``action`` at ``step`` (a round index, a round count or a bucket, as the
    action says; ``None`` for ``@done``), with ``seconds`` for ``stall``."""

    action: str
    step: int | None
    seconds: float = 0.0


def _parse_entry(entry: str) -> Failpoint:
    action, at, rest = entry.partition("@")
    step_text, _, seconds_text = rest.partition(":")
    if action not in _ALL_ACTIONS:
        raise ConfigurationError(
            f"{FAILPOINT_ENV}: failpoint {entry!r}: expected one of {', '.join(_ALL_ACTIONS)}"
        )
    if not at or (step_text == "done" and action not in _DONE_ALLOWED):
        step_text = "?"
    try:
        step = None if step_text == "done" else int(step_text)
        seconds = float(seconds_text or 0.0)
    except ValueError as error:
        where = "STEP|done" if action in _DONE_ALLOWED else "STEP"
        raise ConfigurationError(
            f"{FAILPOINT_ENV}: failpoint {entry!r}: expected {action}@{where}[:SECONDS]"
        ) from error
    if (step is not None and step < 0) or seconds < 0:
        raise ConfigurationError(
            f"{FAILPOINT_ENV}: failpoint {entry!r}: expected a step and seconds >= 0"
        )
    return Failpoint(action, step, seconds)


def parse_failpoints(text: str) -> tuple[Failpoint, ...]:
    """``"exit@2, stall@3:1.5"`` -> failpoints, in the order given; a bad entry is a
    :class:`~accord.errors.ConfigurationError`."""
    return tuple(_parse_entry(entry) for entry in (p.strip() for p in text.split(",")) if entry)


def failpoints_for(
    actions: Collection[str], environ: Mapping[str, str] | None = None
) -> tuple[Failpoint, ...]:
    """The failpoints of ``environ`` (default: this process's environment) whose action is
    one of ``actions``; every entry is checked, whoever it is for."""
    text = (os.environ if environ is None else environ).get(FAILPOINT_ENV, "")
    return tuple(point for point in parse_failpoints(text) if point.action in actions)
