"""The built-in tabular node: one implementation of :class:`accord.fl.Node`.

It trains the built-in MLP or logistic model (:func:`accord.training.models.build_model`)
on a node's feature matrix with :class:`~accord.training.local.LocalTrainer`, and follows
the scenario's faulty-node recipe (:func:`accord.data.faults.node_first_gradient`) in the
rounds where the node is faulty. The in-process simulation and the networked node both
train through this class, so a node's logic is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from accord.aggregation.base import FloatArray
from accord.data.faults import NodeFault, flip_labels, labels_trained_on, node_first_gradient
from accord.errors import ConfigurationError, InputDataError
from accord.fl.contracts import ROUND, EvalResult, FitResult
from accord.training.evaluation import make_validation_fn
from accord.training.local import LocalTrainer, LocalTrainingSettings
from accord.training.models import FlatModel, ModelSpec, build_model
from accord.training.weights import WeightLayout, Weights

__all__ = ["TabularNode"]


class TabularNode:
    """A node of a built-in scenario or of ``accord node --data``: features ``(n, d)``,
    integer labels ``(n,)``, the model ``spec`` for ``n_classes`` classes, local training
    ``settings``, the node's ``seed`` and, for a faulty node, its ``fault``; it trains on
    ``device`` (``cpu`` or ``cuda[:k]``)."""

    def __init__(
        self,
        features: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        *,
        spec: ModelSpec,
        n_classes: int,
        settings: LocalTrainingSettings,
        seed: int,
        model_seed: int,
        fault: NodeFault | None = None,
        validation: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None,
        device: str = "cpu",
    ) -> None:
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise InputDataError(
                f"node data: expected features (n, d) and labels (n,), got {features.shape} "
                f"and {labels.shape}"
            )
        if int(labels.max(initial=0)) >= n_classes:
            raise ConfigurationError(
                f"node data: label {int(labels.max())} is outside the model's {n_classes} classes"
            )
        n_features = int(features.shape[1])
        self.fault = fault
        self.trainer = LocalTrainer(
            build_model(spec, n_features, n_classes, model_seed),
            features,
            labels,
            settings,
            seed,
            device,
        )
        self.flipped_trainer: LocalTrainer | None = None
        if fault is not None and fault.spec.corrupts_labels:
            self.flipped_trainer = LocalTrainer(
                build_model(spec, n_features, n_classes, model_seed),
                features,
                flip_labels(labels, n_classes),
                settings,
                seed,
                device,
            )
        self._layout = WeightLayout.of_module(self.trainer.flat.module)
        self.validation = validation
        self._validate = (
            None
            if validation is None
            else make_validation_fn(FlatModel(self.trainer.flat.module), *validation)
        )

    @property
    def sample_count(self) -> int:
        return self.trainer.sample_count

    def layout(self) -> WeightLayout:
        return self._layout

    def first_gradient(self, weights: FloatArray, round_index: int) -> FloatArray:
        """The flat first gradient of round ``round_index`` from flat global weights,
        faulty or not (the drivers' fast path; :meth:`fit` wraps it)."""

        def train(flipped: bool) -> FloatArray:
            chosen = self.flipped_trainer if flipped else self.trainer
            assert chosen is not None  # built in __init__ for a label flipper
            return chosen.first_gradient(weights, round_index)

        return node_first_gradient(self.fault, round_index, train, int(weights.shape[0]))

    def trainers(self) -> tuple[LocalTrainer, ...]:
        """The node's trainers: on its labels and, for a label flipper, on flipped ones."""
        if self.flipped_trainer is None:
            return (self.trainer,)
        return (self.trainer, self.flipped_trainer)

    def round_trainer(self, round_index: int) -> LocalTrainer | None:
        """The trainer :meth:`first_gradient` trains with in round ``round_index`` (``None``:
        it sends zeros without training), for a driver that trains the round's nodes as one
        batch (:class:`accord.training.batched.NodeBatch`) and hands each trainer its result
        (:meth:`~accord.training.local.LocalTrainer.provide`)."""
        flipped = labels_trained_on(self.fault, round_index)
        if flipped is None:
            return None
        return self.flipped_trainer if flipped else self.trainer

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> FitResult:
        flat = self._layout.flatten(weights)
        gradient = self.first_gradient(flat, int(config.get(ROUND, 0)))
        return FitResult(
            sample_count=self.sample_count,
            first_gradient=self._layout.unflatten(gradient),
            buffers={},
        )

    def evaluate_flat(self, weights: FloatArray) -> EvalResult:
        if self._validate is None or self.validation is None:
            raise ConfigurationError("this node has no validation split")
        scores = self._validate(weights[None, :])
        return EvalResult(
            loss=float(scores.losses[0]),
            accuracy=float(scores.accuracies[0]),
            sample_count=len(self.validation[1]),
        )

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult:
        return self.evaluate_flat(self._layout.flatten(weights))
