"""One party's round logic: functions from message to message, no I/O.

A :class:`FeatureParty` holds features only: ``forward(BatchRequest) -> Embedding``,
``backward(EmbeddingGradient)``, and ``embed(split) -> SplitEmbedding`` for scoring. The
:class:`LabelParty` holds the labels, its own bottom (when it holds features), the top
model and the loss: it plans each epoch's batches, ``step(embeddings) -> StepResult`` gives
every feature party the gradient of its own embedding only, and ``evaluate`` scores a
split. A driver (in memory or over the network) moves the messages; it adds no rules.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from accord.errors import ConfigurationError, InputDataError, ProtocolError
from accord.optim import Adam
from accord.vertical.batches import Splits, epoch_batches, split_positions
from accord.vertical.messages import (
    BatchRequest,
    Embedding,
    EmbeddingGradient,
    SplitEmbedding,
    check_matrix,
)
from accord.vertical.metrics import binary_auc, log_loss, probability_log_loss, sigmoid
from accord.vertical.models import Standardiser, TopModel, build_bottom, build_top, party_generator
from accord.vertical.protection import (
    debias_probability,
    keep_probability,
    max_norm_noise,
    randomised_response,
)
from accord.vertical.settings import ProtectionSettings, VerticalSettings

__all__ = [
    "FeatureParty",
    "LabelParty",
    "PartyTable",
    "SplitMetrics",
    "StepResult",
    "make_optimizer",
    "party_order",
]

logger = logging.getLogger(__name__)

#: The ``split`` of the embeddings of new rows to score (not a split of the training table).
PREDICT = "predict"
#: Rows scored at once when a whole split is embedded or evaluated.
_CHUNK = 65_536


@dataclass(frozen=True)
class PartyTable:
    """One party's aligned table: its rows in the shared order, numeric columns only.

    ``labels`` (0/1, one per row) is given for the label party only.
    """

    name: str
    features: np.ndarray
    columns: tuple[str, ...]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = f"party {self.name!r}"
        if not self.name or not isinstance(self.name, str) or "." in self.name:
            raise InputDataError(
                f"party name: expected a non-empty name without '.', got {self.name!r}"
            )
        features = self.features
        if not isinstance(features, np.ndarray) or features.ndim != 2:
            raise InputDataError(f"{where} features: expected a 2-D array (rows, columns)")
        if not np.issubdtype(features.dtype, np.number) or np.issubdtype(
            features.dtype, np.complexfloating
        ):
            raise InputDataError(
                f"{where} features: expected numeric columns, got dtype {features.dtype}"
            )
        if len(self.columns) != features.shape[1]:
            raise InputDataError(
                f"{where} columns: expected {features.shape[1]} names, got {len(self.columns)}"
            )
        bad = ~np.isfinite(features).all(axis=0) if features.shape[0] else np.zeros(0, bool)
        if bad.any():
            raise InputDataError(
                f"{where} column {self.columns[int(np.argmax(bad))]!r}: expected finite numbers,"
                " found NaN or Inf"
            )
        if self.labels is not None:
            labels = self.labels
            if not isinstance(labels, np.ndarray) or labels.shape != (features.shape[0],):
                raise InputDataError(
                    f"{where} labels: expected one label per row ({features.shape[0]}),"
                    f" got shape {getattr(labels, 'shape', None)}"
                )
            if not np.isin(labels, (0, 1)).all():
                raise InputDataError(f"{where} labels: expected binary labels 0 or 1")

    @property
    def row_count(self) -> int:
        return int(self.features.shape[0])


def party_order(label_party: str, feature_parties: Iterable[str]) -> tuple[str, ...]:
    """The order of the embeddings in the top model: the label party, then the others sorted."""
    others = sorted(feature_parties)
    if label_party in others or len(set(others)) != len(others):
        raise ConfigurationError(
            f"parties: expected distinct names, got {label_party!r} and {others!r}"
        )
    return (label_party, *others)


class _Sgd:
    """Plain SGD, ``p -= lr * grad`` (``torch.optim`` is avoided for its import cost)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        self.params = list(params)
        self.lr = lr

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        pairs = [(p, p.grad) for p in self.params if p.grad is not None]
        if pairs:
            torch._foreach_add_(
                [p for p, _ in pairs], [g for _, g in pairs if g is not None], alpha=-self.lr
            )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def make_optimizer(params: Iterable[torch.Tensor], settings: VerticalSettings) -> Adam | _Sgd:
    """The optimiser the settings name, over ``params``."""
    if settings.optimizer == "adam":
        return Adam(params, lr=settings.learning_rate)
    return _Sgd(params, lr=settings.learning_rate)


