"""The networked vertical run, one function per role: :func:`run_label_party` listens and
drives :func:`~accord.vertical.simulation.run_vertical` over the feature parties' streams;
:func:`run_feature_party` dials it and answers. The round logic is the in-memory driver's;
this module adds credentials, the run folder and the transport only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accord._validation import require_number
from accord.credentials.auth import (
    REVOKED_NAME,
    Authenticator,
    NodeCredentials,
    load_node_credentials,
    load_server_credentials,
)
from accord.credentials.tls import format_address
from accord.errors import AccordError, ConfigurationError, InputDataError
from accord.settings_mapping import settings_to_mapping
from accord.vertical.agreement import PartyAnnouncement, settings_fingerprint
from accord.vertical.checkpoints import (
    FeatureCheckpoints,
    LabelSnapshot,
    read_label_checkpoint,
    write_label_checkpoint,
)
from accord.vertical.feature_transport import (
    DialSettings,
    FeatureHooks,
    feature_hello,
    serve_feature_party,
)
from accord.vertical.messages import BatchRequest, EmbeddingGradient
from accord.vertical.parties import PREDICT, FeatureParty, LabelParty, PartyTable
from accord.vertical.results import DriverState, VerticalResult
from accord.vertical.run_files import CHECKPOINT_FILE, LabelRunFolder
from accord.vertical.simulation import GradientObserver, run_vertical
from accord.vertical.transport import (
    LabelServer,
    PartyLostError,
    RemoteFeatureParty,
    links_bytes,
)

__all__ = [
    "ListenSettings",
    "announce",
    "predict_feature_party",
    "predict_label_party",
    "run_feature_party",
    "run_label_party",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenSettings:
    """Where the label party listens and how long it waits."""

    host: str = "127.0.0.1"
    #: 0 picks a free port (written to ``RUN_DIR/label.json``).
    port: int = 0
    #: Seconds to wait for every feature party to join.
    join_timeout: float = 600.0
    #: Seconds a joined feature party may stay silent.
    idle_timeout: float = 300.0
    #: Seconds to wait for a feature party lost mid-run to come back (0: a loss ends the
    #: run).
    reconnect_timeout: float = 60.0
    #: Seconds a new connection may take to say who it is before it is dropped.
    hello_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigurationError(f"--listen: expected a port 0..65535, got {self.port!r}")
        for name in ("join_timeout", "idle_timeout", "hello_timeout"):
            require_number(name, getattr(self, name), minimum=0, exclusive_minimum=True)
        require_number("reconnect_timeout", self.reconnect_timeout, minimum=0)


def announce(
    party: LabelParty | FeatureParty, alignment_fingerprint: str | None
) -> PartyAnnouncement:
    """What ``party`` tells the others before training."""
    return PartyAnnouncement(
        party.name, party.row_count, settings_fingerprint(party.settings), alignment_fingerprint
    )


def run_label_party(
    label: LabelParty,
    alignment_fingerprint: str | None,
    credentials_dir: Path,
    listen: ListenSettings,
    run_dir: Path,
    *,
    on_listening: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    resume: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> VerticalResult:
    """Listen, admit the feature parties, train, write the run folder; the result.

    Before any training each feature party's credentials (mutual TLS and token) and its
    agreement (alignment fingerprint, row count, settings) are checked; a refusal leaves no
    run folder behind. After every epoch each feature party saves its state, then the label
    party (``RUN_DIR/checkpoint.npz``); ``resume`` continues from there.

    A feature party lost mid-run (its stream ended or it went silent) may come back within
    ``listen.reconnect_timeout`` seconds, passing the same checks: every party then rolls
    back to the last epoch they all hold and the epoch in progress is replayed, so the
    result equals an uninterrupted run's. The reconnections are listed in ``summary.json``.
    ``on_step(epoch, batch)`` is called after each training step (testing failpoints).
    """
    folder = LabelRunFolder(run_dir, resume=resume)
    announcement = announce(label, alignment_fingerprint)
    state = read_label_checkpoint(folder.checkpoint, label, announcement) if resume else None
    snapshot = LabelSnapshot(label, state)

    server = _label_server(
        announcement,
        label.feature_parties,
        credentials_dir,
        listen,
        first_epoch=snapshot.next_epoch,
    )
    started = clock()
    reconnections: list[dict[str, Any]] = []
    try:
        port = server.start(listen.host, listen.port)
        address = format_address(listen.host, port)
        folder.listening(address, port, label.name)
        if on_listening is not None:
            on_listening(address)
        links = server.wait_for_parties(listen.join_timeout)
        logger.info(
            "every party agreed (%s); training from epoch %d", ", ".join(links), snapshot.next_epoch
        )
        exchanged = [0, 0]

        def on_epoch_end(done: DriverState) -> None:
            sent, received = links_bytes(links)
            extra = {"bytes_sent": sent - exchanged[0], "bytes_received": received - exchanged[1]}
            exchanged[:] = [sent, received]
            folder.append_epoch(done.history[-1], extra)
            for link in links.values():
                link.checkpoint(done.next_epoch)
            write_label_checkpoint(folder.checkpoint, label, announcement, done)
            snapshot.take(label, done)
            # A party that redials before the loss reaches this loop must be checked
            # against the epoch every party now holds, not the one the run started from.
            server.advance(done.next_epoch)

        while True:
            # Every party continues from the snapshot's epoch: at the start, and after a
            # rejoin (the epoch in progress is replayed; its metrics line is dropped).
            resume_from = snapshot.restore(label)
            folder.start(snapshot.next_epoch)
            try:
                for link in links.values():
                    link.restore(snapshot.next_epoch)
                result = run_vertical(
                    label,
                    links,
                    on_epoch_end=on_epoch_end,
                    resume=resume_from,
                    on_gradient=None if on_step is None else _stepped(on_step),
                )
                break
            except PartyLostError as lost:
                if listen.reconnect_timeout <= 0:
                    raise
                links = _rejoined(server, lost, snapshot.next_epoch, listen, reconnections)
        for link in links.values():
            link.finish("the run is complete")
        sent, received = links_bytes(links)
        folder.finish(
            result,
            {
                "label_party": label.name,
                "parties": [label.name, *label.feature_parties],
                "feature_parties": list(label.feature_parties),
                "rows": label.row_count,
                "alignment_fingerprint": alignment_fingerprint,
                "settings": settings_to_mapping(label.settings),
                "protection": settings_to_mapping(label.protection),
                "bytes_sent": sent,
                "bytes_received": received,
                "resumed_at_epoch": state.next_epoch if state is not None else None,
                "reconnections": reconnections,
                "seconds": round(clock() - started, 3),
            },
        )
        return result
    except BaseException as error:
        server.abort(abort_reason(error))
        folder.discard()
        raise
    finally:
        server.stop()


def abort_reason(error: BaseException) -> str:
    """What the feature parties are told when the label party's run ends with ``error``:
    Accord's own one-line reason; for anything else only its kind (the details stay in the
    label party's log)."""
    if isinstance(error, KeyboardInterrupt):
        return "the label party was interrupted"
    if isinstance(error, AccordError):
        return str(error)
    return f"the label party failed ({type(error).__name__}; see its log)"


