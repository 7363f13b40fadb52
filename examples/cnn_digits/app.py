"""A small CNN with BatchNorm on scikit-learn's 8×8 digits, as an Accord app.

``server_app(config)`` and ``node_app(node_id, config)`` are the two factories that
``accord server --app examples.cnn_digits.app:server_app`` and ``accord node --app
examples.cnn_digits.app:node_app`` load; :func:`split` gives every node its shard (label
skew, and label flipping on the nodes listed in ``config["flippers"]``). ``simulate.py``
runs the same factories in this process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from accord.fl import TorchNode, TorchServerApp

NODES = 6


class DigitsCNN(nn.Module):
    """conv(1→w) → BatchNorm → ReLU → max-pool → conv(w→2w) → BatchNorm → ReLU → linear,
    with ``width`` w (8 by default)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width * 4 * 4, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(start_dim=1))


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], digits.target[order].astype(np.int64)


def split(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validation, test and per-node training arrays for the seed in ``config``."""
    seed = int(config.get("seed", 0))
    images, labels = _data(seed)
    validation = slice(0, 300)
    test = slice(300, 600)
    rest_images, rest_labels = images[600:], labels[600:]
    nodes = int(config.get("nodes", NODES))
    # Label skew: sorting by label before dealing out shards gives each node few classes.
    order = np.argsort(rest_labels * 1000 + np.arange(len(rest_labels)) % 1000, kind="stable")
    shards = np.array_split(order, nodes * 2)
    rng = np.random.default_rng([seed, 1])
    pairs = rng.permutation(len(shards)).reshape(nodes, 2)
    node_rows = {
        f"node-{i}": np.concatenate([shards[a], shards[b]]) for i, (a, b) in enumerate(pairs)
    }
    return {
        "validation": (images[validation], labels[validation]),
        "test": (images[test], labels[test]),
        "nodes": {name: (rest_images[rows], rest_labels[rows]) for name, rows in node_rows.items()},
    }


def server_app(config: Mapping[str, Any]) -> TorchServerApp:
    data = split(config)
    width = int(config.get("width", 8))
    return TorchServerApp(
        lambda: DigitsCNN(width),
        validation=data["validation"],
        test=data["test"],
        seed=int(config.get("seed", 0)),
        device=str(config.get("device", "cpu")),
    )


def node_app(node_id: str, config: Mapping[str, Any]) -> TorchNode:
    images, labels = split(config)["nodes"][node_id]
    if node_id in set(config.get("flippers", [])):
        labels = (9 - labels).astype(np.int64)  # a label-flipping node
    loader = DataLoader(
        TensorDataset(torch.from_numpy(images), torch.from_numpy(labels)),
        batch_size=32,
        shuffle=True,
    )
    return TorchNode(
        DigitsCNN(int(config.get("width", 8))),
        loader,
        learning_rate=float(config.get("learning_rate", 0.1)),
        device=str(config.get("device", "cpu")),
        seed=int(config.get("seed", 0)) * 1000 + int(node_id.rsplit("-", 1)[1]),
    )
