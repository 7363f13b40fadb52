"""A node's side of a round, without any transport.

:class:`NodeWorker` holds one :class:`accord.fl.Node` (the built-in
:class:`~accord.fl.TabularNode`, or the user's node of ``accord node --app``) and its copy of
the global weights between rounds. A built-in node trains exactly as
:class:`accord.simulation.Simulation` trains the same node (the same class, the same seed
:func:`accord.scenario.node_seed`, the same faulty-node recipe), so a networked run and an
in-process run of the same scenario reach the same metrics.

Everything the server sends is checked before it is applied: dtype float32, shape
``(dim,)``, finite values, the buffers' names, shapes and dtypes, and the SHA-256 digest of
the weights (and buffers) it should produce. An exception from user code fails the round
for this node with the exception's text, never the node process.

A built-in worker made with ``global_standardisation=True`` (``accord node --data`` by
default) holds its samples as read, reports their moments at registration, and trains only
once the server has sent the run's :class:`~accord.data.standardise.Standardisation` (with
the first full weights); it then trains and validates on the standardised samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from accord.aggregation.base import FloatArray
from accord.credentials.naming import check_node_id
from accord.data.faults import NodeFault
from accord.data.standardise import FeatureMoments, Standardisation
from accord.errors import AccordError, InputDataError, ProtocolError
from accord.federation.grid import Evaluation, NodeInfo, RunSpec
from accord.federation.tensors import check_weights, state_digest
from accord.fl.contracts import ROUND, FitResult, Node
from accord.fl.tabular import TabularNode
from accord.rounds import NodeUpdate
from accord.training.weights import WeightLayout, Weights

__all__ = ["NodeFactory", "NodeFault", "NodeWorker", "layout_difference"]

logger = logging.getLogger(__name__)

#: Builds a node's :class:`~accord.fl.Node` once the server's :class:`RunSpec` is known.
NodeFactory = Callable[[RunSpec], Node]


def layout_difference(mine: WeightLayout, theirs: WeightLayout) -> str | None:
    """The first difference between two model layouts in words, or ``None``."""
    mine_by_name = {entry.name: entry for entry in mine.entries}
    theirs_by_name = {entry.name: entry for entry in theirs.entries}
    missing = [name for name in theirs_by_name if name not in mine_by_name]
    extra = [name for name in mine_by_name if name not in theirs_by_name]
    if missing or extra:
        return f"arrays missing here {missing[:5]}, arrays only here {extra[:5]}"
    for name, entry in theirs_by_name.items():
        other = mine_by_name[name]
        if other.shape != entry.shape:
            return f"{name} has shape {list(other.shape)} here, {list(entry.shape)} on the server"
        if other.dtype != entry.dtype:
            return f"{name} has dtype {other.dtype} here, {entry.dtype} on the server"
        if other.trainable != entry.trainable:
            return f"{name} is {'' if other.trainable else 'not '}trained here, unlike the server"
    if [e.name for e in mine.entries] != [e.name for e in theirs.entries]:
        return "the arrays are in another order"
    return None


class NodeWorker:
    """One node: its :class:`~accord.fl.Node`, its copy of the global weights and buffers,
    and their digest.

    Built from a node's features and labels (the built-in tabular node, built from the
    server's model spec at :meth:`configure`), or with :meth:`of_app` from a factory of the
    user's node."""

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
        device: str = "cpu",
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
        self.features: npt.NDArray[np.float32] | None = np.ascontiguousarray(
            features, dtype=np.float32
        )
        self.labels: npt.NDArray[np.int64] | None = np.ascontiguousarray(labels, dtype=np.int64)
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
        self.device = device
        self._factory: NodeFactory | None = None
        self._sample_count = int(labels.shape[0])
        self.spec: RunSpec | None = None
        self.node: Node | None = None
        self.layout: WeightLayout | None = None
        self.weights: FloatArray | None = None
        self.buffers: dict[str, Any] = {}
        self._digest: bytes | None = None

    @classmethod
    def of_app(cls, node_id: str, factory: NodeFactory) -> NodeWorker:
        """A worker whose node the user's ``factory`` builds from the server's spec."""
        worker = cls.__new__(cls)
        problem = check_node_id(node_id)
        if problem is not None:
            raise InputDataError(problem)
        worker.node_id = node_id
        worker.features, worker.labels = None, None
        worker.seed, worker.validation, worker.fault, worker.device = 0, None, None, "cpu"
        worker._factory = factory
        worker.raw, worker.standardisation = None, None
        worker._sample_count = 0  # known once the node is built
        worker.spec, worker.node, worker.layout = None, None, None
        worker.weights, worker.buffers, worker._digest = None, {}, None
        return worker

    @classmethod
    def of_node(cls, node_id: str, node: Node) -> NodeWorker:
        """A worker around a node already built (the in-process drivers: every run spec
        gets this same node)."""

        def factory(spec: RunSpec) -> Node:
            del spec
            return node

        return cls.of_app(node_id, factory)

    def info(self) -> NodeInfo:
        if self.labels is None:  # a user app's node: what it says about itself
            node = self.node
            return NodeInfo(
                node_id=self.node_id,
                sample_count=_user_int(node, "sample_count"),
                n_features=0,
                n_classes=0,
                validation_sample_count=_user_int(node, "validation_sample_count"),
            )
        label_max = int(self.labels.max())
        if self.validation is not None:
            label_max = max(label_max, int(self.validation[1].max(initial=0)))
        assert self.features is not None
        return NodeInfo(
            node_id=self.node_id,
            sample_count=self._sample_count,
            n_features=int(self.features.shape[1]),
            n_classes=label_max + 1,
            validation_sample_count=0 if self.validation is None else len(self.validation[1]),
            feature_moments=None if self.raw is None else FeatureMoments.of(self.raw[0]),
        )

    def _build(self, spec: RunSpec) -> Node:
        if self._factory is not None:
            try:
                node = self._factory(spec)
            except AccordError:
                raise
            except Exception as error:  # user code: report, do not crash the node
                raise InputDataError(
                    f"the node factory raised {type(error).__name__}: {error}"
                ) from error
            for method in ("layout", "fit", "evaluate"):
                if not callable(getattr(node, method, None)):
                    raise InputDataError(
                        f"the node factory returned {type(node).__name__}, which has no "
                        f"{method}() (see accord.fl.Node)"
                    )
            return node
        assert self.features is not None and self.labels is not None
        if spec.model is None:
            raise ProtocolError(
                "the server runs a user app (accord server --app); start this node with --app too"
            )
        if spec.n_features != self.features.shape[1]:
            raise ProtocolError(
                f"the server's model takes {spec.n_features} features; this node has "
                f"{self.features.shape[1]}"
            )
        # Checked before the model is built: a Welcome naming huge layers must not make
        # this node allocate them.
        widths = [
            spec.n_features,
            *(spec.model.hidden if spec.model.kind == "mlp" else ()),
            spec.n_classes,
        ]
        built = sum(inputs * outputs + outputs for inputs, outputs in pairwise(widths))
        if built != spec.dim:
            raise ProtocolError(
                f"the server's model has {spec.dim} weights; its layers {widths} have {built}"
            )
        return TabularNode(
            self.features,
            self.labels,
            spec=spec.model,
            n_classes=spec.n_classes,
            settings=spec.local,
            seed=self.seed,
            model_seed=self.seed,
            fault=self.fault,
            validation=self.validation,
            device=self.device,
        )

    def configure(self, spec: RunSpec) -> NodeInfo:
        """Build the node for the server's run (keep it when the run is unchanged: a
        reconnection) and return what the server admits it by (sample count, layout)."""
        if self.spec is not None and replace(self.spec, run_id=spec.run_id) == spec:
            self.spec = spec
            return self.info()
        node = self._build(spec)
        try:
            layout = node.layout()
        except AccordError:
            raise
        except Exception as error:  # user code
            raise InputDataError(f"layout() raised {type(error).__name__}: {error}") from error
        if spec.layout is not None:
            difference = layout_difference(layout, spec.layout)
            if difference is not None:
                raise ProtocolError(f"this node's model differs from the server's: {difference}")
        if layout.dim != spec.dim:
            raise ProtocolError(
                f"the server's model has {spec.dim} weights; built here it has {layout.dim}"
            )
        self.spec, self.node, self.layout = spec, node, layout
        self.weights, self.buffers, self._digest = None, {}, None
        return self.info()

    def _ready(self) -> tuple[RunSpec, Node, WeightLayout]:
        if self.spec is None or self.node is None or self.layout is None:
            raise ProtocolError("a round started before the node was configured")
        return self.spec, self.node, self.layout

    def holds(self, weights_sha256: bytes) -> bool:
        return self._digest is not None and self._digest == weights_sha256

    def _take_buffers(
        self, layout: WeightLayout, buffers: Weights | None, what: str
    ) -> dict[str, Any]:
        if not layout.buffers:
            return {}
        if buffers is None:
            raise ProtocolError(f"{what}: the model has buffers; none were sent")
        try:
            layout.check(buffers, what, buffers_only=True)
        except AccordError as error:
            raise ProtocolError(str(error)) from error
        return {name: np.array(array) for name, array in buffers.items()}

    def start_round(
        self,
        round_index: int,
        weights: FloatArray | None,
        weights_sha256: bytes,
        buffers: Weights | None = None,
        standardisation: Standardisation | None = None,
    ) -> FloatArray | NodeUpdate:
        """Take ``w_t`` (or check the local copy against its digest) and the run's
        standardisation, if this node waits for one; return ``g_i`` (with the node's buffers
        after training, for a model that has buffers)."""
        self._ready()
        if self.raw is not None:
            self._standardise(standardisation)
        spec, node, layout = self._ready()
        if weights is not None:
            weights = check_weights(weights, spec.dim, "global weights")
            taken = self._take_buffers(layout, buffers, "global buffers")
            digest = state_digest(weights, taken)
            if digest != weights_sha256:
                self.weights, self._digest = None, None
                raise ProtocolError("global weights: digest does not match the weights sent")
            self.weights, self.buffers, self._digest = (
                np.array(weights, dtype=np.float32),
                taken,
                digest,
            )
        elif not self.holds(weights_sha256):
            self.weights, self._digest = None, None
            raise ProtocolError("the local copy of the global weights is out of date")
        assert self.weights is not None
        if isinstance(node, TabularNode):  # the built-in node: flat in, flat out
            return node.first_gradient(self.weights, round_index)
        config = {**spec.config, ROUND: round_index}
        try:
            result = node.fit(layout.join(self.weights, self.buffers), config)
            return _update_of(result, layout, self.weights)
        except AccordError:
            raise
        except Exception as error:  # user code, or what it returned: fail the round only
            raise InputDataError(f"fit raised {type(error).__name__}: {error}") from error

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
        self.node = self._build(self.spec)  # the same model, on the standardised samples
        logger.info("node %s: data standardised with the run's global statistics", self.node_id)

    def apply_second_gradient(
        self,
        round_index: int,
        second_gradient: FloatArray,
        server_learning_rate: float,
        next_weights_sha256: bytes,
        next_buffers: Weights | None = None,
    ) -> None:
        """``w_{t+1} = w_t − η_server · G`` on the local copy, checked against the digest."""
        spec, _, layout = self._ready()
        if self.weights is None:
            raise ProtocolError("no copy of the global weights to apply the second gradient to")
        gradient = check_weights(second_gradient, spec.dim, "second gradient")
        updated = (self.weights - np.float32(server_learning_rate) * gradient).astype(np.float32)
        buffers = self._take_buffers(layout, next_buffers, "next buffers")
        digest = state_digest(updated, buffers)
        if digest != next_weights_sha256:
            self.weights, self._digest = None, None
            raise ProtocolError(
                f"round {round_index}: the weights after the second gradient differ from the "
                "server's"
            )
        self.weights, self.buffers, self._digest = updated, buffers, digest

    def evaluate(self, round_index: int, weights_sha256: bytes) -> Evaluation:
        """Accuracy and loss of the local copy of ``w_{t+1}`` on the validation split."""
        spec, node, layout = self._ready()
        if self.weights is None or not self.holds(weights_sha256):
            raise ProtocolError(f"round {round_index}: the weights to evaluate are not held here")
        try:
            if isinstance(node, TabularNode):
                result = node.evaluate_flat(self.weights)
            else:
                result = node.evaluate(
                    layout.join(self.weights, self.buffers), {**spec.config, ROUND: round_index}
                )
        except AccordError as error:
            raise ProtocolError(str(error)) from error
        except Exception as error:  # user code
            raise ProtocolError(f"evaluate raised {type(error).__name__}: {error}") from error
        return Evaluation(
            accuracy=float(result.accuracy),
            loss=float(result.loss),
            sample_count=int(result.sample_count),
        )


