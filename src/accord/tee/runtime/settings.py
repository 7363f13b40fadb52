"""What one party's alignment run is given and what it returns.

:class:`PartySettings` — every ``accord align`` flag of a party's run, validated in
``__post_init__``; :class:`PartySummary` — what the party learned (see
:mod:`accord.tee.runtime.party` for who learns what); and the progress callbacks a run
reports through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accord._validation import require_int, require_number
from accord.errors import ConfigurationError
from accord.tee.core.names import validate_party_name
from accord.tee.runtime.endpoint import Endpoint
from accord.tee.runtime.progress import ProgressEvent

__all__ = [
    "DUPLICATE_POLICIES",
    "PartySettings",
    "PartySummary",
    "Progress",
    "ProgressEvents",
]

#: Called with a stage name and, for ``load`` and ``write``, the rows done so far.
Progress = Callable[[str, int | None], None]
#: Called with the stages of a bucketed run (per bucket, with an estimate of time left).
ProgressEvents = Callable[[ProgressEvent], None]

DUPLICATE_POLICIES = ("error", "first", "drop-all")


@dataclass(frozen=True)
class PartySettings:
    """Everything one party's run needs; the ``accord align`` flags map onto it one to one."""

    #: The party's table (CSV/TSV, optionally compressed, or Parquet).
    input: Path
    #: Key column(s); a key of several columns is joined unambiguously.
    key_columns: tuple[str, ...]
    #: Attestation policy (TOML) the peers' enclaves must satisfy.
    policy: Path
    #: This party's name, unique in the session.
    party_name: str
    #: Address to accept peers on (``None``: dial only).
    listen: Endpoint | None = None
    #: Peers to dial.
    peers: tuple[Endpoint, ...] = ()
    #: Number of parties in the session (this one included).
    parties: int = 2
    #: Session name; every party must use the same.
    session: str = "accord-align"
    #: Row map output (position, row [, key columns]); ``None``: not written.
    output_map: Path | None = None
    #: Aligned table output (own rows in the shared order); ``None``: not written.
    output_table: Path | None = None
    #: Also write the ID column(s) into the row map.
    include_ids: bool = False
    #: What to do with an ID on several rows: ``error``, ``first`` or ``drop-all``.
    duplicates: str = "error"
    #: Drop (and count) empty and undecodable IDs instead of refusing the input.
    skip_invalid: bool = False
    #: Pad this party's digest stream to this many IDs, hiding its set size (``None``: no).
    pad_to: int | None = None
    #: Where to write the summary JSON (``None``: only returned).
    summary: Path | None = None
    #: The simulated platform key (``None``: the default path).
    platform_key: Path | None = None
    #: Run the enclave in debug mode (peers refuse it unless their policy allows debug).
    debug_enclave: bool = False
    #: Seconds to reach every peer.
    connect_timeout: float = 60.0
    #: Seconds a peer may stay silent during the run.
    idle_timeout: float = 300.0
    #: Connections from one address that may wait at once to say their hello to this
    #: party's listener (eight times as many from all addresses); one beyond is dropped at
    #: once, and refused hellos are throttled per address (:mod:`accord.rate_limits`).
    max_pending_connections: int = 8
    #: Memory budget of this party, host and enclave together (bytes). The run is bucketed
    #: when the agreed plan needs more than one bucket (``None``: no limit).
    memory_limit: int | None = None
    #: Bucket count set by hand (the parties use the largest asked for); ``None``: planned.
    buckets: int | None = None
    #: Directory of a bucketed run's sealed files and manifest (``None``: next to the first
    #: output, ``accord-run-<session>-<party>``).
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        validate_party_name(self.party_name, "party_name")
        validate_party_name(self.session, "session")
        require_int("parties", self.parties, minimum=2)
        self._check_keys()
        self._check_links()
        if self.pad_to is not None:
            require_int("pad_to", self.pad_to, minimum=1)
        require_number("connect_timeout", self.connect_timeout, minimum=0, exclusive_minimum=True)
        require_number("idle_timeout", self.idle_timeout, minimum=0, exclusive_minimum=True)
        require_int("max_pending_connections", self.max_pending_connections, minimum=1)
        self._check_outputs()
        self._check_buckets()

    def _check_keys(self) -> None:
        if not self.key_columns:
            raise ConfigurationError("key_columns: expected at least one key column")
        if len(set(self.key_columns)) != len(self.key_columns):
            raise ConfigurationError(f"key_columns: a column is named twice in {self.key_columns}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ConfigurationError(
                f"duplicates: expected one of {', '.join(DUPLICATE_POLICIES)}; "
                f"got {self.duplicates!r}"
            )

    def _check_links(self) -> None:
        if self.listen is None and not self.peers:
            raise ConfigurationError("give --listen, --peer, or both: a party needs its peers")
        if len(self.peers) > self.parties - 1:
            raise ConfigurationError(
                f"peers: {len(self.peers)} given, but {self.parties} parties have "
                f"{self.parties - 1} peers"
            )
        if self.listen is None and len(self.peers) < self.parties - 1:
            raise ConfigurationError(
                f"peers: {self.parties} parties need {self.parties - 1} peer links; give "
                "--listen or more --peer"
            )

    def _check_outputs(self) -> None:
        outputs = [p for p in (self.output_map, self.output_table, self.summary) if p is not None]
        resolved = [p.resolve() for p in outputs]
        if len(set(resolved)) != len(resolved):
            raise ConfigurationError("outputs: two outputs name the same file")
        if self.input.resolve() in resolved:
            raise ConfigurationError(
                f"outputs: {self.input} is the input; refusing to overwrite it"
            )
        if self.include_ids and self.output_map is None:
            raise ConfigurationError("include_ids needs an output_map to write the IDs into")

    def _check_buckets(self) -> None:
        if self.memory_limit is not None:
            require_int("memory_limit", self.memory_limit, minimum=1 << 20)
        if self.buckets is not None:
            # Here only: the host of an in-memory run never loads the alignment core.
            from accord.alignment.buckets import MAX_BUCKETS

            require_int("buckets", self.buckets, minimum=1)
            if self.buckets > MAX_BUCKETS:
                raise ConfigurationError(
                    f"buckets: expected 1 to {MAX_BUCKETS}, got {self.buckets}"
                )
        if self.bucketed and self.pad_to is not None:
            raise ConfigurationError(
                "pad_to: cannot hide the set size in a bucketed run (each bucket's size shows); "
                "drop --pad-to or --memory-limit/--buckets"
            )

    @property
    def bucketed(self) -> bool:
        """Whether this party asks for (and accepts) a bucketed run."""
        return self.memory_limit is not None or self.buckets is not None


