"""Embedded datasets, partitioners and faulty-node recipes. Nothing is downloaded."""

from __future__ import annotations

from accord.data.datasets import DATASETS, Dataset, HoldoutSplit, load_dataset, split_holdout
from accord.data.faults import FAULT_KINDS, FaultSpec, corrupt_gradient, flip_labels
from accord.data.partition import PARTITIONS, PartitionSpec, partition

__all__ = [
    "DATASETS",
    "FAULT_KINDS",
    "PARTITIONS",
    "Dataset",
    "FaultSpec",
    "HoldoutSplit",
    "PartitionSpec",
    "corrupt_gradient",
    "flip_labels",
    "load_dataset",
    "partition",
    "split_holdout",
]
