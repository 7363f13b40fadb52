"""Write one CSV file per node from a scikit-learn dataset, split non-IID, plus the
server's validation and test files: the data of `examples/tabular_csv/run.sh`.

The features are written as the dataset has them (digits: raw pixel counts 0-16), so the
federation has to standardise them; by default it does, with the nodes' pooled statistics.

    python examples/tabular_csv/make_node_files.py --out /tmp/tabular --nodes 4

writes node-0.csv .. node-3.csv, validation.csv and test.csv (columns x0 .. x63, label).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn import datasets

LOADERS = {
    "digits": datasets.load_digits,
    "breast-cancer": datasets.load_breast_cancer,
    "wine": datasets.load_wine,
}


def write_csv(path: Path, features: np.ndarray, labels: np.ndarray) -> None:
    header = ",".join([*(f"x{i}" for i in range(features.shape[1])), "label"])
    rows = np.column_stack([features, labels])
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.10g")


def dirichlet_split(
    labels: np.ndarray, nodes: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each class spread over the nodes with Dirichlet(alpha) shares (smaller is more
    skewed); every node keeps at least 10 samples."""
    while True:
        parts: list[list[int]] = [[] for _ in range(nodes)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * nodes))[:-1] * len(members)).astype(int)
            for node, chunk in enumerate(np.split(members, cuts)):
                parts[node] += chunk.tolist()
        if min(len(part) for part in parts) >= 10:
            return [np.sort(np.array(part)) for part in parts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the CSV files into")
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="digits")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    bunch = LOADERS[args.dataset]()
    features, labels = bunch.data, bunch.target
    order = rng.permutation(len(labels))
    n_test, n_validation = len(labels) // 5, len(labels) // 10
    test, validation = order[:n_test], order[n_test : n_test + n_validation]
    train = order[n_test + n_validation :]
    write_csv(out / "test.csv", features[test], labels[test])
    write_csv(out / "validation.csv", features[validation], labels[validation])
    for node, rows in enumerate(dirichlet_split(labels[train], args.nodes, args.alpha, rng)):
        write_csv(out / f"node-{node}.csv", features[train][rows], labels[train][rows])
        counts = np.bincount(labels[train][rows], minlength=int(labels.max()) + 1)
        print(f"node-{node}.csv: {len(rows)} samples, per class {counts.tolist()}")
    print(f"validation.csv: {len(validation)} samples; test.csv: {len(test)} samples")


if __name__ == "__main__":
    main()
