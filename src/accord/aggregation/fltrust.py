"""FLTrust (Cao, Fang, Liu and Gong, NDSS 2021): trust from agreement with the server's update.

The server holds a small clean *root dataset* and, each round, trains a copy of ``w_t`` on it
with the nodes' own local procedure: its first gradient ``g₀`` is the reference. Then

- trust ``t_i = ReLU(cos(g_i, g₀))`` (0 for a zero gradient: a free rider earns nothing);
- each first gradient is rescaled to the reference's norm, ``ĝ_i = g_i · ‖g₀‖ / ‖g_i‖``, so
  no node can win by sending a large update (scale attacks) and every step is as long as
  the server's own;
- ``G = Σ_i t_i ĝ_i / Σ_i t_i``.

Reported probabilities are the normalised trust ``t_i / Σ t`` (the weight of each node in
``G``; the rescaling is a separate, documented step, so ``G ≠ Σ p_i g_i`` in general).

**A round in which every trust is 0** (every update points away from the reference, or the
reference is the zero vector) has no trusted node: ``G`` is then the reference ``g₀`` itself,
the server's own update on clean data, which is what FLTrust trusts (a zero step would freeze
the model for as long as the nodes disagree with the server). The probabilities are then the
data-size weights, and :meth:`FLTrust.diagnostics` reports ``zero_trust = 1``.

**Where the reference comes from.** The policy sees the server's data only through
:attr:`RoundInput.server_update` (see :data:`accord.aggregation.base.ServerUpdateFn`), which
the driver builds from the first :attr:`FLTrustSettings.root_samples` samples of the
server's validation split (the built-in scenarios' split is shuffled and stratified; a
server's own ``--validation-data`` file is shuffled with the run's seed), trained
with the nodes' local settings. Cao et al. use a root dataset of about 100 clean samples;
here it overlaps the validation set, which only the stop conditions read, never the test
set. A smaller validation split gives a smaller root dataset (wine: 18 samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord._validation import require_int
from accord.aggregation.base import Aggregation, Aggregator, FloatArray, RoundInput
from accord.aggregation.combine import data_size_probabilities, expand_to_roster, second_gradient
from accord.errors import ProtocolError

__all__ = ["FLTrust", "FLTrustResult", "FLTrustSettings", "fltrust_combine"]


@dataclass(frozen=True)
class FLTrustSettings:
    """``root_samples``: size of the server's root dataset, taken from the start of its
    validation split (default 100, as Cao et al.; fewer when the split is smaller)."""

    root_samples: int = 100

    def __post_init__(self) -> None:
        require_int("root_samples", self.root_samples, minimum=1)


@dataclass(frozen=True)
class FLTrustResult:
    """``trust``: ReLU of each cosine; ``probabilities``: normalised trust (data-size weights
    in a zero-trust round); ``second_gradient``; ``zero_trust``: no node was trusted."""

    trust: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float64]
    second_gradient: FloatArray
    zero_trust: bool


def fltrust_combine(
    first_gradients: FloatArray,
    reference: FloatArray,
    sample_counts: npt.NDArray[np.float64],
) -> FLTrustResult:
    """FLTrust's rule for one round, as a plain function (see the module docstring)."""
    if reference.shape != (first_gradients.shape[1],):
        raise ProtocolError(
            f"server update: expected shape ({first_gradients.shape[1]},), got {reference.shape}"
        )
    gradients = first_gradients.astype(np.float64)
    reference64 = reference.astype(np.float64)
    norms = np.linalg.norm(gradients, axis=1)
    reference_norm = float(np.linalg.norm(reference64))
    usable = (norms > 0) & (reference_norm > 0)
    cosine = np.zeros(norms.shape[0])
    cosine[usable] = (gradients[usable] @ reference64) / (norms[usable] * reference_norm)
    trust = np.maximum(cosine, 0.0)
    total = float(trust.sum())
    if total <= 0.0 or not np.isfinite(total):
        return FLTrustResult(
            trust=trust,
            probabilities=data_size_probabilities(sample_counts),
            second_gradient=np.asarray(reference, dtype=np.float32).copy(),
            zero_trust=True,
        )
    probabilities = trust / total
    # Σ p_i · (‖g₀‖/‖g_i‖) · g_i: trust > 0 implies ‖g_i‖ > 0.
    factors = np.where(trust > 0, reference_norm / np.where(norms > 0, norms, 1.0), 0.0)
    return FLTrustResult(
        trust=trust,
        probabilities=np.asarray(probabilities, dtype=np.float64),
        second_gradient=second_gradient(probabilities * factors, first_gradients),
        zero_trust=False,
    )


class FLTrust(Aggregator):
    """FLTrust: trust = ReLU(cosine to the server's update), updates rescaled to its norm."""

    name = "fltrust"

    def __init__(self, settings: FLTrustSettings | None = None) -> None:
        self.settings = settings or FLTrustSettings()
        self.root_samples = self.settings.root_samples
        self._diagnostics: dict[str, float] = {}

    def aggregate(self, round_input: RoundInput) -> Aggregation:
        assert round_input.server_update is not None  # guaranteed by root_samples > 0
        reference = round_input.server_update(
            np.array(round_input.global_weights), round_input.round_index
        )
        result = fltrust_combine(round_input.first_gradients, reference, round_input.present_counts)
        self._diagnostics = {
            "zero_trust": float(result.zero_trust),
            "reference_norm": float(np.linalg.norm(reference.astype(np.float64))),
            "trusted_nodes": float(np.count_nonzero(result.trust)),
        }
        return Aggregation(
            probabilities=expand_to_roster(result.probabilities, round_input.present),
            second_gradient=result.second_gradient,
        )

    def diagnostics(self) -> dict[str, float]:
        return dict(self._diagnostics)
