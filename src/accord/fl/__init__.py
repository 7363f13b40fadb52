"""Accord's public training API: what user code implements, and the built-in pieces.

A node implements :class:`Node` (``fit`` and ``evaluate`` on named weights); the server
implements :class:`ServerApp` (the model's layout and initial weights, and the scoring of
candidate weights on its held-out data). :class:`TorchNode` and :class:`TorchServerApp`
do both around any PyTorch model; :class:`TabularNode` is the built-in tabular node.
Run them in this process with :func:`accord.simulation.run_app`, over gRPC with
``accord server --app`` and ``accord node --app``, or from Flower with
:mod:`accord.flower`. See ``docs/api.md``.
"""

from __future__ import annotations

from accord.fl.contracts import (
    ROUND,
    EvalResult,
    FitResult,
    Node,
    NodeAppFactory,
    Scorer,
    ServerApp,
    ServerAppFactory,
)
from accord.fl.tabular import TabularNode
from accord.fl.torch_app import HeldOut, TorchNode, TorchServerApp
from accord.training.weights import (
    WeightEntry,
    WeightLayout,
    Weights,
    combine_buffers,
    load_module_weights,
    module_weights,
)

__all__ = [
    "ROUND",
    "EvalResult",
    "FitResult",
    "HeldOut",
    "Node",
    "NodeAppFactory",
    "Scorer",
    "ServerApp",
    "ServerAppFactory",
    "TabularNode",
    "TorchNode",
    "TorchServerApp",
    "WeightEntry",
    "WeightLayout",
    "Weights",
    "combine_buffers",
    "load_module_weights",
    "module_weights",
]
