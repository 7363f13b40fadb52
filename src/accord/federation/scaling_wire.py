"""Feature moments and the run's standardisation on the wire (``federation.proto``).

Malformed values (NaN, negative sums of squares, lengths that disagree, a scale <= 0)
become :class:`~accord.errors.ProtocolError`, so a peer's bad message is a protocol
failure, never a crash.
"""

from __future__ import annotations

import numpy as np

from accord.data.standardise import FeatureMoments, Standardisation
from accord.errors import InputDataError, ProtocolError
from accord.federation.proto import federation_pb2 as pb

__all__ = [
    "moments_from_proto",
    "moments_to_proto",
    "standardisation_from_proto",
    "standardisation_to_proto",
]


def moments_to_proto(moments: FeatureMoments) -> pb.FeatureMoments:
    return pb.FeatureMoments(
        count=moments.count,
        sums=moments.sums.tolist(),
        sums_of_squares=moments.sums_of_squares.tolist(),
    )


def moments_from_proto(message: pb.FeatureMoments) -> FeatureMoments:
    try:
        return FeatureMoments(
            int(message.count),
            np.asarray(message.sums, dtype=np.float64),
            np.asarray(message.sums_of_squares, dtype=np.float64),
        )
    except InputDataError as error:
        raise ProtocolError(f"feature moments: {error}") from error


def standardisation_to_proto(standardisation: Standardisation) -> pb.Standardisation:
    return pb.Standardisation(
        mean=standardisation.mean.tolist(), scale=standardisation.scale.tolist()
    )


def standardisation_from_proto(message: pb.Standardisation) -> Standardisation:
    try:
        return Standardisation(
            np.asarray(message.mean, dtype=np.float64),
            np.asarray(message.scale, dtype=np.float64),
        )
    except InputDataError as error:
        raise ProtocolError(f"standardisation: {error}") from error