def _update_of(
    result: object, layout: WeightLayout, weights: FloatArray
) -> FloatArray | NodeUpdate:
    """The flat first gradient (and buffers) of a node's :class:`FitResult`."""
    if not isinstance(result, FitResult):
        raise InputDataError(f"fit returned {type(result).__name__}; expected accord.fl.FitResult")
    try:
        if result.weights is not None:
            layout.check(result.weights, "fit's weights")
            gradient = weights - layout.flatten(result.weights)
            buffers = layout.buffers_of(result.weights)
        else:
            assert result.first_gradient is not None
            trainable = WeightLayout(layout.trainable)
            trainable.check(result.first_gradient, "fit's first gradient")
            gradient = layout.flatten(result.first_gradient)
            buffers = dict(result.buffers or {})
            if layout.buffers:
                layout.check(buffers, "fit's buffers", buffers_only=True)
    except AccordError as error:
        raise InputDataError(str(error)) from error
    gradient = np.asarray(gradient, dtype=np.float32)
    if not layout.buffers:
        return gradient
    return NodeUpdate(first_gradient=gradient, buffers=buffers)


def _user_int(node: object, name: str) -> int:
    """A count a user's node reports (0 before it is built, or when it has none); a
    failing or malformed one is an :class:`InputDataError` naming it."""
    if node is None:
        return 0
    try:
        return int(getattr(node, name, 0))
    except Exception as error:  # user code
        raise InputDataError(f"the node's {name} raised {type(error).__name__}: {error}") from error