class _Party:
    """What every party does with its own table: splits, standardisation, bottom model."""

    def __init__(self, table: PartyTable, settings: VerticalSettings) -> None:
        self.name = table.name
        self.settings = settings
        self.row_count = table.row_count
        self.columns = table.columns
        self.splits: Splits = split_positions(
            table.row_count, settings.validation_fraction, settings.test_fraction, settings.seed
        )
        self._epoch_batches: tuple[int, list[np.ndarray]] | None = None
        self.bottom: torch.nn.Module | None = None
        self.features = torch.empty((table.row_count, 0))
        if table.features.shape[1]:
            train = table.features[self.splits.train]
            self.standardiser: Standardiser | None = Standardiser.fit(train)
            self.features = torch.from_numpy(self.standardiser.transform(table.features))
            self.bottom = build_bottom(
                table.features.shape[1], settings.model, party_generator(settings.seed, self.name)
            )
        else:
            self.standardiser = None
        self._best: dict[str, Any] | None = None
        #: Set by the subclass once its parameters are known.
        self.optimizer: Adam | _Sgd = _Sgd([], settings.learning_rate)

    def batch_positions(self, request: BatchRequest) -> np.ndarray:
        """The shared positions of ``request``'s rows, derived locally from the seed."""
        if self._epoch_batches is None or self._epoch_batches[0] != request.epoch:
            batches = epoch_batches(
                self.splits.train, self.settings.batch_size, self.settings.seed, request.epoch
            )
            self._epoch_batches = (request.epoch, batches)
        batches = self._epoch_batches[1]
        if not 0 <= request.batch < len(batches):
            raise ProtocolError(
                f"batch: expected 0..{len(batches) - 1} in epoch {request.epoch},"
                f" got {request.batch}"
            )
        return batches[request.batch]

    def _embed_rows(self, positions: np.ndarray) -> np.ndarray:
        assert self.bottom is not None
        chunks = []
        with torch.no_grad():
            for start in range(0, len(positions), _CHUNK):
                rows = torch.from_numpy(positions[start : start + _CHUNK])
                chunks.append(self.bottom(self.features[rows]).numpy())
        width = self.settings.model.embedding_dim
        return np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)

    def _embed_new(self, table: PartyTable) -> np.ndarray:
        """The bottom's embedding of rows this party did not train on (same columns)."""
        if table.name != self.name or table.columns != self.columns:
            raise InputDataError(
                f"party {self.name!r} new rows: expected columns {list(self.columns)},"
                f" got {list(table.columns)} from party {table.name!r}"
            )
        assert self.bottom is not None and self.standardiser is not None
        features = torch.from_numpy(self.standardiser.transform(table.features))
        chunks = []
        with torch.no_grad():
            for start in range(0, table.row_count, _CHUNK):
                chunks.append(self.bottom(features[start : start + _CHUNK]).numpy())
        width = self.settings.model.embedding_dim
        return np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"bottom": self.bottom} if self.bottom is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the party's weights and optimiser state."""
        return copy.deepcopy(
            {
                "modules": {key: module.state_dict() for key, module in self._modules().items()},
                "optimizer": self._optimizer_state(),
            }
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for key, module in self._modules().items():
            module.load_state_dict(state["modules"][key])
        self._load_optimizer_state(state["optimizer"])

    def keep_best(self) -> None:
        """Remember the current weights as the best so far (the label party decides when)."""
        self._best = self.state_dict()

    def restore_best(self) -> None:
        """Return to the weights last kept by :meth:`keep_best` (no-op if none were kept)."""
        if self._best is not None:
            self.load_state_dict(self._best)

    def checkpoint(self) -> dict[str, Any]:
        """Everything this party needs to continue a run after an epoch: its current and
        best weights and optimiser state (a deep copy; a driver writes it to disk)."""
        return {"current": self.state_dict(), "best": copy.deepcopy(self._best)}

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue from what :meth:`checkpoint` returned."""
        self.load_state_dict(checkpoint["current"])
        self._best = copy.deepcopy(checkpoint["best"])

    def _optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


class FeatureParty(_Party):
    """A party with features and no labels: it sends embeddings and receives their gradients."""

    def __init__(self, table: PartyTable, settings: VerticalSettings) -> None:
        if table.labels is not None:
            raise InputDataError(f"party {table.name!r}: a feature party holds no label column")
        if table.features.shape[1] == 0:
            raise InputDataError(f"party {table.name!r}: a feature party needs at least one column")
        super().__init__(table, settings)
        assert self.bottom is not None
        self.optimizer = make_optimizer(self.bottom.parameters(), settings)
        self._pending: tuple[BatchRequest, torch.Tensor] | None = None

    def forward(self, request: BatchRequest) -> Embedding:
        """This party's embedding of the requested batch (the graph is kept for backward)."""
        assert self.bottom is not None
        positions = self.batch_positions(request)
        embedding = self.bottom(self.features[torch.from_numpy(positions)])
        self._pending = (request, embedding)
        values = embedding.detach().numpy().copy()
        return Embedding(self.name, request.epoch, request.batch, values)

    def backward(self, gradient: EmbeddingGradient) -> None:
        """Apply the gradient of this party's embedding of the pending batch, one step."""
        if self._pending is None:
            raise ProtocolError(f"party {self.name!r}: a gradient arrived with no batch pending")
        request, embedding = self._pending
        if (gradient.party, gradient.epoch, gradient.batch) != (
            self.name,
            request.epoch,
            request.batch,
        ):
            raise ProtocolError(
                f"gradient: expected party {self.name!r} epoch {request.epoch} batch"
                f" {request.batch}, got {gradient.party!r} epoch {gradient.epoch}"
                f" batch {gradient.batch}"
            )
        check_matrix("gradient", gradient.values, *embedding.shape)
        self._pending = None
        self.optimizer.zero_grad()
        embedding.backward(torch.from_numpy(gradient.values))  # type: ignore[no-untyped-call]
        self.optimizer.step()

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue from what :meth:`checkpoint` returned (a pending batch is dropped)."""
        super().restore(checkpoint)
        self._pending = None

    def embed(self, split: str) -> SplitEmbedding:
        """This party's embedding of every row of ``split`` (validation or test)."""
        return SplitEmbedding(self.name, split, self._embed_rows(self.splits.positions(split)))

    def embed_new(self, table: PartyTable) -> SplitEmbedding:
        """This party's embedding of new rows to score (aligned by a new ``accord align``;
        the same columns as in training, standardised with the training statistics)."""
        return SplitEmbedding(self.name, PREDICT, self._embed_new(table))


@dataclass(frozen=True)
class StepResult:
    """The label party's answer to one batch: each feature party's gradient, and the loss."""

    gradients: dict[str, EmbeddingGradient]
    loss: float
    rows: int


@dataclass(frozen=True)
class SplitMetrics:
    """Log loss and AUC of the composed model on one split (AUC ``None``: one class only)."""

    split: str
    loss: float
    auc: float | None
    rows: int


class LabelParty(_Party):
    """The party with the labels: its bottom (if it has columns), the top model and the loss.

    ``private_seed`` drives the protection's randomness; it is the label party's alone and
    must not be shared with the feature parties.
    """

    def __init__(
        self,
        table: PartyTable,
        settings: VerticalSettings,
        feature_parties: Sequence[str],
        protection: ProtectionSettings | None = None,
        private_seed: int = 0,
    ) -> None:
        if table.labels is None:
            raise InputDataError(f"party {table.name!r}: the label party needs a label column")
        super().__init__(table, settings)
        self.protection = protection or ProtectionSettings()
        order = party_order(table.name, feature_parties)
        self.feature_parties = order[1:]
        self.parties = order if self.bottom is not None else order[1:]
        if not self.parties:
            raise InputDataError(f"party {table.name!r}: no party holds any feature column")
        self.top: TopModel = build_top(self.parties, settings.model, settings.seed)
        self.labels = torch.from_numpy(table.labels.astype(np.float32))
        private = np.random.default_rng([private_seed, 0x4C414245])
        self.training_labels = self.labels
        if self.protection.kind == "label_dp":
            noisy = randomised_response(
                table.labels.astype(np.float32), self.protection.epsilon, private
            )
            self.training_labels = torch.from_numpy(noisy)
        self._noise = torch.Generator()
        self._noise.manual_seed(int(private.integers(2**62)))
        parameters = [*self.top.parameters()]
        if self.bottom is not None:
            parameters = [*self.bottom.parameters(), *parameters]
        self.optimizer = make_optimizer(parameters, settings)

    def plan_epoch(self, epoch: int) -> list[BatchRequest]:
        """The batches of ``epoch``, in order (every party derives the same rows for each)."""
        count = len(
            epoch_batches(self.splits.train, self.settings.batch_size, self.settings.seed, epoch)
        )
        return [BatchRequest(epoch, index) for index in range(count)]

    def _received(
        self, embeddings: Mapping[str, Embedding | SplitEmbedding], rows: int
    ) -> dict[str, torch.Tensor]:
        if set(embeddings) != set(self.feature_parties):
            raise ProtocolError(
                f"embeddings: expected parties {sorted(self.feature_parties)},"
                f" got {sorted(embeddings)}"
            )
        width = self.settings.model.embedding_dim
        received = {}
        for party, message in embeddings.items():
            if message.party != party:
                raise ProtocolError(
                    f"embedding: filed under {party!r} but sent by {message.party!r}"
                )
            check_matrix(f"embedding from {party!r}", message.values, rows, width)
            received[party] = torch.from_numpy(message.values)
        return received

    def step(self, request: BatchRequest, embeddings: Mapping[str, Embedding]) -> StepResult:
        """One training step on ``request``'s batch; each feature party's gradient returned."""
        positions = self.batch_positions(request)
        for party, message in embeddings.items():
            if (message.epoch, message.batch) != (request.epoch, request.batch):
                raise ProtocolError(
                    f"embedding from {party!r}: expected epoch {request.epoch}"
                    f" batch {request.batch},"
                    f" got epoch {message.epoch} batch {message.batch}"
                )
        leaves = {
            party: tensor.requires_grad_(True)
            for party, tensor in self._received(embeddings, len(positions)).items()
        }
        rows = torch.from_numpy(positions)
        inputs: dict[str, torch.Tensor] = dict(leaves)
        if self.bottom is not None:
            inputs[self.name] = self.bottom(self.features[rows])
        logits = self.top(inputs)
        loss = functional.binary_cross_entropy_with_logits(logits, self.training_labels[rows])
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        gradients = {}
        for party, leaf in leaves.items():
            assert leaf.grad is not None
            gradient = leaf.grad
            if self.protection.kind == "max_norm":
                gradient = max_norm_noise(gradient, self._noise)
            gradients[party] = EmbeddingGradient(
                party, request.epoch, request.batch, gradient.numpy()
            )
        return StepResult(gradients=gradients, loss=float(loss.detach()), rows=len(positions))

    def evaluate(self, split: str, embeddings: Mapping[str, SplitEmbedding]) -> SplitMetrics:
        """Log loss and AUC (true labels) of the composed model on every row of ``split``.

        Under ``label_dp`` the loss is that of the probabilities corrected for the flips
        (:func:`~accord.vertical.protection.debias_probability`), so early stopping judges
        the model against the true labels; the AUC (a ranking) needs no correction.
        """
        positions = self.splits.positions(split)
        for party, message in embeddings.items():
            if message.split != split:
                raise ProtocolError(
                    f"embedding from {party!r}: expected split {split}, got {message.split}"
                )
        received = self._received(embeddings, len(positions))
        own = self._embed_rows(positions) if self.bottom is not None else None
        logits = []
        with torch.no_grad():
            for start in range(0, len(positions), _CHUNK):
                chunk = {party: t[start : start + _CHUNK] for party, t in received.items()}
                if own is not None:
                    chunk[self.name] = torch.from_numpy(own[start : start + _CHUNK])
                logits.append(self.top(chunk).numpy())
        scores = np.concatenate(logits) if logits else np.zeros(0, np.float32)
        labels = self.labels.numpy()[positions]
        if not len(positions):
            loss = float("nan")
        elif self.protection.kind == "label_dp":
            # The model learned P(flipped label = 1 | x) = q + (1 - 2q) P(y = 1 | x): its
            # loss against the true labels is scored on the inverted probability.
            flip = 1.0 - keep_probability(self.protection.epsilon)
            loss = probability_log_loss(debias_probability(sigmoid(scores), flip), labels)
        else:
            loss = log_loss(scores, labels)
        return SplitMetrics(split, loss, binary_auc(scores, labels), len(positions))

    def predict(
        self, table: PartyTable | None, embeddings: Mapping[str, SplitEmbedding]
    ) -> np.ndarray:
        """The probability of label 1 for each new row; only the label party sees it.

        ``table`` holds the label party's columns of the new rows (``None`` when it trained
        without columns; its labels, if any, are ignored); ``embeddings`` are the feature
        parties' :meth:`FeatureParty.embed_new`. Under ``label_dp`` the probability is
        corrected for the flipped training labels.
        """
        rows = next(iter(embeddings.values())).values.shape[0] if embeddings else None
        own: np.ndarray | None = None
        if self.bottom is not None:
            if table is None:
                raise InputDataError(f"party {self.name!r}: new rows need its columns to score")
            own = self._embed_new(table)
            rows = own.shape[0]
        if rows is None:
            raise InputDataError(f"party {self.name!r}: no embeddings of new rows to score")
        for party, message in embeddings.items():
            if message.split != PREDICT:
                raise ProtocolError(
                    f"embedding from {party!r}: expected split {PREDICT}, got {message.split}"
                )
        received = self._received(embeddings, rows)
        with torch.no_grad():
            inputs = dict(received)
            if own is not None:
                inputs[self.name] = torch.from_numpy(own)
            probabilities = sigmoid(self.top(inputs).numpy())
        if self.protection.kind == "label_dp":
            flip = 1.0 - keep_probability(self.protection.epsilon)
            probabilities = debias_probability(probabilities, flip)
        return probabilities

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {**super()._modules(), "top": self.top}

    def checkpoint(self) -> dict[str, Any]:
        """As :meth:`_Party.checkpoint`, with the state of the protection's noise."""
        return {**super().checkpoint(), "noise": self._noise.get_state()}

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        super().restore(checkpoint)
        self._noise.set_state(checkpoint["noise"])
