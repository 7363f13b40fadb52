"""Feature standardisation from moments that several parties can pool exactly.

A party summarises its samples as :class:`FeatureMoments` (sample count, per-feature sums
and sums of squares, float64) and reveals nothing else about its data. The moments of
several parties combine into the moments of their pooled samples
(:meth:`FeatureMoments.combine`: exactly rounded sums, so the result does not depend on the
order of the parties), and the pooled moments give one :class:`Standardisation` (mean and
scale per feature) that every party applies to its own rows: the transform a centralised
``StandardScaler`` would fit on the pooled data (population variance), without pooling.

A feature with (numerically) zero variance keeps scale 1, so it is centred, never divided
by zero. :func:`scale_problem` says when features are far from unit scale (the warning a
run gives when standardisation is off).

Pure: no files, no network. JSON forms are plain dictionaries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from accord.errors import ConfigurationError, InputDataError

__all__ = [
    "STANDARDISATION_FORMAT",
    "FeatureMoments",
    "Standardisation",
    "column_difference",
    "scale_problem",
    "warn_if_far_from_unit_scale",
]

logger = logging.getLogger(__name__)

STANDARDISATION_FORMAT = "accord-standardisation"

#: A feature whose root mean square exceeds this is "far from unit scale".
FAR_FROM_UNIT_RMS = 5.0

#: Variance at or below this fraction of ``max(1, mean²)`` counts as zero (scale 1).
_ZERO_VARIANCE = 1e-12

FloatVector = npt.NDArray[np.float64]


def _vector(name: str, values: Any, length: int | None = None) -> FloatVector:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InputDataError(f"{name}: expected a list of numbers, got shape {array.shape}")
    if length is not None and array.shape[0] != length:
        raise InputDataError(f"{name}: expected {length} values, got {array.shape[0]}")
    if not np.all(np.isfinite(array)):
        raise InputDataError(f"{name}: expected finite numbers, found NaN or infinity")
    return array


@dataclass(frozen=True)
class FeatureMoments:
    """Sample count, per-feature sums and sums of squares of one party's (or several
    parties') features; float64 so that pooled sums keep their precision."""

    count: int
    sums: FloatVector
    sums_of_squares: FloatVector

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise InputDataError(f"count: expected an integer >= 0, got {self.count!r}")
        sums = _vector("sums", self.sums)
        squares = _vector("sums_of_squares", self.sums_of_squares, sums.shape[0])
        if np.any(squares < 0):
            raise InputDataError("sums_of_squares: expected values >= 0, found a negative one")
        object.__setattr__(self, "sums", sums)
        object.__setattr__(self, "sums_of_squares", squares)

    @property
    def n_features(self) -> int:
        return int(self.sums.shape[0])

    @classmethod
    def of(cls, features: npt.ArrayLike) -> FeatureMoments:
        """The moments of ``features`` (rows are samples), computed in float64."""
        array = np.asarray(features, dtype=np.float64)
        if array.ndim != 2:
            raise InputDataError(f"features: expected a 2-D array, got shape {array.shape}")
        return cls(
            count=int(array.shape[0]),
            sums=array.sum(axis=0),
            sums_of_squares=np.square(array).sum(axis=0),
        )

    @classmethod
    def combine(cls, parts: Sequence[FeatureMoments]) -> FeatureMoments:
        """The moments of the pooled samples of ``parts``. Each sum is exactly rounded
        (:func:`math.fsum`), so any order of the parts gives the same bits."""
        if not parts:
            raise InputDataError("moments: nothing to combine")
        width = parts[0].n_features
        for part in parts:
            if part.n_features != width:
                raise InputDataError(
                    f"moments: parties disagree on the number of features ({width} and "
                    f"{part.n_features})"
                )
        sums = np.stack([part.sums for part in parts])
        squares = np.stack([part.sums_of_squares for part in parts])
        return cls(
            count=sum(part.count for part in parts),
            sums=np.array([math.fsum(column) for column in sums.T], dtype=np.float64),
            sums_of_squares=np.array([math.fsum(column) for column in squares.T]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sums": self.sums.tolist(),
            "sums_of_squares": self.sums_of_squares.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureMoments:
        try:
            return cls(int(data["count"]), data["sums"], data["sums_of_squares"])
        except (KeyError, TypeError, ValueError) as error:
            raise InputDataError(f"feature moments: malformed ({error})") from error


@dataclass(frozen=True)
class Standardisation:
    """``(x − mean) / scale`` per feature; ``feature_names``, when known, is the column
    order it was fitted on."""

    mean: FloatVector
    scale: FloatVector
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        mean = _vector("mean", self.mean)
        scale = _vector("scale", self.scale, mean.shape[0])
        if np.any(scale <= 0):
            raise InputDataError("scale: expected positive values, found one <= 0")
        if self.feature_names is not None:
            names = tuple(str(name) for name in self.feature_names)
            if len(names) != mean.shape[0]:
                raise InputDataError(
                    f"feature_names: expected {mean.shape[0]} names, got {len(names)}"
                )
            object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_moments(
        cls, moments: FeatureMoments, feature_names: Sequence[str] | None = None
    ) -> Standardisation:
        """Mean and population standard deviation of the pooled samples; a feature with
        zero variance keeps scale 1."""
        if moments.count < 1:
            raise InputDataError("moments: no samples to standardise with")
        mean = moments.sums / moments.count
        variance = np.maximum(moments.sums_of_squares / moments.count - np.square(mean), 0.0)
        constant = variance <= _ZERO_VARIANCE * np.maximum(1.0, np.square(mean))
        scale = np.where(constant, 1.0, np.sqrt(variance))
        return cls(mean, scale, None if feature_names is None else tuple(feature_names))

    @classmethod
    def fit(
        cls, features: npt.ArrayLike, feature_names: Sequence[str] | None = None
    ) -> Standardisation:
        """The transform fitted on ``features`` alone."""
        return cls.from_moments(FeatureMoments.of(features), feature_names)

    def apply(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """``(features − mean) / scale`` as float32, rows are samples."""
        array = np.asarray(features, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self.n_features:
            raise InputDataError(
                f"standardisation: expected samples with {self.n_features} features, got "
                f"shape {array.shape}"
            )
        return np.ascontiguousarray(((array - self.mean) / self.scale).astype(np.float32))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": STANDARDISATION_FORMAT,
            "version": 1,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
        }
        if self.feature_names is not None:
            data["feature_names"] = list(self.feature_names)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Standardisation:
        if not isinstance(data, Mapping) or data.get("format") != STANDARDISATION_FORMAT:
            raise InputDataError(
                f"standardisation: expected an object with format {STANDARDISATION_FORMAT!r}"
            )
        if data.get("version") != 1:
            raise InputDataError(
                f"standardisation: version {data.get('version')!r}; this Accord reads version 1"
            )
        try:
            names = data.get("feature_names")
            return cls(
                data["mean"], data["scale"], None if names is None else tuple(map(str, names))
            )
        except KeyError as error:
            raise InputDataError(f"standardisation: no {error.args[0]!r} field") from error

    def check_features(self, feature_names: Sequence[str], where: str) -> None:
        """Fail unless ``feature_names`` are the columns this transform was fitted on."""
        if self.feature_names is None:
            if len(feature_names) != self.n_features:
                raise ConfigurationError(
                    f"{where}: {len(feature_names)} feature columns; the standardisation has "
                    f"{self.n_features}"
                )
            return
        if tuple(feature_names) != self.feature_names:
            raise ConfigurationError(
                f"{where}: the standardisation was fitted on other columns than the data's "
                f"({column_difference(feature_names, self.feature_names)} in the "
                "standardisation)"
            )


def column_difference(expected: Sequence[str], found: Sequence[str]) -> str:
    """Which columns are missing, extra or out of order, in words."""
    missing = [name for name in expected if name not in set(found)]
    extra = [name for name in found if name not in set(expected)]
    parts = []
    if missing:
        parts.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        parts.append(f"extra column(s) {', '.join(extra)}")
    return "; ".join(parts) if parts else "columns in another order"


def scale_problem(
    features: npt.ArrayLike, feature_names: Sequence[str] | None = None
) -> str | None:
    """Why ``features`` are far from unit scale (some column's root mean square above
    :data:`FAR_FROM_UNIT_RMS`), or ``None``."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        return None
    rms = np.sqrt(np.mean(np.square(array), axis=0))
    worst = int(np.argmax(rms))
    if rms[worst] <= FAR_FROM_UNIT_RMS:
        return None
    name = feature_names[worst] if feature_names is not None else f"#{worst}"
    far = int(np.count_nonzero(rms > FAR_FROM_UNIT_RMS))
    return (
        f"{far} of {array.shape[1]} features are far from unit scale (column {name!r} has "
        f"root mean square {rms[worst]:.3g})"
    )


def warn_if_far_from_unit_scale(
    features: npt.ArrayLike,
    feature_names: Sequence[str] | None,
    where: str,
    remedy: str = "standardise them, or drop --standardise off",
) -> bool:
    """Log a warning naming ``where`` (and ``remedy``) if :func:`scale_problem` finds one;
    return whether."""
    problem = scale_problem(features, feature_names)
    if problem is not None:
        logger.warning(
            "%s: %s and are not standardised; SGD on such features may not learn (%s)",
            where,
            problem,
            remedy,
        )
    return problem is not None