def _stepped(on_step: Callable[[int, int], None]) -> GradientObserver:
    def observe(request: BatchRequest, gradient: EmbeddingGradient) -> None:
        del gradient
        on_step(request.epoch, request.batch)

    return observe


def _rejoined(
    server: LabelServer,
    lost: PartyLostError,
    epoch: int,
    listen: ListenSettings,
    reconnections: list[dict[str, Any]],
) -> dict[str, RemoteFeatureParty]:
    """Wait for ``lost``'s party (and any other gone) to connect again; the new links.
    The reconnection is logged and appended to ``reconnections``."""
    logger.warning(
        "%s; waiting up to %g s for it to connect again (the run continues from epoch %d)",
        lost,
        listen.reconnect_timeout,
        epoch,
    )
    waited = time.monotonic()
    links = server.recover(lost, epoch, listen.reconnect_timeout)
    seconds = time.monotonic() - waited
    logger.info(
        "party %r is back after %.1f s; continuing from epoch %d", lost.party, seconds, epoch
    )
    reconnections.append(
        {"party": lost.party, "reason": str(lost), "epoch": epoch, "seconds": round(seconds, 3)}
    )
    return links


def feature_credentials(directory: Path) -> NodeCredentials:
    """A feature party's credentials folder (``accord certs DIR --names ...``'s
    ``DIR/<name>``): the CA, its certificate and key, and its token, all required."""
    credentials = load_node_credentials(directory)
    missing = [
        name
        for name, value in (
            ("ca.pem", credentials.root_ca),
            ("node.pem", credentials.certificate_chain),
            ("node.key", credentials.private_key),
            ("token", credentials.token),
        )
        if value is None
    ]
    if missing:
        raise InputDataError(
            f"{directory}: expected a party's credentials folder (accord certs DIR --names"
            f" ...: DIR/<name>), missing {', '.join(missing)}"
        )
    return credentials


