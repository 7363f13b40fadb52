"""The feature party's end of the vertical stream: dial the label party, announce, and
carry out its instructions with the :class:`~accord.vertical.parties.FeatureParty`'s own
methods (:func:`serve_feature_party`). The label party's end and the wire helpers are in
:mod:`accord.vertical.transport`.

A label party lost mid-run (network cut, process killed or restarted) is redialled, with
a pause doubling from ``reconnect_initial`` to ``reconnect_max``, for up to
``DialSettings.reconnect_timeout`` seconds; each new stream announces again which epochs
the party holds, and the label party says where to continue (``Restore``). A refusal, a
credential refusal, or the deadline passing is one :class:`PeerError` line.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from accord._validation import require_number
from accord.credentials.auth import NodeCredentials
from accord.credentials.tls import bearer_metadata, channel_options, channel_tls
from accord.errors import ConfigurationError, PeerError, ProtocolError
from accord.vertical.agreement import PartyAnnouncement
from accord.vertical.messages import BatchRequest, EmbeddingGradient
from accord.vertical.parties import PREDICT, FeatureParty, PartyTable
from accord.vertical.proto import vertical_pb2 as pb
from accord.vertical.proto import vertical_pb2_grpc as pb_grpc
from accord.vertical.transport import (
    END,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    from_matrix,
    grpc_details,
    to_matrix,
)

__all__ = ["DialSettings", "FeatureHooks", "feature_hello", "serve_feature_party"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DialSettings:
    """How a feature party reaches the label party."""

    #: ``HOST:PORT`` of the label party.
    address: str
    #: Seconds to reach the label party (it may still be starting).
    connect_timeout: float = 60.0
    #: Seconds the label party may stay silent once joined.
    idle_timeout: float = 300.0
    #: The TLS name to expect on the label party's certificate (``None``: the host).
    server_name: str | None = None
    #: Seconds to keep redialling a label party lost mid-run (0: a loss ends the party).
    reconnect_timeout: float = 60.0
    #: Bounds of the pause between two failed attempts (doubling from the first).
    reconnect_initial: float = 0.05
    reconnect_max: float = 2.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "idle_timeout", "reconnect_initial", "reconnect_max"):
            require_number(name, getattr(self, name), minimum=0, exclusive_minimum=True)
        require_number("reconnect_timeout", self.reconnect_timeout, minimum=0)
        if self.reconnect_initial > self.reconnect_max:
            raise ConfigurationError(
                "reconnect: expected reconnect_initial <= reconnect_max, got"
                f" {self.reconnect_initial!r} and {self.reconnect_max!r}"
            )


def _channel(settings: DialSettings, credentials: NodeCredentials) -> grpc.Channel:
    options: list[tuple[str, int | str]] = [
        *channel_options(MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    return grpc.secure_channel(settings.address, channel_tls(credentials), options=options)


class _Watchdog:
    """Cancels a call when nothing arrived for ``timeout`` seconds."""

    def __init__(self, call: Any, timeout: float) -> None:
        self.call, self.timeout = call, timeout
        self.last = time.monotonic()
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            if time.monotonic() - self.last > self.timeout:
                self.fired = True
                self.call.cancel()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class _LostError(Exception):
    """The stream to the label party ended before the run did. ``progress``: 0, it was
    not admitted; 1, admitted (welcomed) only; 2, it carried out instructions."""

    def __init__(self, message: str, progress: int) -> None:
        super().__init__(message)
        self.progress = progress


@dataclasses.dataclass(frozen=True)
class FeatureHooks:
    """What a feature party does besides the rounds (each optional)."""

    #: Save the party's state after ``next_epoch`` epochs (the label party asks after each).
    on_checkpoint: Callable[[int], None] | None = None
    #: Continue from the state after ``next_epoch`` epochs (after every join and rejoin).
    on_restore: Callable[[int], None] | None = None
    #: Called with every ``Welcome``.
    on_welcome: Callable[[pb.Welcome], None] | None = None
    #: Called with ``(epoch, batch)`` after each training step (testing failpoints).
    on_step: Callable[[int, int], None] | None = None


def serve_feature_party(
    party: FeatureParty,
    hello: pb.Hello | Callable[[], pb.Hello],
    settings: DialSettings,
    credentials: NodeCredentials,
    *,
    hooks: FeatureHooks | None = None,
    new_rows: PartyTable | None = None,
) -> str:
    """Dial the label party, answer its instructions until it finishes the run; the
    finish reason. A refusal is one :class:`PeerError`; so is a label party lost or silent
    for longer than ``settings.reconnect_timeout`` (until then the party redials, with a
    pause doubling from ``reconnect_initial`` to ``reconnect_max``, and announces itself
    again: ``hello`` may be a function giving the current ``Hello``).
    ``new_rows``: the party's columns of new rows to embed when the label party scores
    them (``accord vertical predict``)."""
    hooks = hooks or FeatureHooks()
    make_hello = hello if callable(hello) else (lambda: hello)
    window = settings.reconnect_timeout
    lost_at: float | None = None  # when the label party was lost (None: not lost)
    lost_why = ""
    delay = settings.reconnect_initial
    while True:
        within = settings.connect_timeout
        if lost_at is not None:
            within = lost_at + window - time.monotonic()
            if within <= 0:
                raise PeerError(f"{lost_why}; it did not come back within {window:g} s")
        try:
            return _feature_session(
                party, make_hello(), settings, credentials, hooks, within, new_rows, lost_at
            )
        except _LostError as lost:
            # A loss mid-run opens a window to redial; a label party that admits the party
            # again but sends no instruction (it is stuck) does not reopen it.
            if window > 0 and lost.progress > (0 if lost_at is None else 1):
                lost_at, lost_why, delay = time.monotonic(), str(lost), settings.reconnect_initial
                logger.warning("%s; redialling for up to %g s", lost_why, window)
            elif lost_at is None:  # never joined, or no reconnection
                raise PeerError(str(lost)) from None
            left = lost_at + window - time.monotonic()  # still away: pause, then redial
        time.sleep(max(0.0, min(delay, left)))
        delay = min(settings.reconnect_max, delay * 2)


def _connect(settings: DialSettings, credentials: NodeCredentials, within: float) -> grpc.Channel:
    """A channel to the label party, ready within ``within`` seconds (or :class:`_LostError`)."""
    channel = _channel(settings, credentials)
    try:
        grpc.channel_ready_future(channel).result(timeout=within)
    except grpc.FutureTimeoutError:
        channel.close()
        raise _LostError(
            f"cannot reach the label party at {settings.address} within {within:g} s (is it"
            " listening? do its certificate and this party's CA match?)",
            False,
        ) from None
    return channel


def _feature_session(
    party: FeatureParty,
    hello: pb.Hello,
    settings: DialSettings,
    credentials: NodeCredentials,
    hooks: FeatureHooks,
    within: float,
    new_rows: PartyTable | None,
    lost_at: float | None,
) -> str:
    """One stream: connect (within ``within`` seconds), announce, serve; the finish
    reason. A stream that ends before the run does is :class:`_LostError`. ``lost_at``:
    when the previous stream was lost (``None``: this is the first)."""
    channel = _connect(settings, credentials, within)
    outbound: queue.Queue[Any] = queue.Queue()
    outbound.put(pb.FeatureMessage(hello=hello))

    def requests() -> Iterator[pb.FeatureMessage]:
        while True:
            message = outbound.get()
            if message is END:
                return
            yield message

    stub = pb_grpc.VerticalStub(channel)  # type: ignore[no-untyped-call]
    call = stub.Session(requests(), metadata=bearer_metadata(credentials))
    watchdog = _Watchdog(call, settings.idle_timeout)
    progress = [0]

    def on_welcome(welcome: pb.Welcome) -> None:
        progress[0] = 1
        if lost_at is None:
            logger.info("joined %r's run", welcome.label_party)
        else:
            logger.info(
                "rejoined %r's run after %.1f s",
                welcome.label_party,
                time.monotonic() - lost_at,
            )
        if hooks.on_welcome is not None:
            hooks.on_welcome(welcome)

    session_hooks = dataclasses.replace(hooks, on_welcome=on_welcome)
    try:
        for message in call:
            watchdog.last = time.monotonic()
            if progress[0] == 1 and message.WhichOneof("body") != "welcome":
                progress[0] = 2
            reason = _answer(party, message, outbound, session_hooks, new_rows)
            if reason is not None:
                return reason
        raise _LostError("the label party closed the session before the run ended", progress[0])
    except grpc.RpcError as error:
        raise _broken(error, watchdog.fired, settings, hello.party, progress[0]) from None
    finally:
        watchdog.stop()
        outbound.put(END)
        call.cancel()
        channel.close()


def _broken(
    error: grpc.RpcError, silent: bool, settings: DialSettings, party: str, progress: int
) -> Exception:
    """What a broken stream to the label party means: a refusal of this party's
    credentials (final, :class:`PeerError`), or a loss (:class:`_LostError`)."""
    if silent:
        return _LostError(f"the label party sent nothing for {settings.idle_timeout:g} s", progress)
    code = error.code() if hasattr(error, "code") else None
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return PeerError(
            f"the label party at {settings.address} refused this party's credentials"
            f" (party {party!r}: is this its own `accord certs --names` folder?)"
        )
    return _LostError(
        f"lost the label party at {settings.address}: {grpc_details(error)}", progress
    )


def _answer(
    party: FeatureParty,
    message: pb.LabelMessage,
    outbound: queue.Queue[Any],
    hooks: FeatureHooks,
    new_rows: PartyTable | None,
) -> str | None:
    """Carry out one instruction; the finish reason once the run is over."""
    kind = message.WhichOneof("body")
    if kind == "finish":
        if message.finish.failed:
            raise PeerError(f"the label party ended the run: {message.finish.reason}")
        return message.finish.reason or "finished"
    if kind == "refused":
        raise PeerError(f"the label party refused this party: {message.refused.reason}")
    if kind == "welcome":
        if hooks.on_welcome is not None:
            hooks.on_welcome(message.welcome)
    elif kind == "checkpoint":
        if hooks.on_checkpoint is not None:
            hooks.on_checkpoint(int(message.checkpoint.next_epoch))
        outbound.put(pb.FeatureMessage(matrix=pb.Matrix()))  # saved (or nothing to save)
    elif kind == "restore":
        if hooks.on_restore is None:
            raise ProtocolError("restore: this party keeps no state to continue from")
        hooks.on_restore(int(message.restore.next_epoch))
        outbound.put(pb.FeatureMessage(matrix=pb.Matrix()))  # restored
    else:
        reply = _carry_out(party, message, kind, new_rows)
        if reply is not None:
            outbound.put(pb.FeatureMessage(matrix=to_matrix(reply)))
        elif kind == "backward" and hooks.on_step is not None:
            hooks.on_step(int(message.backward.epoch), int(message.backward.batch))
    return None


def _carry_out(
    party: FeatureParty, message: pb.LabelMessage, kind: str | None, new_rows: PartyTable | None
) -> np.ndarray | None:
    """One round instruction, by the feature party's own methods; the matrix to send back."""
    if kind == "forward":
        request = BatchRequest(int(message.forward.epoch), int(message.forward.batch))
        return party.forward(request).values
    if kind == "backward":
        body = message.backward
        values = from_matrix(body.gradient, "gradient")
        party.backward(EmbeddingGradient(party.name, int(body.epoch), int(body.batch), values))
        return None
    if kind == "embed":
        split = message.embed.split
        if split == PREDICT and new_rows is not None:
            return party.embed_new(new_rows).values
        if split not in ("validation", "test"):
            raise ProtocolError(f"embed: expected the validation or test split, got {split!r}")
        return party.embed(split).values
    if kind == "keep_best":
        party.keep_best()
        return None
    if kind == "restore_best":
        party.restore_best()
        return None
    raise ProtocolError(f"unknown instruction {kind!r} from the label party")


def feature_hello(
    announcement: PartyAnnouncement,
    held: Sequence[int] = (),
    predict: PartyAnnouncement | None = None,
) -> pb.Hello:
    """The first message of a feature party's stream: ``held``, the epochs it holds a
    state after (empty: a new party); ``predict``, the new rows it embeds."""
    return pb.Hello(
        protocol_version=PROTOCOL_VERSION,
        party=announcement.party,
        row_count=announcement.row_count,
        settings_fingerprint=announcement.settings_fingerprint,
        alignment_fingerprint=announcement.alignment_fingerprint or "",
        resume_epoch=max(held, default=0),
        held_epochs=sorted(held),
        predict_rows=0 if predict is None else predict.row_count,
        predict_alignment_fingerprint=(
            "" if predict is None else predict.alignment_fingerprint or ""
        ),
    )
