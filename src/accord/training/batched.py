"""Local training of many nodes at once: the vectorised form of
:meth:`accord.training.local.LocalTrainer.first_gradient`.

Nodes whose models share an architecture train as one stack of parameters: the forward
pass is :func:`torch.func.functional_call` under :func:`torch.vmap` over the stacked
parameters (a grouped matmul for the built-in MLP), one backward pass gives every node's
gradient, and :func:`accord.training.local.sgd_step` updates the stack in place.

Each node visits exactly the batches of :func:`accord.training.local.batch_schedule` (its
seed, the round, its own sample count), so the result is the loop's to float rounding:

- A node's last, smaller batch is padded to the batch size with rows of weight 0, and its
  real rows weigh ``1 / (rows in the batch)``, the loop's mean.
- Nodes with fewer steps than others finish early: the nodes are sorted by their step
  count, so the nodes still training at a step are a prefix of the stack, and the finished
  ones are left as they are (momentum included).

Only models made of stateless, deterministic layers without buffers can be stacked
(:data:`STACKABLE_LAYERS`: the built-in MLP and logistic models, and CNNs of convolutions,
pooling and linear layers); :func:`stacking_problem` says why a group cannot. The stack is
cut into chunks of at most ``max_floats`` parameters, which bounds its memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torch import nn
from torch.func import functional_call

from accord.errors import ConfigurationError
from accord.training.local import LocalTrainer, batch_schedule, sgd_step
from accord.types import FloatArray

__all__ = ["DEFAULT_MAX_FLOATS", "STACKABLE_LAYERS", "NodeBatch", "stacking_problem"]

#: Parameters (floats) of one chunk of the stack: 64M floats, 256 MB per copy (the stack,
#: its gradients and momentum buffers are about three copies).
DEFAULT_MAX_FLOATS = 1 << 26

#: Layer types a stacked model may contain: no buffers, no randomness, no state.
STACKABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Identity,
)


def stacking_problem(trainers: Sequence[LocalTrainer]) -> str | None:
    """Why these trainers cannot train as one stack, or ``None`` when they can: the same
    architecture of :data:`STACKABLE_LAYERS`, the same local training settings, device,
    loss and feature shape."""
    if not trainers:
        return "no trainers to stack"
    first = trainers[0]
    for name, module in first.flat.module.named_modules():
        if type(module) not in STACKABLE_LAYERS:
            return f"layer {name or 'the model'} is a {type(module).__name__}, which is not stacked"
    if any(True for _ in first.flat.module.buffers()):
        return "the model has buffers"
    architecture = str(first.flat.module)
    for trainer in trainers[1:]:
        if str(trainer.flat.module) != architecture or trainer.flat.shapes != first.flat.shapes:
            return "the nodes' models differ"
        if trainer.settings != first.settings:
            return "the nodes' local training settings differ"
        if trainer.device != first.device:
            return "the nodes train on different devices"
        if type(trainer.loss_fn) is not nn.CrossEntropyLoss:
            return "a node's loss is not cross-entropy"
        if trainer.features.shape[1:] != first.features.shape[1:]:
            return "the nodes' feature shapes differ"
    return None


class NodeBatch:
    """A fixed group of trainers whose rounds can run as one stack.

    ``first_gradients(weights, round_index, members)`` returns what each member's
    :meth:`~accord.training.local.LocalTrainer.first_gradient` would return, for any subset
    of the group (the nodes of one round). The group's samples are concatenated once.
    """

    def __init__(
        self, trainers: Sequence[LocalTrainer], *, max_floats: int = DEFAULT_MAX_FLOATS
    ) -> None:
        problem = stacking_problem(trainers)
        if problem is not None:
            raise ConfigurationError(f"batched local training: {problem}")
        if max_floats < 1:
            raise ConfigurationError(f"max_floats: expected at least 1, got {max_floats}")
        self.trainers = list(trainers)
        self.template = trainers[0]
        self.max_floats = max_floats
        self._position = {id(trainer): i for i, trainer in enumerate(self.trainers)}
        counts = [trainer.sample_count for trainer in self.trainers]
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        with torch.no_grad():
            self._features = torch.cat([trainer.features for trainer in self.trainers])
            self._labels = torch.cat([trainer.labels for trainer in self.trainers])

    @property
    def nodes_per_chunk(self) -> int:
        return max(1, self.max_floats // max(1, self.template.flat.dim))

    def first_gradients(
        self,
        global_weights: FloatArray,
        round_index: int,
        members: Sequence[LocalTrainer] | None = None,
    ) -> list[FloatArray]:
        """``w_t − w_i`` for each of ``members`` (default: the whole group), in order."""
        chosen = self.trainers if members is None else list(members)
        try:
            positions = [self._position[id(trainer)] for trainer in chosen]
        except KeyError:
            raise ConfigurationError(
                "batched local training: a trainer is not in this batch"
            ) from None
        if global_weights.shape != (self.template.flat.dim,):
            raise ConfigurationError(
                f"weights: expected shape ({self.template.flat.dim},), got {global_weights.shape}"
            )
        gradients: list[FloatArray] = []
        step = self.nodes_per_chunk
        for start in range(0, len(positions), step):
            gradients.extend(
                self._train(global_weights, round_index, positions[start : start + step])
            )
        return gradients

    def _plan(
        self, round_index: int, positions: list[int]
    ) -> tuple[list[int], npt.NDArray[np.int64], npt.NDArray[np.float32], list[int]]:
        """The stack's order (by step count, most first), and per step the rows
        ``(steps, nodes, batch)``, their weights and how many nodes still train."""
        settings = self.template.settings
        schedules = [
            batch_schedule(
                self.trainers[p].sample_count, settings, self.trainers[p].seed, round_index
            )
            for p in positions
        ]
        order = sorted(range(len(positions)), key=lambda j: -len(schedules[j]))
        steps = len(schedules[order[0]])
        rows = np.zeros((steps, len(positions), settings.batch_size), dtype=np.int64)
        weights = np.zeros(rows.shape, dtype=np.float32)
        active = [0] * steps
        for rank, j in enumerate(order):
            offset = self._offsets[positions[j]]
            for step, batch in enumerate(schedules[j]):
                rows[step, rank, : len(batch)] = offset + batch
                weights[step, rank, : len(batch)] = np.float32(1.0) / np.float32(len(batch))
                active[step] = rank + 1
        return order, rows, weights, active

    def _train(
        self, global_weights: FloatArray, round_index: int, positions: list[int]
    ) -> list[FloatArray]:
        order, rows, row_weights, active = self._plan(round_index, positions)
        flat, settings, device = self.template.flat, self.template.settings, self.template.device
        count = len(positions)
        start = torch.from_numpy(np.ascontiguousarray(global_weights, dtype=np.float32)).to(device)
        stack = [
            piece.view(shape).unsqueeze(0).repeat(count, *([1] * len(shape)))
            for piece, shape in zip(torch.split(start, flat.sizes), flat.shapes, strict=True)
        ]
        module = flat.module

        def forward(parameters: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(module, parameters, (x,))
            return out

        batched_forward = torch.vmap(forward)
        momentum: list[torch.Tensor] | None = None
        for step, nodes in enumerate(active):
            index = torch.from_numpy(rows[step, :nodes]).to(device)
            weight = torch.from_numpy(row_weights[step, :nodes]).to(device).reshape(-1)
            with torch.enable_grad():
                leaves = [p[:nodes].detach().requires_grad_(True) for p in stack]
                logits = batched_forward(
                    dict(zip(flat.names, leaves, strict=True)), self._features[index]
                )
                losses = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    self._labels[index].reshape(-1),
                    reduction="none",
                )
                grads = list(torch.autograd.grad((losses * weight).sum(), leaves))
            views = [p[:nodes] for p in stack]
            if momentum is None:
                momentum = sgd_step(views, grads, None, settings)  # every node trains at step 0
            else:
                sgd_step(views, grads, [b[:nodes] for b in momentum], settings)
        with torch.no_grad():
            trained = torch.cat([p.reshape(count, -1) for p in stack], dim=1).cpu().numpy()
        gradients: list[FloatArray] = [np.empty(0, dtype=np.float32)] * count
        for rank, j in enumerate(order):
            gradients[j] = np.asarray(global_weights - trained[rank], dtype=np.float32)
        return gradients
