"""A node's side of a round, without any transport.

:class:`NodeWorker` holds the node's samples and its model between rounds, and computes the
first gradient exactly as :class:`accord.simulation.Simulation` does for the same node (the
same :class:`~accord.training.local.LocalTrainer`, the same seed
:func:`accord.simulation.driver.node_seed`, the same faulty-node recipe: the one function
:func:`accord.data.faults.node_first_gradient`, per round), so a networked
run and an in-process run of the same scenario reach the same metrics.

Everything the server sends is checked before it is applied: dtype float32, shape
``(dim,)``, finite values, and the SHA-256 digest of the weights it should produce.

A worker made with ``global_standardisation=True`` (``accord node --data`` by default)
holds its samples as read, reports their moments at registration, and trains only once the
server has sent the run's :class:`~accord.data.standardise.Standardisation` (with the first
full weights); it then trains and validates on the standardised samples.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from accord.aggregation.base import FloatArray, ValidationFn
from accord.data.faults import NodeFault, flip_labels, node_first_gradient
from accord.data.standardise import FeatureMoments, Standardisation
from accord.errors import InputDataError, ProtocolError
from accord.federation.grid import Evaluation, NodeInfo, RunSpec
from accord.federation.naming import check_node_id
from accord.federation.tensors import check_weights, weights_digest
from accord.training.evaluation import make_validation_fn
from accord.training.local import LocalTrainer
from accord.training.models import build_model

__all__ = ["NodeFault", "NodeWorker"]

logger = logging.getLogger(__name__)


class NodeWorker:
    """One node: its samples, its model copy and the digest of the global weights it holds."""

    def __init__(
        self,
        node_id: str,
        features: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        *,
        seed: int,
        validation: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None,
        fault: NodeFault | None = None,
        global_standardisation: bool = False,
    ) -> None:
        problem = check_node_id(node_id)
        if problem is not None:
            raise InputDataError(problem)
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise InputDataError(
                f"node data: expected features (n, d) and labels (n,), got {features.shape} "
                f"and {labels.shape}"
            )
        if features.shape[0] == 0:
            raise InputDataError("node data: a node needs at least one training sample")
        self.node_id = node_id
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.seed = seed
        self.validation = validation
        self.fault = fault
        #: The samples as given, when the run's standardisation is still to be applied.
        self.raw: (
            tuple[
                npt.NDArray[np.float32],
                tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None,
            ]
            | None
        ) = (self.features, validation) if global_standardisation else None
        self.standardisation: Standardisation | None = None
        self.spec: RunSpec | None = None
        self.trainer: LocalTrainer | None = None
        self.flipped_trainer: LocalTrainer | None = None  # a label flipper's faulty rounds
        self._validate: ValidationFn | None = None
        self.weights: FloatArray | None = None
        self._digest: bytes | None = None

    def info(self) -> NodeInfo:
        label_max = int(self.labels.max())
        if self.validation is not None:
            label_max = max(label_max, int(self.validation[1].max(initial=0)))
        return NodeInfo(
            node_id=self.node_id,
            sample_count=int(self.labels.shape[0]),
            n_features=int(self.features.shape[1]),
            n_classes=label_max + 1,
            validation_sample_count=0 if self.validation is None else len(self.validation[1]),
            feature_moments=None if self.raw is None else FeatureMoments.of(self.raw[0]),
        )

    def configure(self, spec: RunSpec) -> None:
        """Build the model the server asks for; keep model and weights when it is unchanged
        (a reconnection to the same run)."""
        if spec.n_features != self.features.shape[1]:
            raise ProtocolError(
                f"the server's model takes {spec.n_features} features; this node has "
                f"{self.features.shape[1]}"
            )
        if self.spec is not None and replace(self.spec, run_id=spec.run_id) == spec:
            self.spec = spec
            return
        self._build(spec)

    def _build(self, spec: RunSpec) -> None:
        model = build_model(spec.model, spec.n_features, spec.n_classes, self.seed)
        trainer = LocalTrainer(model, self.features, self.labels, spec.local, self.seed)
        if trainer.flat.dim != spec.dim:
            raise ProtocolError(
                f"the server's model has {spec.dim} weights; built here it has {trainer.flat.dim}"
            )
        self.spec, self.trainer = spec, trainer
        self.flipped_trainer = None
        if self.fault is not None and self.fault.spec.corrupts_labels:
            self.flipped_trainer = LocalTrainer(
                build_model(spec.model, spec.n_features, spec.n_classes, self.seed),
                self.features,
                flip_labels(self.labels, spec.n_classes),
                spec.local,
                self.seed,
            )
        self._validate = (
            None
            if self.validation is None
            else make_validation_fn(trainer.flat, self.validation[0], self.validation[1])
        )
        self.weights, self._digest = None, None

    def _ready(self) -> tuple[RunSpec, LocalTrainer]:
        if self.spec is None or self.trainer is None:
            raise ProtocolError("a round started before the node was configured")
        return self.spec, self.trainer

    def holds(self, weights_sha256: bytes) -> bool:
        return self._digest is not None and self._digest == weights_sha256

    def start_round(
        self,
        round_index: int,
        weights: FloatArray | None,
        weights_sha256: bytes,
        standardisation: Standardisation | None = None,
    ) -> FloatArray:
        """Take ``w_t`` (or check the local copy against its digest) and the run's
        standardisation, if this node waits for one; return ``g_i``."""
        self._ready()
        if self.raw is not None:
            self._standardise(standardisation)
        spec, trainer = self._ready()
        if weights is not None:
            weights = check_weights(weights, spec.dim, "global weights")
            digest = weights_digest(weights)
            if digest != weights_sha256:
                self.weights, self._digest = None, None
                raise ProtocolError("global weights: digest does not match the weights sent")
            self.weights, self._digest = np.array(weights, dtype=np.float32), digest
        elif not self.holds(weights_sha256):
            self.weights, self._digest = None, None
            raise ProtocolError("the local copy of the global weights is out of date")
        assert self.weights is not None
        return self._first_gradient(trainer, self.weights, round_index)

    def _standardise(self, standardisation: Standardisation | None) -> None:
        """Apply the run's transform to the samples as given (once; again only if the
        server sends a different one), or refuse to train without one."""
        assert self.raw is not None and self.spec is not None
        if standardisation is None:
            if self.standardisation is None:
                raise ProtocolError(
                    "this node standardises its data with the run's global statistics, and "
                    "the server sent none (start the node with --standardise own or off to "
                    "train on data the server does not standardise)"
                )
            return
        if self.standardisation is not None and (
            np.array_equal(standardisation.mean, self.standardisation.mean)
            and np.array_equal(standardisation.scale, self.standardisation.scale)
        ):
            return
        if standardisation.n_features != self.raw[0].shape[1]:
            raise ProtocolError(
                f"the server's standardisation covers {standardisation.n_features} features; "
                f"this node has {self.raw[0].shape[1]}"
            )
        features, validation = self.raw
        self.features = standardisation.apply(features)
        if validation is not None:
            self.validation = (standardisation.apply(validation[0]), validation[1])
        self.standardisation = standardisation
        self._build(self.spec)
        logger.info("node %s: data standardised with the run's global statistics", self.node_id)

    def _first_gradient(
        self, trainer: LocalTrainer, weights: FloatArray, round_index: int
    ) -> FloatArray:
        # The one recipe, as Simulation.first_gradients calls it.
        def train(flipped: bool) -> FloatArray:
            chosen = self.flipped_trainer if flipped else trainer
            assert chosen is not None  # configure() built it for a label flipper
            return chosen.first_gradient(weights, round_index)

        return node_first_gradient(self.fault, round_index, train, int(weights.shape[0]))

    def apply_second_gradient(
        self,
        round_index: int,
        second_gradient: FloatArray,
        server_learning_rate: float,
        next_weights_sha256: bytes,
    ) -> None:
        """``w_{t+1} = w_t − η_server · G`` on the local copy, checked against the digest."""
        spec, trainer = self._ready()
        if self.weights is None:
            raise ProtocolError("no copy of the global weights to apply the second gradient to")
        gradient = check_weights(second_gradient, spec.dim, "second gradient")
        updated = trainer.apply_second_gradient(self.weights, gradient, server_learning_rate)
        digest = weights_digest(updated)
        if digest != next_weights_sha256:
            self.weights, self._digest = None, None
            raise ProtocolError(
                f"round {round_index}: the weights after the second gradient differ from the "
                "server's"
            )
        self.weights, self._digest = updated, digest

    def evaluate(self, round_index: int, weights_sha256: bytes) -> Evaluation:
        """Accuracy and loss of the local copy of ``w_{t+1}`` on the validation split."""
        self._ready()
        if self._validate is None or self.validation is None:
            raise ProtocolError("this node has no validation split")
        if self.weights is None or not self.holds(weights_sha256):
            raise ProtocolError(f"round {round_index}: the weights to evaluate are not held here")
        scores = self._validate(self.weights[None, :])
        return Evaluation(
            accuracy=float(scores.accuracies[0]),
            loss=float(scores.losses[0]),
            sample_count=len(self.validation[1]),
        )
