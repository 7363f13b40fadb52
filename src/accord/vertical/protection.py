"""The label party's protections of the embedding gradients it returns.

What each one guarantees, and what it does not:

- ``max_norm`` (Li et al., ICLR 2022, their heuristic baseline): every example's gradient
  ``g_i`` of a batch gets Gaussian noise ``N(0, σ_i² I)`` with
  ``σ_i² = (max_j ‖g_j‖² − ‖g_i‖²) / d``, so every returned gradient has the batch's
  largest squared norm in expectation. It targets the norm attack; it leaves each
  gradient's direction unchanged in expectation, so the direction attack still works, and
  it has no formal privacy guarantee.
- ``label_dp``: randomised response on the training labels. Each training row's label is
  kept with probability ``e^ε / (1 + e^ε)`` and flipped otherwise, once for the whole run,
  with the label party's private randomness; the model trains on the flipped labels.
  Everything the feature parties receive is then a function of the flipped labels (and of
  data they do not gain labels from), so it is ``ε``-label differentially private for each
  training row's label (Ghazi et al., NeurIPS 2021). Not covered: the validation labels
  (they choose the early-stopping epoch) and the test labels (they are only scored by the
  label party itself). A stronger protection costs accuracy: the flipped labels are noisier.
  A model trained on them predicts ``P(flipped = 1 | x) = q + (1 − 2q) P(y = 1 | x)``
  (``q`` the flip probability); :func:`debias_probability` inverts that for the label
  party's own scoring (post-processing: the guarantee is unchanged).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from accord._validation import require_number

__all__ = ["debias_probability", "keep_probability", "max_norm_noise", "randomised_response"]


def max_norm_noise(gradients: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``gradients`` (rows, d) with Li et al.'s max-norm noise added row by row."""
    squared = gradients.pow(2).sum(dim=1, keepdim=True)
    variance = (squared.max() - squared).clamp_min(0.0) / gradients.shape[1]
    noise = torch.randn(gradients.shape, generator=generator, dtype=gradients.dtype)
    return gradients + noise * variance.sqrt()


def keep_probability(epsilon: float) -> float:
    """Randomised response's probability ``e^ε / (1 + e^ε)`` of keeping a binary label."""
    require_number("epsilon", epsilon, minimum=0.0, exclusive_minimum=True)
    return 1.0 / (1.0 + math.exp(-epsilon))


def randomised_response(
    labels: np.ndarray, epsilon: float, generator: np.random.Generator
) -> np.ndarray:
    """0/1 ``labels``, each flipped independently with probability ``1 / (1 + e^ε)``."""
    flip = generator.random(labels.shape) >= keep_probability(epsilon)
    result: np.ndarray = np.where(flip, 1.0 - labels, labels).astype(labels.dtype)
    return result


def debias_probability(noisy: np.ndarray, flip: float) -> np.ndarray:
    """``P(y = 1 | x)`` from a model of labels flipped with probability ``flip`` < 1/2:
    ``(p' − flip) / (1 − 2 flip)``, clipped to [0, 1]."""
    require_number("flip", flip, minimum=0.0, maximum=0.5)
    if flip == 0.5:
        raise ValueError("flip: 0.5 leaves no information to invert")
    result: np.ndarray = np.clip((np.asarray(noisy) - flip) / (1.0 - 2.0 * flip), 0.0, 1.0)
    return result
