"""Which aligned rows each party uses, derived from the shared position and a seed.

After ``accord align`` every party holds its rows in the same shared order, so a row is
named by its position alone. The splits and each epoch's batch order are functions of the
row count and the run's seed: every party computes them itself and no row index travels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accord._validation import require_int, require_number
from accord.errors import InputDataError

__all__ = ["Splits", "epoch_batches", "split_positions"]

#: Streams of the shared seed, so the split and the batch orders never reuse random numbers.
_SPLIT_STREAM = 1
_BATCH_STREAM = 2


@dataclass(frozen=True)
class Splits:
    """Sorted shared positions of the training, validation and test rows (disjoint)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def positions(self, name: str) -> np.ndarray:
        """The positions of the split called ``train``, ``validation`` or ``test``."""
        if name not in ("train", "validation", "test"):
            raise ValueError(f"split: expected train, validation or test, got {name!r}")
        result: np.ndarray = getattr(self, name)
        return result


def split_positions(
    row_count: int, validation_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Partition ``range(row_count)`` into training, validation and test positions.

    A seeded permutation of the positions is cut into ``round(fraction * row_count)`` test
    rows, then validation rows, the rest training; each part is returned sorted.
    """
    require_int("row_count", row_count, minimum=1)
    require_number("validation_fraction", validation_fraction, minimum=0.0, maximum=1.0)
    require_number("test_fraction", test_fraction, minimum=0.0, maximum=1.0)
    require_int("seed", seed, minimum=0)
    generator = np.random.default_rng([seed, _SPLIT_STREAM])
    order = generator.permutation(row_count)
    test_count = round(test_fraction * row_count)
    validation_count = round(validation_fraction * row_count)
    if test_count + validation_count >= row_count:
        raise InputDataError(
            f"rows: {row_count} aligned rows leave none for training after {validation_count}"
            f" validation and {test_count} test rows"
        )
    test = np.sort(order[:test_count])
    validation = np.sort(order[test_count : test_count + validation_count])
    train = np.sort(order[test_count + validation_count :])
    return Splits(train=train, validation=validation, test=test)


def epoch_batches(train: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The training positions of ``epoch``, shuffled by ``(seed, epoch)``, cut into batches.

    Every batch holds ``batch_size`` positions except perhaps the last one.
    """
    require_int("batch_size", batch_size, minimum=1)
    require_int("seed", seed, minimum=0)
    require_int("epoch", epoch, minimum=0)
    generator = np.random.default_rng([seed, _BATCH_STREAM, epoch])
    shuffled = train[generator.permutation(len(train))]
    return [shuffled[start : start + batch_size] for start in range(0, len(shuffled), batch_size)]
