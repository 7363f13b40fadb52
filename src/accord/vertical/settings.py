"""Settings of a vertical (split-learning) run: one frozen dataclass per component.

All parties of a run must hold the same :class:`VerticalSettings` (the batches, the splits
and every party's initial weights are derived from it); :class:`ProtectionSettings` is the
label party's alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from accord._validation import require_choice, require_int, require_number
from accord.errors import ConfigurationError

__all__ = [
    "BOTTOM_KINDS",
    "OPTIMIZERS",
    "PROTECTIONS",
    "TOP_KINDS",
    "ModelSettings",
    "ProtectionSettings",
    "VerticalSettings",
]

#: ``linear``: one affine map of the standardised columns to the embedding.
#: ``mlp``: ``hidden`` ReLU layers, then an affine map to the embedding.
BOTTOM_KINDS = ("linear", "mlp")
#: ``sum``: the parties' embeddings are added, then one affine map gives the logit (with
#: linear bottoms this is vertical logistic regression). ``concat``: the embeddings are
#: concatenated and go through ``top_hidden`` ReLU layers, then an affine map to the logit.
TOP_KINDS = ("sum", "concat")
OPTIMIZERS = ("sgd", "adam")
#: ``none``: the exact embedding gradients are returned. ``max_norm``: Li et al.'s heuristic
#: (noise that lifts every example's gradient to the batch's largest norm in expectation; no
#: formal guarantee). ``label_dp``: randomised response on the training labels, once per run
#: (``epsilon``-label differential privacy of each training row's label).
PROTECTIONS = ("none", "max_norm", "label_dp")


@dataclass(frozen=True)
class ModelSettings:
    """The composed network: every party's bottom model and the label party's top model."""

    #: ``linear`` or ``mlp`` (see :data:`BOTTOM_KINDS`); the same kind for every party.
    bottom: str = "linear"
    #: Hidden widths of an ``mlp`` bottom (ignored by ``linear``).
    bottom_hidden: tuple[int, ...] = (32,)
    #: Width of each party's embedding.
    embedding_dim: int = 16
    #: ``sum`` or ``concat`` (see :data:`TOP_KINDS`).
    top: str = "sum"
    #: Hidden widths of a ``concat`` top (ignored by ``sum``).
    top_hidden: tuple[int, ...] = (16,)

    def __post_init__(self) -> None:
        require_choice("bottom", self.bottom, BOTTOM_KINDS)
        require_choice("top", self.top, TOP_KINDS)
        require_int("embedding_dim", self.embedding_dim, minimum=1)
        for field, widths in (
            ("bottom_hidden", self.bottom_hidden),
            ("top_hidden", self.top_hidden),
        ):
            if not isinstance(widths, tuple):
                raise ConfigurationError(f"{field}: expected a tuple of widths, got {widths!r}")
            for width in widths:
                require_int(field, width, minimum=1)
        if self.bottom == "mlp" and not self.bottom_hidden:
            raise ConfigurationError(
                "bottom_hidden: an mlp bottom needs at least one width, got ()"
            )


@dataclass(frozen=True)
class VerticalSettings:
    """What every party of a vertical run agrees on: model, batches, splits, training."""

    model: ModelSettings = ModelSettings()
    #: Seed shared by all parties: splits, per-epoch batch order, initial weights.
    seed: int = 0
    #: Rows per batch (the last batch of an epoch may be smaller).
    batch_size: int = 1024
    #: Maximum number of epochs.
    epochs: int = 10
    #: Stop after this many epochs without a lower validation loss (``None``: never).
    patience: int | None = 3
    #: ``sgd`` or ``adam`` (``accord.optim.Adam``), the same for every party.
    optimizer: str = "adam"
    learning_rate: float = 0.01
    #: Share of the aligned rows held out for validation (early stopping) and for the test.
    validation_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelSettings):
            raise ConfigurationError(f"model: expected ModelSettings, got {self.model!r}")
        require_int("seed", self.seed, minimum=0)
        require_int("batch_size", self.batch_size, minimum=1)
        require_int("epochs", self.epochs, minimum=1)
        if self.patience is not None:
            require_int("patience", self.patience, minimum=1)
        require_choice("optimizer", self.optimizer, OPTIMIZERS)
        require_number("learning_rate", self.learning_rate, minimum=0.0, exclusive_minimum=True)
        require_number("validation_fraction", self.validation_fraction, minimum=0.0, maximum=0.5)
        require_number("test_fraction", self.test_fraction, minimum=0.0, maximum=0.5)
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ConfigurationError(
                "validation_fraction + test_fraction: expected < 0.9 so rows remain for training,"
                f" got {self.validation_fraction + self.test_fraction!r}"
            )


@dataclass(frozen=True)
class ProtectionSettings:
    """The label party's protection of the gradients it returns (see :data:`PROTECTIONS`)."""

    kind: str = "none"
    #: Privacy parameter of ``label_dp``: each training label is kept with probability
    #: ``e^ε / (1 + e^ε)`` and flipped otherwise (ignored by the other kinds).
    epsilon: float = 1.0

    def __post_init__(self) -> None:
        require_choice("kind", self.kind, PROTECTIONS)
        require_number("epsilon", self.epsilon, minimum=0.0, exclusive_minimum=True)
