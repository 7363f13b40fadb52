"""The plan of a bucketed run: the bucket-count agreement and the sealed run state.

:func:`agree_run_buckets` turns every party's :class:`Proposal` into one bucket count, the
same on every enclave; :func:`session_keys` derives the run's keys from the session
secret; :class:`RunState` is what the enclave seals for the host to keep between steps
(:mod:`accord.tee.core.bucketed` runs the stages). Pure: no file, socket or clock.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from accord.alignment import DuplicatePolicy, DuplicateReport
from accord.alignment.buckets import agree_buckets, plan_buckets
from accord.errors import ProtocolError
from accord.tee.core.messages import DIGEST_KEY_LABEL, ORDER_SEED_LABEL, derive

__all__ = [
    "BUCKET_HEADER",
    "STAGES",
    "Proposal",
    "RunState",
    "agree_run_buckets",
    "duplicate_report_dict",
    "duplicate_report_from",
    "session_keys",
]

#: ``bucket, count`` at the start of a ``BUCKET`` channel message (then ``count`` keys).
BUCKET_HEADER = struct.Struct("!IQ")
#: The stages of a run, in order.
STAGES = ("spill", "sort", "exchange", "confirm", "done")

_STATE_VERSION = 1
_RUN_ID_LABEL = b"accord-align/v1 run id"


def session_keys(secret: bytes) -> tuple[bytes, bytes, bytes]:
    """``(digest key, order seed, run id)`` of a session secret (HMAC-SHA256 with labels)."""
    # The same derivations as the in-memory path, so that the same session secret gives
    # the same digests and the same shared order.
    return (
        derive(secret, DIGEST_KEY_LABEL),
        derive(secret, ORDER_SEED_LABEL),
        derive(secret, _RUN_ID_LABEL),
    )


@dataclass(frozen=True)
class Proposal:
    """What one party brings to the bucket-count agreement (sent inside the channel).

    ``rows``: its input's (estimated) row count; ``memory_limit`` and ``reserved``: its
    budget and what it needs outside the buckets (bytes), ``None`` when it set ``buckets``
    by hand; ``buckets``: a hand-set count.
    """

    rows: int
    memory_limit: int | None = None
    reserved: int = 0
    buckets: int | None = None

    @classmethod
    def from_dict(cls, data: Any, who: str) -> Proposal:
        try:
            proposal = cls(
                rows=int(data["rows"]),
                memory_limit=None
                if data.get("memory_limit") is None
                else int(data["memory_limit"]),
                reserved=int(data.get("reserved", 0)),
                buckets=None if data.get("buckets") is None else int(data["buckets"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"{who}: malformed bucket proposal ({error})") from error
        if proposal.rows < 0 or proposal.reserved < 0:
            raise ProtocolError(f"{who}: negative sizes in the bucket proposal")
        if proposal.memory_limit is None and proposal.buckets is None:
            raise ProtocolError(f"{who}: a bucket proposal needs a memory limit or a count")
        return proposal


def agree_run_buckets(proposals: Sequence[Proposal]) -> int:
    """The bucket count of a run: the largest any party needs or asked for.

    Each party with a memory limit gets the plan that fits its own rows and every other
    party's rows into its budget; the same inputs give the same count on every enclave.
    """
    counts: list[int] = []
    for index, proposal in enumerate(proposals):
        if proposal.buckets is not None:
            counts.append(proposal.buckets)
        if proposal.memory_limit is not None:
            peers = [p.rows for i, p in enumerate(proposals) if i != index]
            plan = plan_buckets(
                proposal.rows,
                peers,
                memory_limit=proposal.memory_limit,
                reserved_bytes=proposal.reserved,
            )
            counts.append(plan.buckets)
    return agree_buckets(counts)


@dataclass
class RunState:
    """Everything a run needs to continue after a crash; sealed by the enclave.

    Per-bucket exchange results are lists (not sums) because a resumed run restarts the
    exchange at the lowest bucket any party finished, which may redo buckets this party
    already did.
    """

    party: str
    session: str
    parties: list[str]
    key_columns: list[str]
    duplicates: str
    skip_invalid: bool
    secret: str  # hex
    buckets: int
    generation: int = 0
    stage: str = "spill"
    input_rows: int = 0
    id_report: dict[str, Any] = field(default_factory=dict)
    sorted_buckets: int = 0
    own_size: int = 0
    duplicate_report: dict[str, Any] = field(default_factory=dict)
    intersections: list[int] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    peer_sizes: dict[str, list[int]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps({"version": _STATE_VERSION, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunState:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON {type(raw).__name__}, not an object")
            if raw.pop("version", None) != _STATE_VERSION:
                raise ValueError("unknown version")
            state = cls(**raw)
        except (ValueError, TypeError, KeyError, RecursionError) as error:
            raise ProtocolError(f"sealed run state: malformed ({error})") from error
        if state.stage not in STAGES:
            raise ProtocolError(f"sealed run state: unknown stage {state.stage!r}")
        return state

    @property
    def exchanged(self) -> int:
        """Buckets whose exchange finished (the next one to exchange)."""
        return len(self.fingerprints)


def duplicate_report_dict(report: DuplicateReport) -> dict[str, Any]:
    return {
        "policy": report.policy.value,
        "duplicated_ids": report.duplicated_ids,
        "duplicate_rows": report.duplicate_rows,
        "dropped_rows": report.dropped_rows,
        "examples": [list(group) for group in report.examples],
    }


def duplicate_report_from(data: dict[str, Any], policy: str) -> DuplicateReport:
    if not data:
        return DuplicateReport(DuplicatePolicy(policy), 0, 0, 0, ())
    return DuplicateReport(
        DuplicatePolicy(data["policy"]),
        int(data["duplicated_ids"]),
        int(data["duplicate_rows"]),
        int(data["dropped_rows"]),
        tuple(tuple(int(r) for r in group) for group in data["examples"]),
    )