@dataclass(frozen=True)
class PartySummary:
    """What this party learned (see the module docstring for who learns what)."""

    party: str
    session: str
    #: Every party's name, sorted.
    parties: tuple[str, ...]
    #: Data rows in the input.
    input_rows: int
    #: Distinct usable IDs of this party (after the duplicate policy).
    own_ids: int
    #: Each peer's number of distinct IDs, ``None`` when that peer hid it.
    peer_ids: dict[str, int | None]
    #: Size of the intersection of every party's IDs.
    intersection: int
    #: The alignment's fingerprint (SHA-256, hex) that every party's enclave computed and
    #: confirmed: the same on every party of one alignment, another for any other alignment.
    #: It reveals nothing about IDs; ``accord vertical`` checks it before training.
    fingerprint: str | None
    #: Empty, undecodable and duplicate IDs found in this party's input; ``dropped_rows``
    #: counts every row left out (skipped invalid IDs and the duplicate policy's drops).
    input_report: dict[str, Any]
    #: This party's enclave identity, and each peer's as verified.
    enclave: dict[str, Any]
    peer_enclaves: dict[str, dict[str, Any]]
    #: Output files written.
    outputs: dict[str, str]
    #: Wall seconds per stage.
    seconds: dict[str, float] = field(default_factory=dict)
    #: Buckets of a bucketed run (``None``: in memory).
    buckets: int | None = None
    #: The bucket a resumed run continued from (``None``: not resumed).
    resumed_from_bucket: int | None = None
    #: Peak bytes of the run directory (bucketed runs).
    disk_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)
