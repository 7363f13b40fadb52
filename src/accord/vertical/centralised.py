"""Centralised training of the composed network: the oracle and baseline of a split run.

The same bottoms and top, initialised from the same seed, standardised with the same
per-party statistics, trained on the same batches with the same optimiser and early
stopping, but as one network on the joined table (one graph, one backward pass, one
optimiser over every parameter). Without protection a split run must equal it to float
tolerance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional

from accord.errors import InputDataError
from accord.vertical.batches import epoch_batches, split_positions
from accord.vertical.metrics import binary_auc, log_loss
from accord.vertical.models import (
    ComposedModel,
    Standardiser,
    build_bottom,
    build_top,
    party_generator,
)
from accord.vertical.parties import PartyTable, SplitMetrics, make_optimizer, party_order
from accord.vertical.results import EarlyStopping, EpochMetrics, VerticalResult
from accord.vertical.settings import VerticalSettings

__all__ = ["CentralisedModel", "build_centralised", "train_centralised", "train_composed"]


class CentralisedModel:
    """The composed network with every party's standardised columns and the labels."""

    def __init__(
        self,
        label_table: PartyTable,
        feature_tables: Sequence[PartyTable],
        settings: VerticalSettings,
    ) -> None:
        if label_table.labels is None:
            raise InputDataError(
                f"party {label_table.name!r}: the label party needs a label column"
            )
        self.settings = settings
        self.splits = split_positions(
            label_table.row_count,
            settings.validation_fraction,
            settings.test_fraction,
            settings.seed,
        )
        order = party_order(label_table.name, [table.name for table in feature_tables])
        tables = {table.name: table for table in (label_table, *feature_tables)}
        self.features: dict[str, torch.Tensor] = {}
        bottoms: dict[str, torch.nn.Module] = {}
        for name in order:
            table = tables[name]
            if table.features.shape[1] == 0:
                continue
            standardiser = Standardiser.fit(table.features[self.splits.train])
            self.features[name] = torch.from_numpy(standardiser.transform(table.features))
            bottoms[name] = build_bottom(
                table.features.shape[1], settings.model, party_generator(settings.seed, name)
            )
        self.model = ComposedModel(bottoms, build_top(list(bottoms), settings.model, settings.seed))
        self.labels = torch.from_numpy(label_table.labels.astype(np.float32))
        self.optimizer = make_optimizer(self.model.parameters(), settings)

    def logits(self, positions: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(positions)
        logits: torch.Tensor = self.model(
            {party: values[rows] for party, values in self.features.items()}
        )
        return logits

    def step(self, positions: np.ndarray) -> float:
        """One optimiser step on the rows at ``positions``; the batch's mean loss."""
        loss = functional.binary_cross_entropy_with_logits(
            self.logits(positions), self.labels[torch.from_numpy(positions)]
        )
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return float(loss.detach())

    def evaluate(self, split: str) -> SplitMetrics | None:
        positions = self.splits.positions(split)
        if not len(positions):
            return None
        with torch.no_grad():
            scores = self.logits(positions).numpy()
        labels = self.labels.numpy()[positions]
        return SplitMetrics(
            split, log_loss(scores, labels), binary_auc(scores, labels), len(positions)
        )


def build_centralised(
    label_table: PartyTable, feature_tables: Sequence[PartyTable], settings: VerticalSettings
) -> CentralisedModel:
    """The composed network, ready to train (see :class:`CentralisedModel`)."""
    return CentralisedModel(label_table, feature_tables, settings)


def train_centralised(
    label_table: PartyTable,
    feature_tables: Sequence[PartyTable],
    settings: VerticalSettings,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> VerticalResult:
    """Train the composed network with the split run's batches and early stopping."""
    return train_composed(CentralisedModel(label_table, feature_tables, settings), clock=clock)


def train_composed(
    central: CentralisedModel, *, clock: Callable[[], float] = time.perf_counter
) -> VerticalResult:
    """Train ``central`` (it ends on its best epoch's weights); see :func:`train_centralised`."""
    settings = central.settings
    stopping = EarlyStopping(settings.patience)
    history: list[EpochMetrics] = []
    best_state = None
    for epoch in range(settings.epochs):
        started = clock()
        loss_sum, row_sum = 0.0, 0
        for positions in epoch_batches(
            central.splits.train, settings.batch_size, settings.seed, epoch
        ):
            loss_sum += central.step(positions) * len(positions)
            row_sum += len(positions)
        train_seconds = clock() - started
        validation, test = central.evaluate("validation"), central.evaluate("test")
        history.append(EpochMetrics(epoch, loss_sum / row_sum, validation, test, train_seconds))
        if stopping.update(epoch, None if validation is None else validation.loss):
            best_state = {k: v.clone() for k, v in central.model.state_dict().items()}
        if stopping.should_stop:
            break
    if best_state is not None:
        central.model.load_state_dict(best_state)
    best = stopping.best_epoch if stopping.best_epoch is not None else len(history) - 1
    return VerticalResult(
        epochs=tuple(history),
        best_epoch=best,
        validation=central.evaluate("validation"),
        test=central.evaluate("test"),
        stopped_early=len(history) < settings.epochs,
    )