def run_feature_party(
    party: FeatureParty,
    alignment_fingerprint: str | None,
    credentials_dir: Path,
    dial: DialSettings,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> str:
    """Dial the label party and serve the run; the label party's finish reason.

    The party keeps its state after the last two epochs in memory (and, with
    ``checkpoint``, in that file), so that it can continue from where the label party
    says after a reconnection. ``resume`` continues a restarted process from the file
    (a file not written yet: the party joins as a new one).
    """
    credentials = feature_credentials(credentials_dir)
    announcement = announce(party, alignment_fingerprint)
    saved = FeatureCheckpoints(checkpoint, party, announcement)
    if resume:
        if checkpoint is None:
            raise ConfigurationError("--resume: give the --checkpoint FILE to resume from")
        if checkpoint.exists():
            saved.load()
        else:
            logger.info("%s does not exist yet: joining as a new party", checkpoint)

    def on_welcome(welcome: Any) -> None:
        if not saved.held():  # a new party: its initial state is epoch 0's
            saved.save(0)

    return serve_feature_party(
        party,
        lambda: feature_hello(announcement, saved.held()),
        dial,
        credentials,
        hooks=FeatureHooks(saved.save, saved.restore, on_welcome, on_step),
    )


def _label_server(
    announcement: PartyAnnouncement,
    feature_parties: tuple[str, ...],
    credentials_dir: Path,
    listen: ListenSettings,
    *,
    first_epoch: int,
    predict: PartyAnnouncement | None = None,
) -> LabelServer:
    """The label party's server (not yet listening), checking credentials from ``DIR``."""

    def load() -> Any:
        return load_server_credentials(credentials_dir, "both")

    credentials = load()
    authenticator = Authenticator.reloading(
        load, [credentials_dir / "tokens.json", credentials_dir / REVOKED_NAME]
    )
    return LabelServer(
        announcement,
        feature_parties,
        credentials,
        authenticator,
        idle_timeout=listen.idle_timeout,
        first_epoch=first_epoch,
        predict=predict,
        hello_timeout=listen.hello_timeout,
    )


def predict_label_party(
    label: LabelParty,
    alignment_fingerprint: str | None,
    run_dir: Path,
    new_rows: PartyTable,
    new_fingerprint: str | None,
    credentials_dir: Path,
    listen: ListenSettings,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Score new rows with the trained model in ``run_dir``: the probability of label 1 per
    row, for the label party only. ``label`` is rebuilt from its training table (the same
    splits and standardisation) and restored to the run's best epoch; every feature party
    does the same and sends its embedding of its columns of the new rows."""
    announcement = announce(label, alignment_fingerprint)
    state = read_label_checkpoint(run_dir / CHECKPOINT_FILE, label, announcement)
    label.restore_best()
    predict = PartyAnnouncement(
        label.name, new_rows.row_count, announcement.settings_fingerprint, new_fingerprint
    )
    server = _label_server(
        announcement,
        label.feature_parties,
        credentials_dir,
        listen,
        first_epoch=state.next_epoch,
        predict=predict,
    )
    try:
        port = server.start(listen.host, listen.port)
        if on_listening is not None:
            on_listening(format_address(listen.host, port))
        links = server.wait_for_parties(listen.join_timeout)
        embeddings = {party: link.embed(PREDICT) for party, link in links.items()}
        probabilities = label.predict(new_rows if label.bottom is not None else None, embeddings)
        for link in links.values():
            link.finish("the new rows are scored")
        return probabilities
    except BaseException as error:
        server.abort(abort_reason(error))
        raise
    finally:
        server.stop()


def predict_feature_party(
    party: FeatureParty,
    alignment_fingerprint: str | None,
    checkpoint: Path,
    new_rows: PartyTable,
    new_fingerprint: str | None,
    credentials_dir: Path,
    dial: DialSettings,
) -> str:
    """Embed this party's columns of new rows for the label party, with its trained bottom
    (from ``checkpoint``, restored to the run's best epoch); the label party's reason."""
    credentials = feature_credentials(credentials_dir)
    announcement = announce(party, alignment_fingerprint)
    saved = FeatureCheckpoints(checkpoint, party, announcement)
    saved.load()

    def on_welcome(welcome: Any) -> None:
        saved.restore(int(welcome.first_epoch))
        party.restore_best()

    predict = PartyAnnouncement(
        party.name, new_rows.row_count, announcement.settings_fingerprint, new_fingerprint
    )
    return serve_feature_party(
        party,
        feature_hello(announcement, saved.held(), predict),
        dataclasses.replace(dial, reconnect_timeout=0),
        credentials,
        hooks=FeatureHooks(on_welcome=on_welcome),
        new_rows=new_rows,
    )
