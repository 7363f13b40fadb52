"""Datasets that scikit-learn ships (digits, breast cancer, wine) or generates.

Features are scaled with statistics of the training part only (digits: pixel / 16), so the
validation and test sets do not leak into training.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from accord._validation import require_choice, require_number

__all__ = ["DATASETS", "Dataset", "HoldoutSplit", "load_dataset", "split_holdout"]

DATASETS = ("breast-cancer", "digits", "synthetic", "wine")


@dataclass(frozen=True)
class Dataset:
    name: str
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])


@dataclass(frozen=True)
class HoldoutSplit:
    """The nodes' pool of training samples, the server's validation set and a test set."""

    train: Dataset
    validation: Dataset
    test: Dataset


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """Load an embedded dataset by name (``synthetic`` is ``make_classification``)."""
    require_choice("dataset", name, DATASETS)
    shipped = _read_shipped(name)
    if shipped is not None:
        features, labels = shipped
    else:
        from sklearn import datasets as sk

        if name == "digits":
            bunch = sk.load_digits()
            features, labels = bunch.data, bunch.target
        elif name == "breast-cancer":
            bunch = sk.load_breast_cancer()
            features, labels = bunch.data, bunch.target
        elif name == "wine":
            bunch = sk.load_wine()
            features, labels = bunch.data, bunch.target
        else:
            features, labels = sk.make_classification(
                n_samples=3000,
                n_features=20,
                n_informative=10,
                n_redundant=4,
                n_classes=4,
                n_clusters_per_class=2,
                class_sep=1.2,
                random_state=seed,
            )
    if name == "digits":
        features = features / 16.0
    return Dataset(
        name=name,
        features=np.asarray(features, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        n_classes=int(np.max(labels)) + 1,
    )


#: The files scikit-learn ships for each embedded dataset, and whether they have a header.
_SHIPPED_FILES = {
    "digits": ("digits.csv.gz", False),
    "wine": ("wine_data.csv", True),
    "breast-cancer": ("breast_cancer.csv", True),
}


def _read_shipped(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Read a dataset straight from the CSV file inside the scikit-learn wheel.

    Importing ``sklearn.datasets`` costs about a second (all of scikit-learn and SciPy) on
    the critical path of ``accord simulate``; the files are plain CSV. ``None`` when the
    file is not where this scikit-learn keeps it (the caller then imports scikit-learn).
    """
    if name not in _SHIPPED_FILES:
        return None
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    filename, has_header = _SHIPPED_FILES[name]
    path = Path(spec.origin).parent / "datasets" / "data" / filename
    if not path.is_file():
        return None
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", skiprows=1 if has_header else 0)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _subset(dataset: Dataset, index: npt.NDArray[np.intp]) -> Dataset:
    return Dataset(dataset.name, dataset.features[index], dataset.labels[index], dataset.n_classes)


def split_holdout(
    dataset: Dataset,
    rng: np.random.Generator,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> HoldoutSplit:
    """Stratified split into training pool, validation and test; scales features."""
    require_number("validation_fraction", validation_fraction, minimum=0.01, maximum=0.5)
    require_number("test_fraction", test_fraction, minimum=0.01, maximum=0.5)
    train_index: list[int] = []
    validation_index: list[int] = []
    test_index: list[int] = []
    for label in range(dataset.n_classes):
        members = rng.permutation(np.flatnonzero(dataset.labels == label))
        n_test = round(test_fraction * members.size)
        n_validation = round(validation_fraction * members.size)
        test_index += members[:n_test].tolist()
        validation_index += members[n_test : n_test + n_validation].tolist()
        train_index += members[n_test + n_validation :].tolist()
    parts = [
        _subset(dataset, rng.permutation(np.array(index, dtype=np.intp)))
        for index in (train_index, validation_index, test_index)
    ]
    if dataset.name != "digits":
        mean = parts[0].features.mean(axis=0)
        scale = parts[0].features.std(axis=0) + 1e-6
        parts = [
            Dataset(p.name, ((p.features - mean) / scale).astype(np.float32), p.labels, p.n_classes)
            for p in parts
        ]
    return HoldoutSplit(train=parts[0], validation=parts[1], test=parts[2])
