"""The contracts user code implements: a node's :class:`Node` and the server's
:class:`ServerApp`.

A node trains the global weights on its own data and reports the result; the server
provides the initial weights and scores candidate weights on its held-out data (the
policies' credit and reward need it). Weights are named arrays (:data:`Weights`: trainable
parameters *and* buffers, any dtype, as in a PyTorch ``state_dict``); the policies see
only the flat float32 vector of the trainable parameters, and buffers are combined by the
rule in :mod:`accord.training.weights`.

:class:`accord.fl.TorchNode` and :class:`accord.fl.TorchServerApp` implement both around
any ``nn.Module`` and ``DataLoader``; the built-in tabular nodes
(:class:`accord.fl.TabularNode`) are one more implementation of :class:`Node`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from accord.aggregation.base import FloatArray, ValidationScores
from accord.errors import ConfigurationError
from accord.training.weights import WeightLayout, Weights

__all__ = [
    "ROUND",
    "EvalResult",
    "FitResult",
    "Node",
    "NodeAppFactory",
    "Scorer",
    "ServerApp",
    "ServerAppFactory",
]

#: The key of ``config`` that carries the round's index (0-based) in every ``fit`` call.
ROUND = "round"


@dataclass(frozen=True)
class FitResult:
    """What a node's ``fit`` returns: its trained weights, *or* its first gradient.

    - ``weights``: the node's weights after local training (every array of the model,
      buffers included); the first gradient is then ``w_t − w_i`` over the trainable arrays.
    - ``first_gradient``: ``w_t − w_i`` by trainable parameter name, with the node's
      ``buffers`` after training (required when the model has buffers).

    ``sample_count`` is the number of samples trained on (for the node's own bookkeeping:
    the policies weigh a node by the ``Node.sample_count`` it registered with);
    ``metrics`` anything the node wants logged (loss, seconds, ...)."""

    sample_count: int
    weights: Weights | None = None
    first_gradient: Weights | None = None
    buffers: Weights | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.weights is None) == (self.first_gradient is None):
            raise ConfigurationError("FitResult: give exactly one of weights and first_gradient")
        if self.weights is not None and self.buffers is not None:
            raise ConfigurationError("FitResult: buffers go with first_gradient, not with weights")
        if not isinstance(self.sample_count, int) or self.sample_count < 0:
            raise ConfigurationError(
                f"FitResult.sample_count: expected an int >= 0, got {self.sample_count!r}"
            )


@dataclass(frozen=True)
class EvalResult:
    """What a node's ``evaluate`` returns: loss and accuracy on ``sample_count`` samples."""

    loss: float
    accuracy: float
    sample_count: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Node(Protocol):
    """A node's user code.

    ``sample_count`` (training samples) is the node's weight prior in the policies.
    ``layout()`` describes its model (names, shapes, dtypes, which arrays are trained); the
    server refuses a node whose layout differs from its own. ``fit`` trains from the given
    global weights (``config[ROUND]`` is the round's index) and ``evaluate`` scores weights
    on the node's own validation data. Neither may keep a reference to ``weights``."""

    @property
    def sample_count(self) -> int: ...

    def layout(self) -> WeightLayout: ...

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> FitResult: ...

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> EvalResult: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores a (K, dim) stack of flat trainable vectors on held-out data with the round's
    buffers (a :data:`~accord.aggregation.base.ValidationFn` that also takes buffers)."""

    def __call__(self, weights: FloatArray) -> ValidationScores: ...

    def set_buffers(self, buffers: Weights) -> None: ...


@runtime_checkable
class ServerApp(Protocol):
    """The server's user code: the model's layout and initial weights, and the scoring of
    candidate weights on the server's validation data (``None``: the run can only use
    policies that need no server data, such as FedAvg) and test data (for reporting)."""

    def layout(self) -> WeightLayout: ...

    def initial_weights(self) -> Weights: ...

    def validation(self) -> Scorer | None: ...

    def test(self) -> Scorer | None: ...


#: ``accord node --app MODULE:FACTORY``: ``FACTORY(node_id, config)`` returns the node's
#: :class:`Node`; ``config`` is the server's ``--app-config`` values updated with the node's
#: own (and ``device``). Called once the node has registered, so it sees the run's values.
NodeAppFactory = Callable[[str, Mapping[str, Any]], Node]

#: ``accord server --app MODULE:FACTORY``: ``FACTORY(config)`` returns the run's
#: :class:`ServerApp`; ``config`` is the ``--app-config`` values (and ``device``).
ServerAppFactory = Callable[[Mapping[str, Any]], ServerApp]
