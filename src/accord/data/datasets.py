"""Datasets that scikit-learn ships (digits, breast cancer, wine) or generates.

Features are scaled with statistics of the training part only (digits: pixel / 16), so the
validation and test sets do not leak into training.

Two generated problems (``make_classification``, seeded by the scenario's seed, nothing
downloaded), each a :class:`SyntheticSpec` in :data:`SYNTHETIC`:

- ``synthetic``: 4 classes, 20 features (10 informative, 4 redundant), class separation 1.2;
- ``synthetic-hard``: 10 classes, 40 features of which only 8 are informative (8
  redundant), class separation 1.5 and 2 % of the labels assigned at random: an MLP with
  32 hidden units trained centrally on 2,400 of 3,000 samples scores about 71 % on the
  rest, so there is room for a fault to cost accuracy and for a policy to win it back.

Both hold :data:`DEFAULT_SYNTHETIC_SAMPLES` (3,000) samples unless ``samples`` says
otherwise; the shipped datasets have a fixed size.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from accord._validation import require_choice, require_int, require_number
from accord.errors import ConfigurationError

__all__ = [
    "DATASETS",
    "DEFAULT_SYNTHETIC_SAMPLES",
    "MAX_SYNTHETIC_SAMPLES",
    "SYNTHETIC",
    "Dataset",
    "HoldoutSplit",
    "SyntheticSpec",
    "load_dataset",
    "make_synthetic",
    "require_holdout_fractions",
    "split_holdout",
]

DATASETS = ("breast-cancer", "digits", "synthetic", "synthetic-hard", "wine")
#: Samples a generated dataset holds when ``samples`` is not given.
DEFAULT_SYNTHETIC_SAMPLES = 3000
#: The most samples a generated dataset may hold (about 160 MB of float32 at 40 features).
MAX_SYNTHETIC_SAMPLES = 1_000_000


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of ``sklearn.datasets.make_classification`` for a generated problem.

    ``classes`` (default 4), ``features`` (20), ``informative`` (10), ``redundant`` (4),
    ``clusters_per_class`` (2), ``class_sep`` (1.2), ``flip_y``: share of labels assigned
    at random (0.0).
    """

    classes: int = 4
    features: int = 20
    informative: int = 10
    redundant: int = 4
    clusters_per_class: int = 2
    class_sep: float = 1.2
    flip_y: float = 0.0

    def __post_init__(self) -> None:
        require_int("classes", self.classes, minimum=2)
        require_int("informative", self.informative, minimum=1)
        require_int("redundant", self.redundant, minimum=0)
        require_int("features", self.features, minimum=self.informative + self.redundant)
        require_int("clusters_per_class", self.clusters_per_class, minimum=1)
        require_number("class_sep", self.class_sep, minimum=0.0, exclusive_minimum=True)
        require_number("flip_y", self.flip_y, minimum=0.0, maximum=1.0)
        if self.classes * self.clusters_per_class > 2**self.informative:
            raise ConfigurationError(
                f"classes: expected classes x clusters_per_class <= 2 ** informative "
                f"({2**self.informative}), got {self.classes} x {self.clusters_per_class}"
            )


#: The generated datasets by name.
SYNTHETIC: dict[str, SyntheticSpec] = {
    "synthetic": SyntheticSpec(),
    "synthetic-hard": SyntheticSpec(
        classes=10, features=40, informative=8, redundant=8, class_sep=1.5, flip_y=0.02
    ),
}


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


def load_dataset(name: str, seed: int = 0, samples: int | None = None) -> Dataset:
    """Load an embedded dataset by name (the ``synthetic`` ones are generated from ``seed``).

    ``samples`` sets the size of a generated dataset (default
    :data:`DEFAULT_SYNTHETIC_SAMPLES`); the shipped datasets have a fixed size and refuse it.
    """
    require_choice("dataset", name, DATASETS)
    if name in SYNTHETIC:
        return make_synthetic(name, SYNTHETIC[name], seed, samples)
    if samples is not None:
        raise ConfigurationError(
            f"samples: only a generated dataset ({', '.join(SYNTHETIC)}) can be resized; "
            f"got samples={samples} with dataset {name!r}"
        )
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
        else:
            bunch = sk.load_wine()
            features, labels = bunch.data, bunch.target
    if name == "digits":
        features = features / 16.0
    return Dataset(
        name=name,
        features=np.asarray(features, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        n_classes=int(np.max(labels)) + 1,
    )


def make_synthetic(
    name: str, spec: SyntheticSpec, seed: int = 0, samples: int | None = None
) -> Dataset:
    """A ``make_classification`` problem of ``samples`` samples (default 3,000), seeded."""
    count = DEFAULT_SYNTHETIC_SAMPLES if samples is None else samples
    require_int("samples", count, minimum=spec.classes * spec.clusters_per_class * 10)
    if count > MAX_SYNTHETIC_SAMPLES:
        raise ConfigurationError(f"samples: expected at most {MAX_SYNTHETIC_SAMPLES}, got {count}")
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=count,
        n_features=spec.features,
        n_informative=spec.informative,
        n_redundant=spec.redundant,
        n_classes=spec.classes,
        n_clusters_per_class=spec.clusters_per_class,
        class_sep=spec.class_sep,
        flip_y=spec.flip_y,
        random_state=seed,
    )
    return Dataset(
        name=name,
        features=np.asarray(features, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        n_classes=spec.classes,
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


def require_holdout_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Each share in [0.01, 0.5], and together below 1: the nodes train on the rest."""
    require_number("validation_fraction", validation_fraction, minimum=0.01, maximum=0.5)
    require_number("test_fraction", test_fraction, minimum=0.01, maximum=0.5)
    if validation_fraction + test_fraction >= 1.0:
        raise ConfigurationError(
            "test_fraction: expected the validation and test fractions to sum below 1 (the "
            f"nodes train on the rest), got {validation_fraction!r} + {test_fraction!r}"
        )


def split_holdout(
    dataset: Dataset,
    rng: np.random.Generator,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> HoldoutSplit:
    """Stratified split into training pool, validation and test; scales features."""
    require_holdout_fractions(validation_fraction, test_fraction)
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
    # Stratified per class, so a small dataset with many classes can round every class's
    # share to nothing: an empty validation set scores NaN and the run would look diverged.
    for field, index, fraction in (
        ("validation_fraction", validation_index, validation_fraction),
        ("test_fraction", test_index, test_fraction),
    ):
        if not index:
            raise ConfigurationError(
                f"{field}: {fraction!r} of {dataset.labels.size} {dataset.name} samples in "
                f"{dataset.n_classes} classes holds out no sample (the split is stratified: "
                f"each class's share is rounded); expected a larger fraction or more samples"
            )
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
