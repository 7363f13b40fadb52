"""The in-process driver of a vertical run: the parties' round logic over an in-memory link.

The driver sits where the label party's process will: it plans each epoch's batches, asks
every feature party (through a :class:`FeaturePartyLink`) for its embedding, has the label
party step, returns to each feature party its own gradient, scores the validation and test
splits after every epoch, and stops early on the validation loss. A :class:`FeatureParty`
is its own in-memory link; a networked driver will pass links that move the same messages
over gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from accord.vertical.agreement import (
    PartyAnnouncement,
    check_announcements,
    settings_fingerprint,
)
from accord.vertical.messages import BatchRequest, Embedding, EmbeddingGradient, SplitEmbedding
from accord.vertical.parties import FeatureParty, LabelParty, PartyTable, SplitMetrics
from accord.vertical.results import DriverState, EarlyStopping, EpochMetrics, VerticalResult
from accord.vertical.settings import ProtectionSettings, VerticalSettings

__all__ = [
    "FeaturePartyLink",
    "GradientObserver",
    "build_parties",
    "run_vertical",
    "simulate_vertical",
]

logger = logging.getLogger(__name__)

#: Called with every gradient a feature party receives (benchmarks and attack studies).
GradientObserver = Callable[[BatchRequest, EmbeddingGradient], None]


class FeaturePartyLink(Protocol):
    """What the label party's driver can ask of a feature party."""

    def forward(self, request: BatchRequest) -> Embedding: ...

    def backward(self, gradient: EmbeddingGradient) -> None: ...

    def embed(self, split: str) -> SplitEmbedding: ...

    def keep_best(self) -> None: ...

    def restore_best(self) -> None: ...


def _score(
    label: LabelParty, links: Mapping[str, FeaturePartyLink], split: str
) -> SplitMetrics | None:
    if not len(label.splits.positions(split)):
        return None
    embeddings = {party: link.embed(split) for party, link in links.items()}
    return label.evaluate(split, embeddings)


def run_vertical(
    label: LabelParty,
    links: Mapping[str, FeaturePartyLink],
    *,
    clock: Callable[[], float] = time.perf_counter,
    on_gradient: GradientObserver | None = None,
    on_epoch_end: Callable[[DriverState], None] | None = None,
    resume: DriverState | None = None,
) -> VerticalResult:
    """Train until the epoch limit or early stopping; every party ends on the best weights.

    ``on_epoch_end`` is called after every epoch once the best weights are kept: the moment
    to checkpoint each party (``checkpoint()``) with the driver's state. ``resume``
    continues from such a state, every party restored from its checkpoint of that epoch;
    the run then equals an uninterrupted one (batches and splits depend on the seed only).
    """
    settings = label.settings
    stopping = EarlyStopping(settings.patience)
    history: list[EpochMetrics] = []
    first = 0
    if resume is not None:
        stopping.resume(resume)
        history = list(resume.history)
        first = resume.next_epoch
    for epoch in range(first, settings.epochs):
        if stopping.should_stop:
            break
        started = clock()
        loss_sum, row_sum = 0.0, 0
        for request in label.plan_epoch(epoch):
            embeddings = {party: link.forward(request) for party, link in links.items()}
            result = label.step(request, embeddings)
            for party, gradient in result.gradients.items():
                if on_gradient is not None:
                    on_gradient(request, gradient)
                links[party].backward(gradient)
            loss_sum += result.loss * result.rows
            row_sum += result.rows
        train_seconds = clock() - started
        validation = _score(label, links, "validation")
        test = _score(label, links, "test")
        metrics = EpochMetrics(epoch, loss_sum / row_sum, validation, test, train_seconds)
        history.append(metrics)
        logger.info(
            "epoch %d: train loss %.5f, validation loss %s, test AUC %s (%.2f s)",
            epoch,
            metrics.train_loss,
            None if validation is None else f"{validation.loss:.5f}",
            None if test is None or test.auc is None else f"{test.auc:.4f}",
            train_seconds,
        )
        if stopping.update(epoch, None if validation is None else validation.loss):
            label.keep_best()
            for link in links.values():
                link.keep_best()
        if on_epoch_end is not None:
            on_epoch_end(stopping.state(epoch + 1, tuple(history)))
    label.restore_best()
    for link in links.values():
        link.restore_best()
    best = stopping.best_epoch if stopping.best_epoch is not None else len(history) - 1
    return VerticalResult(
        epochs=tuple(history),
        best_epoch=best,
        validation=_score(label, links, "validation"),
        test=_score(label, links, "test"),
        stopped_early=len(history) < settings.epochs,
    )


def build_parties(
    label_table: PartyTable,
    feature_tables: Sequence[PartyTable],
    settings: VerticalSettings,
    protection: ProtectionSettings | None = None,
    private_seed: int = 0,
) -> tuple[LabelParty, dict[str, FeatureParty]]:
    """Every party of an in-process run, after checking the tables hold the same rows."""
    fingerprint = settings_fingerprint(settings)
    check_announcements(
        PartyAnnouncement(label_table.name, label_table.row_count, fingerprint),
        [PartyAnnouncement(t.name, t.row_count, fingerprint) for t in feature_tables],
    )
    features = {table.name: FeatureParty(table, settings) for table in feature_tables}
    label = LabelParty(label_table, settings, list(features), protection, private_seed)
    return label, features


def simulate_vertical(
    label_table: PartyTable,
    feature_tables: Sequence[PartyTable],
    settings: VerticalSettings,
    protection: ProtectionSettings | None = None,
    *,
    private_seed: int = 0,
    on_gradient: GradientObserver | None = None,
) -> VerticalResult:
    """Split learning of the aligned tables in one process (see :func:`run_vertical`)."""
    label, features = build_parties(label_table, feature_tables, settings, protection, private_seed)
    return run_vertical(label, features, on_gradient=on_gradient)
