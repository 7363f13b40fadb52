"""A built scenario as ``.npz`` bytes and back (arrays plus a JSON index; no pickle).

``accord simulate`` and ``accord federate`` build the scenario in a helper process while
the main process imports torch; the helper sends the result in this format. Pure: bytes in,
bytes out.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from accord.data.datasets import Dataset, HoldoutSplit
from accord.scenario import NodeData, ScenarioData, ScenarioSettings

__all__ = ["scenario_from_npz", "scenario_to_npz"]


def scenario_to_npz(data: ScenarioData) -> bytes:
    """A built scenario as ``.npz`` bytes (arrays plus a JSON index), read by
    :func:`scenario_from_npz`."""
    holdout = data.holdout
    arrays: dict[str, Any] = {}
    for part in ("train", "validation", "test"):
        dataset = getattr(holdout, part)
        arrays[f"{part}_features"] = dataset.features
        arrays[f"{part}_labels"] = dataset.labels
    for node in data.nodes:
        arrays[f"node{node.index}_features"] = node.features
        arrays[f"node{node.index}_labels"] = node.labels
        if node.flipped_labels is not None:
            arrays[f"node{node.index}_flipped_labels"] = node.flipped_labels
    index = {
        "name": holdout.train.name,
        "n_classes": holdout.train.n_classes,
        "nodes": [
            {"node_id": node.node_id, "index": node.index, "fault_group": data.fault_group_of(node)}
            for node in data.nodes
        ],
    }
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def scenario_from_npz(blob: bytes, settings: ScenarioSettings) -> ScenarioData:
    """The scenario that :func:`scenario_to_npz` wrote, for these ``settings`` (the ones it
    was built from: the fault groups are not in the bytes)."""

    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        index = json.loads(arrays["index"].tobytes())
        name, n_classes = str(index["name"]), int(index["n_classes"])
        parts = {
            part: Dataset(name, arrays[f"{part}_features"], arrays[f"{part}_labels"], n_classes)
            for part in ("train", "validation", "test")
        }
        groups = settings.fault_groups
        nodes = tuple(
            NodeData(
                node_id=str(node["node_id"]),
                index=int(node["index"]),
                features=arrays[f"node{node['index']}_features"],
                labels=arrays[f"node{node['index']}_labels"],
                fault=None if node["fault_group"] is None else groups[int(node["fault_group"])],
                flipped_labels=arrays.get(f"node{node['index']}_flipped_labels"),
            )
            for node in index["nodes"]
        )
    return ScenarioData(settings=settings, holdout=HoldoutSplit(**parts), nodes=nodes)
