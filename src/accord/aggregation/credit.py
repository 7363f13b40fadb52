"""Per-node evidence shared by Hedge-LOO and the ``rich`` Actor-Critic.

Both ask the server's validation set two questions each round, as two batched passes:

1. *Alone*: how does the validation loss change when node i's first gradient is applied
   alone (``w − η g_i``)? Expressed as a robust z-score across nodes (the feature that
   mattered most on the prototype).
2. *Leave-one-out credit*: how much worse is ``w − η G₋ᵢ`` than ``w − η G``, with
   ``G₋ᵢ`` the second gradient renormalised without node i? ``B − B₋ᵢ`` with ``B`` the
   negative validation loss. Positive credit means node i helped. With
   ``step_normalised=True`` ``G₋ᵢ`` is rescaled to the length of ``G``, so a node is paid
   for the direction it adds, not for shortening (damping) the step.

The Actor-Critic adds its candidate references (Hedge-LOO's weights on its own credit, and
the data-size weights) to the first pass: its safety check and its choice of reference.

**First-order credit** (``method="first-order"``, DESIGN §3.2) answers both questions from
two backward passes instead of ``2N + 2`` scored candidates: the alone change is
``−η ∇L(w)·g_i``, and the leave-one-out credit ``L(w − ηG₋ᵢ) − L(w − ηG)`` is
``η ∇L(a)·(G − G₋ᵢ)`` with ``a = w − ηG``, linearised at the applied step, whose loss and
per-sample losses the same pass gives. ``∇L·G₋ᵢ`` and ``|G₋ᵢ|`` follow from N dot
products, so no ``(N, dim)`` stack of candidates is ever formed. :func:`credit_method_for`
picks the method when the setting is ``auto``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from accord.aggregation.base import (
    FloatArray,
    ValidationFn,
    ValidationGradientFn,
    ValidationScores,
)
from accord.aggregation.combine import (
    leave_one_out_rows,
    median,
    reweighted_gradients,
    row_products,
    second_gradient,
)
from accord.errors import ConfigurationError

__all__ = [
    "AUTO_FIRST_ORDER_FLOATS",
    "AUTO_FIRST_ORDER_NODES",
    "CREDIT_METHODS",
    "RECHECK",
    "RECHECK_EXTEND",
    "LeaveOneOut",
    "NodeFeatures",
    "credit_method_for",
    "descent_alignment",
    "leave_one_out_credit",
    "node_features",
    "robust_z",
]

FEATURE_NAMES = (
    "alone_loss_z",
    "cosine_previous",
    "log_norm_ratio",
    "previous_share",
    "running_credit",
    "log_norm_bound",
)


CREDIT_METHODS = ("auto", "exact", "first-order")

#: First-order credit re-checks exactly the nodes it ranks this many lowest and this many
#: highest: ``2 × RECHECK + 1`` scored candidates, whatever N, so the nodes a policy acts on
#: most (the harmful and the most useful) carry exact credit.
RECHECK = 5

#: Candidate weight vectors are formed and scored this many at a time (the validation
#: functions score in chunks of the same size, so the scores are those of one stack): the
#: peak holds one block of candidates, not a ``(2N + 2, dim)`` stack of them.
CANDIDATE_BLOCK = 64

#: ``auto`` switches to first-order credit above this many present nodes ...
AUTO_FIRST_ORDER_NODES = 32
#: ... or when the exact method's candidates, ``(2N + 2) × dim`` floats, exceed this.
AUTO_FIRST_ORDER_FLOATS = 20_000_000


def credit_method_for(
    setting: str, nodes: int, dim: int, validation_gradient: ValidationGradientFn | None
) -> str:
    """``exact`` or ``first-order`` for a round of ``nodes`` present nodes and a model of
    ``dim`` weights. ``auto`` is first-order above :data:`AUTO_FIRST_ORDER_NODES` nodes or
    :data:`AUTO_FIRST_ORDER_FLOATS` candidate floats, where the driver gives a validation
    gradient, and exact otherwise (every small run, e.g. digits with 10 or 30 nodes)."""
    if setting == "exact":
        return "exact"
    if setting == "first-order":
        if validation_gradient is None:
            raise ConfigurationError(
                "credit_method: first-order needs the validation loss's gradient; this "
                "driver gives none (use exact)"
            )
        return "first-order"
    large = nodes > AUTO_FIRST_ORDER_NODES or (2 * nodes + 2) * dim > AUTO_FIRST_ORDER_FLOATS
    return "first-order" if large and validation_gradient is not None else "exact"


def score_in_blocks(
    validate: ValidationFn, count: int, rows: Callable[[int, int], FloatArray]
) -> ValidationScores:
    """The scores of ``count`` candidate rows, each block of :data:`CANDIDATE_BLOCK` built by
    ``rows(start, stop)`` only when it is scored."""
    parts = [
        validate(rows(start, min(start + CANDIDATE_BLOCK, count)))
        for start in range(0, count, CANDIDATE_BLOCK)
    ]
    samples = [part.sample_losses for part in parts]
    return ValidationScores(
        losses=np.concatenate([part.losses for part in parts]),
        accuracies=np.concatenate([part.accuracies for part in parts]),
        sample_losses=None
        if any(sample is None for sample in samples)
        else np.concatenate([np.asarray(sample) for sample in samples]),
    )


def _feature_rows(
    weights: FloatArray, first_gradients: FloatArray, lr: np.float32, extra_rows: FloatArray
) -> Callable[[int, int], FloatArray]:
    """``rows(start, stop)`` of the features' candidates: row 0 is ``w``, rows 1..N are
    ``w − η g_i``, then ``extra_rows``; only the asked block's rows are formed."""
    n = first_gradients.shape[0]

    def rows(start: int, stop: int) -> FloatArray:
        parts = [weights[None, :]] if start == 0 else []
        alone = slice(max(start, 1) - 1, min(stop, n + 1) - 1)
        if alone.stop > alone.start:
            parts.append(weights[None, :] - lr * first_gradients[alone])
        if stop > n + 1:
            parts.append(extra_rows[max(start, n + 1) - n - 1 : stop - n - 1])
        return np.concatenate(parts)

    return rows


def robust_z(values: npt.NDArray[np.float64], clip: float = 5.0) -> npt.NDArray[np.float64]:
    """``(v − median) / (1.4826 · MAD)``, clipped; zeros when every value is the same.
    A non-finite value (a loss change that overflowed) scores ``+clip``, the worst; the
    others are scored among themselves."""
    finite = np.isfinite(values)
    if not finite.all():
        scores = np.full(values.shape, clip, dtype=np.float64)
        if finite.any():
            scores[finite] = robust_z(values[finite], clip)
        return scores
    centre = median(values)
    spread = 1.4826 * median(np.abs(values - centre))
    floor = 1e-3 * max(abs(centre), float(np.abs(values).mean()), 1e-9)
    scaled = (values - centre) / max(spread, floor)
    return np.asarray(np.clip(scaled, -clip, clip), dtype=np.float64)


@dataclass(frozen=True)
class NodeFeatures:
    """``values``: (n_present, 6) features in :data:`FEATURE_NAMES` order; ``loss_now``:
    validation loss of ``w_t``; ``reference_loss`` and ``reference_sample_losses``: the
    validation loss (mean and per sample) of ``w − η·reference_gradient`` when one was
    given, else ``None``; ``candidate_losses`` and ``candidate_sample_losses``: the same for
    each row of ``candidate_gradients`` (empty, or ``None`` without per-sample losses)."""

    values: npt.NDArray[np.float64]
    loss_now: float
    reference_loss: float | None = None
    reference_sample_losses: npt.NDArray[np.float64] | None = None
    candidate_losses: npt.NDArray[np.float64] = dataclasses.field(
        default_factory=lambda: np.zeros(0)
    )
    candidate_sample_losses: npt.NDArray[np.float64] | None = None
    #: Each node's ``L(w − η g_i) − L(w)`` (first-order: ``−η ∇L·g_i``), unscaled.
    alone_changes: npt.NDArray[np.float64] | None = None


def node_features(
    validate: ValidationFn,
    weights: FloatArray,
    first_gradients: FloatArray,
    server_learning_rate: float,
    previous_second_gradient: FloatArray | None,
    previous_shares: npt.NDArray[np.float64],
    running_credit: npt.NDArray[np.float64],
    bound_factors: npt.NDArray[np.float64] | None = None,
    reference_gradient: FloatArray | None = None,
    candidate_gradients: FloatArray | None = None,
    *,
    validation_gradient: ValidationGradientFn | None = None,
) -> NodeFeatures:
    """The state ``x_i`` of each present node, in one batched validation pass (or, with a
    ``validation_gradient``, first-order: one backward pass at ``w`` for the alone feature
    and a pass over the reference and candidates only).

    ``previous_shares`` is ``N · p_{t−1,i}``; ``running_credit`` each node's decayed sum of
    past leave-one-out credit (scaled per round), the evidence Hedge-LOO acts on;
    ``bound_factors`` the factor (≤ 1) by which norm bounding scaled each first gradient
    (its log is a feature; 0 without bounding). A ``reference_gradient`` and the rows of
    ``candidate_gradients`` (second gradients the caller wants to compare) are scored in the
    same pass.
    """
    lr = np.float32(server_learning_rate)
    n = first_gradients.shape[0]
    extra = []
    if reference_gradient is not None:
        extra.append(weights[None, :] - lr * reference_gradient[None, :])
    if candidate_gradients is not None:
        extra.append(weights[None, :] - lr * candidate_gradients)
    scores: ValidationScores | None
    towards: FloatArray | None = None
    if validation_gradient is None:
        extra_rows = np.concatenate(extra) if extra else np.empty((0, weights.shape[0]), np.float32)
        rows = _feature_rows(weights, first_gradients, lr, extra_rows)
        scores = score_in_blocks(validate, n + 1 + extra_rows.shape[0], rows)
        loss_now = float(scores.losses[0])
        alone_changes = scores.losses[1 : n + 1] - loss_now
        first = n + 1
    else:
        at_weights = validation_gradient(weights)
        loss_now, towards = at_weights.loss, at_weights.gradient
        scores = validate(np.concatenate(extra)) if extra else None
        first = 0
    log_norm, cosine, along = _row_geometry(first_gradients, previous_second_gradient, towards)
    if along is not None:
        alone_changes = -float(lr) * along
    # A diverging candidate scores inf or NaN; it still ranks as the worst, not as NaN.
    alone = robust_z(np.nan_to_num(alone_changes, nan=1e6, posinf=1e6))
    if bound_factors is None:
        bound_factors = np.ones(n)
    log_bound = np.clip(np.log(np.maximum(bound_factors, 1e-12)), -5.0, 0.0)
    values = np.stack([alone, cosine, log_norm, previous_shares, running_credit, log_bound], axis=1)
    reference_loss: float | None = None
    reference_sample_losses: npt.NDArray[np.float64] | None = None
    candidate_losses = np.zeros(0)
    candidate_sample_losses: npt.NDArray[np.float64] | None = None
    if scores is not None:
        if reference_gradient is not None:
            reference_loss = float(scores.losses[first])
            if scores.sample_losses is not None:
                reference_sample_losses = np.asarray(scores.sample_losses[first], np.float64)
            first += 1
        candidate_losses = np.asarray(scores.losses[first:], dtype=np.float64)
        if scores.sample_losses is not None:
            candidate_sample_losses = np.asarray(scores.sample_losses[first:], np.float64)
    return NodeFeatures(
        values=np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0),
        loss_now=loss_now,
        reference_loss=reference_loss,
        reference_sample_losses=reference_sample_losses,
        candidate_losses=candidate_losses,
        candidate_sample_losses=candidate_sample_losses,
        alone_changes=np.asarray(alone_changes, dtype=np.float64),
    )


def _row_geometry(
    first_gradients: FloatArray,
    previous_second_gradient: FloatArray | None,
    towards: FloatArray | None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    """Each row's log norm against the median (clipped to ±3), its cosine to
    ``previous_second_gradient`` (0 without one) and its dot product with ``towards`` (None
    without), in one pass over the ``(N, dim)`` rows."""
    along = [v for v in (previous_second_gradient, towards) if v is not None]
    products, squares = row_products(
        first_gradients, np.stack(along).astype(np.float64) if along else None
    )
    norms = np.sqrt(squares)
    median_norm = max(median(norms), 1e-12)
    log_norm = np.clip(np.log(np.maximum(norms, 1e-12) / median_norm), -3.0, 3.0)
    cosine = np.zeros(first_gradients.shape[0])
    if previous_second_gradient is not None:
        length = float(np.linalg.norm(previous_second_gradient.astype(np.float64)))
        cosine = products[:, 0] / np.maximum(norms * length, 1e-12)
    return log_norm, cosine, None if towards is None else products[:, -1]


def descent_alignment(
    first_gradients: FloatArray, validation_gradient: FloatArray
) -> npt.NDArray[np.float64]:
    """Each node's cosine to the server's validation-loss gradient: how well its own update
    descends the server's loss, whatever weight it holds (leave-one-out credit shrinks with
    the weight, so a node held down can earn nothing back by it)."""
    towards = np.asarray(validation_gradient, dtype=np.float64)[None, :]
    products, squares = row_products(first_gradients, towards)
    length = float(np.linalg.norm(towards))
    cosine = products[:, 0] / np.maximum(np.sqrt(squares) * length, 1e-30)
    return np.asarray(np.nan_to_num(cosine, nan=0.0, posinf=0.0, neginf=0.0), dtype=np.float64)


@dataclass(frozen=True)
class LeaveOneOut:
    """``credit[i] = B − B₋ᵢ`` on negative validation loss; ``loss_after``: loss of ``w − ηG``
    (``sample_losses_after`` per sample, when the validation function gives them)."""

    credit: npt.NDArray[np.float64]
    loss_after: float
    sample_losses_after: npt.NDArray[np.float64] | None = None
    #: How many nodes' credit is exact (first-order credit: those it re-checked).
    exact_nodes: int | None = None
    #: Exact credit: the per-sample losses of each node's candidate (row i: ``w − ηG₋ᵢ``, or
    #: the lift for the nodes in ``lifted``), when the validation function gives them.
    sample_losses_without: npt.NDArray[np.float64] | None = None
    lifted: npt.NDArray[np.bool_] | None = None
    #: The scores of the ``extra_rows`` the caller asked to have scored in the same pass.
    extra_scores: ValidationScores | None = None


def leave_one_out_credit(
    validate: ValidationFn,
    weights: FloatArray,
    probabilities: npt.NDArray[np.float64],
    first_gradients: FloatArray,
    server_learning_rate: float,
    *,
    step_normalised: bool = False,
    validation_gradient: ValidationGradientFn | None = None,
    lift_to: npt.NDArray[np.float64] | None = None,
    extra_rows: FloatArray | None = None,
) -> LeaveOneOut:
    """Each present node's leave-one-out credit for the second gradient it was part of;
    first-order (see the module docstring) when a ``validation_gradient`` is given.

    ``lift_to``: a node whose weight is below its entry is credited the
    other way round, by lifting it to that weight (its data share, say) instead of leaving
    it out: ``L(G) − L(G₊ᵢ)``. Leaving out a node whose weight is near 0 changes nothing, so
    its credit says nothing about what it would do if it were trusted again; the lift asks
    exactly that, on the same scale as the leave-one-out credit of a node at that weight,
    at no extra cost (it replaces the node's leave-one-out candidate).

    ``extra_rows`` (exact credit only): weight vectors the caller wants scored too, in the
    same batched pass (one validation call a round instead of two); their scores are
    :attr:`LeaveOneOut.extra_scores`.

    Non-finite losses (a candidate that diverges) give a finite credit: the candidate
    counts as very bad (loss 1e6), never as NaN.
    """
    lr = np.float32(server_learning_rate)
    combined = second_gradient(probabilities, first_gradients)
    # Which nodes are lifted, and the weight each node's candidate gives it (0: left out).
    lifted = np.zeros(probabilities.shape, dtype=bool)
    targets = np.zeros(probabilities.shape)
    if lift_to is not None:
        lifted = np.asarray(lift_to) > probabilities
        targets = np.where(lifted, lift_to, 0.0)
    if validation_gradient is not None:
        if extra_rows is not None:
            raise ValueError("extra_rows: exact credit only")
        return _first_order_leave_one_out(
            validate,
            validation_gradient,
            weights - lr * combined,
            probabilities,
            first_gradients,
            combined,
            float(lr),
            step_normalised,
            None if lift_to is None else (lifted, targets),
        )
    stepped = weights - lr * combined
    n = first_gradients.shape[0]
    extra = np.empty((0, weights.shape[0]), np.float32) if extra_rows is None else extra_rows
    if lift_to is not None:
        without = reweighted_gradients(
            probabilities, first_gradients, targets, step_normalised=step_normalised
        )
        scores = validate(
            np.concatenate([stepped[None, :], weights[None, :] - lr * without, extra])
        )
    else:

        def rows(start: int, stop: int) -> FloatArray:
            # Row 0 is w − ηG, row i + 1 is w − ηG₋ᵢ, then the extra rows: only this
            # block's G₋ᵢ are formed.
            parts = [stepped[None, :]] if start == 0 else []
            nodes = slice(max(start, 1) - 1, min(stop, n + 1) - 1)
            if nodes.stop > nodes.start:
                without = leave_one_out_rows(
                    probabilities, first_gradients, combined, nodes, step_normalised=step_normalised
                )
                parts.append(weights[None, :] - lr * without)
            if stop > n + 1:
                parts.append(extra[max(start, n + 1) - n - 1 : stop - n - 1])
            return np.concatenate(parts)

        scores = score_in_blocks(validate, n + 1 + extra.shape[0], rows)
    extra_scores = None
    if extra_rows is not None:
        extra_scores = _rows_of(scores, slice(n + 1, None))
        scores = _rows_of(scores, slice(0, n + 1))
    # A diverging candidate (inf or NaN loss) counts as very bad, so removing the node
    # that makes a step diverge is credited, never NaN.
    losses = np.nan_to_num(scores.losses, nan=1e6, posinf=1e6)
    loss_after = float(scores.losses[0])
    credit = losses[1:] - losses[0]  # B − B₋ᵢ = (−loss) − (−loss₋ᵢ)
    # A lifted node's candidate has more of it, not less: the sign turns.
    credit = np.where(lifted, -credit, credit)
    if first_gradients.shape[0] == 1:
        credit = np.zeros(1)
    after = None if scores.sample_losses is None else np.asarray(scores.sample_losses[0])
    candidates = (
        None
        if scores.sample_losses is None
        else np.asarray(scores.sample_losses[1:], dtype=np.float64)
    )
    return LeaveOneOut(
        credit=np.asarray(credit, dtype=np.float64),
        loss_after=loss_after,
        sample_losses_after=after,
        exact_nodes=n,
        sample_losses_without=candidates,
        lifted=lifted,
        extra_scores=extra_scores,
    )


def _rows_of(scores: ValidationScores, rows: slice) -> ValidationScores:
    """The scores of some rows of a scored stack."""
    return ValidationScores(
        losses=np.asarray(scores.losses)[rows],
        accuracies=np.asarray(scores.accuracies)[rows],
        sample_losses=None
        if scores.sample_losses is None
        else np.asarray(scores.sample_losses)[rows],
    )


def _first_order_leave_one_out(
    validate: ValidationFn,
    validation_gradient: ValidationGradientFn,
    after: FloatArray,
    probabilities: npt.NDArray[np.float64],
    first_gradients: FloatArray,
    combined: FloatArray,
    lr: float,
    step_normalised: bool,
    lift: tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]] | None = None,
) -> LeaveOneOut:
    """``credit_i = η ∇L(a)·(G − G₋ᵢ)`` at ``a = w − ηG``, from N dot products; the
    :data:`RECHECK` lowest and highest are then scored exactly (only their ``G₋ᵢ`` rows
    are formed). ``lift``: (which nodes are lifted, the weight each is lifted to); a lifted
    node has ``G₊ᵢ``, its weight moved there, in place of ``G₋ᵢ``, and the sign turned, as
    in exact credit."""
    at_after = validation_gradient(after)
    gradient = at_after.gradient.astype(np.float64)
    total = combined.astype(np.float64)
    p = probabilities.astype(np.float64)
    rest = 1.0 - p
    safe = np.where(rest > 1e-12, rest, 1.0)
    lifted, target = lift if lift is not None else (np.zeros(p.shape, dtype=bool), np.zeros_like(p))
    # Gₜ = a G + b gᵢ moves node i's weight from pᵢ to tᵢ and rescales the others by
    # (1 − tᵢ)/(1 − pᵢ): t = 0 leaves it out (a = 1/(1 − p), b = −p/(1 − p)).
    a = (1.0 - target) / safe
    b = (target - p) / safe
    sign = np.where(lifted, -1.0, 1.0)
    along_total = float(gradient @ total)
    # One pass over the (N, dim) rows for every product below: ∇L·gᵢ, G·gᵢ and |gᵢ|².
    products, squares = row_products(first_gradients, np.stack([gradient, total]))
    along_rows, cross = products[:, 0], products[:, 1]
    # ∇L·Gₜ; a node holding all the weight leaves 0.
    along_without = np.where(rest > 1e-12, a * along_total + b * along_rows, 0.0)
    n = first_gradients.shape[0]
    recheck = n > 1 and RECHECK > 0
    total_sq = float(total @ total)
    # |Gₜ|² = a²|G|² + 2ab G·gᵢ + b²|gᵢ|², from the same dot products.
    target_sq = np.maximum(a**2 * total_sq + 2 * a * b * cross + b**2 * squares, 0.0)
    if step_normalised:
        # Gₜ rescaled to |G|.
        total_norm = float(np.sqrt(total_sq))
        without_norm = np.sqrt(target_sq)
        scale = np.where(without_norm > 1e-30, total_norm / np.maximum(without_norm, 1e-30), 0.0)
        along_without = np.where(rest > 1e-12, along_without * scale, 0.0)
    credit = sign * lr * (along_total - along_without)
    if n == 1:
        credit = np.zeros(1)
    credit = np.nan_to_num(credit, nan=0.0, posinf=1e6, neginf=-1e6)
    exact_nodes = 0
    if recheck:
        # |G − Gₜ|², from the same dot products: the size of the step first order drops.
        without_dot = np.where(rest > 1e-12, a * total_sq + b * cross, 0.0)
        without_sq = np.where(rest > 1e-12, target_sq, 0.0)
        row_scale = scale if step_normalised else np.ones(n)
        change_sq = np.maximum(
            total_sq - 2 * row_scale * without_dot + row_scale**2 * without_sq, 0.0
        )

        # w − ηGₜ = (w − ηG) + ηG − η sᵢ (a G + b gᵢ) = (w − ηG) + αᵢ G + βᵢ gᵢ: formed a
        # row at a time in float64, so no (K, dim) float64 temporaries (a node holding all
        # the weight leaves Gₜ = 0: αᵢ = η, βᵢ = 0).
        kept = rest > 1e-12
        along = np.where(kept, lr * (1.0 - row_scale * a), lr)
        own = np.where(kept, -lr * row_scale * b, 0.0)
        start = after.astype(np.float64)

        def exact(chosen: npt.NDArray[np.intp], with_after: bool) -> npt.NDArray[np.float64]:
            first = 1 if with_after else 0
            candidates = np.empty((first + chosen.size, after.shape[0]), dtype=np.float32)
            if with_after:
                candidates[0] = after
            for row, i in enumerate(chosen, start=first):
                candidates[row] = start + along[i] * total + own[i] * first_gradients[i]
            losses = validate(candidates).losses
            return np.nan_to_num(np.asarray(losses, dtype=np.float64), nan=1e6, posinf=1e6)

        credit, exact_nodes = _recheck_extremes(credit, lr**2 * change_sq, exact, sign)
    return LeaveOneOut(
        credit=np.asarray(credit, dtype=np.float64),
        loss_after=at_after.loss,
        sample_losses_after=at_after.sample_losses,
        exact_nodes=exact_nodes,
        lifted=None if lift is None else lifted,
    )


#: At most this many nodes beyond the ``RECHECK`` lowest and highest are re-checked to make
#: the lowest ``RECHECK`` exact: at most ``2 × RECHECK + 1 + RECHECK_EXTEND`` scored
#: candidates a round (21), whatever N, against ``N + 1`` for exact leave-one-out credit.
RECHECK_EXTEND = 10


def _recheck_extremes(
    first: npt.NDArray[np.float64],
    step_sq: npt.NDArray[np.float64],
    exact: Callable[[npt.NDArray[np.intp], bool], npt.NDArray[np.float64]],
    sign: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.float64], int]:
    """First-order credit with its :data:`RECHECK` lowest and highest replaced by exact
    credit, and the lowest ``RECHECK`` *certified*: the same nodes exact credit would rank
    lowest.

    First order drops a term of the order of ``|η(G − G₋ᵢ)|²`` (``step_sq``). Its factor is
    estimated from the nodes checked so far, ``c = max |exactᵢ − firstᵢ| / step_sqᵢ``, and
    an unchecked node ``j`` could still be among the lowest only if
    ``first_j − c step_sq_j`` is below the ``RECHECK``-th lowest exact credit. While one
    could, the next ``RECHECK`` lowest unchecked nodes are checked, up to
    :data:`RECHECK_EXTEND` more. ``exact(chosen, with_after)`` scores the chosen nodes'
    leave-one-out candidates (and first ``w − ηG``, the reference, when asked); ``sign``:
    −1 for a node whose candidate lifts it (its exact credit is the reference's loss less
    the candidate's). Returns the credit and how many nodes were checked."""
    n = first.size
    turned = np.ones(n) if sign is None else sign
    order = np.argsort(first, kind="stable")
    chosen = np.unique(np.concatenate([order[:RECHECK], order[-RECHECK:]]))
    losses = exact(chosen, True)
    reference = losses[0]
    credit = first.copy()
    credit[chosen] = turned[chosen] * (losses[1:] - reference)
    checked = np.zeros(n, dtype=bool)
    checked[chosen] = True
    extended = 0
    while not checked.all() and extended < RECHECK_EXTEND:
        big = step_sq[checked] > 1e-30
        errors = np.abs(credit[checked] - first[checked])
        factor = float(np.max(errors[big] / step_sq[checked][big])) if big.any() else 0.0
        lowest = np.sort(credit[checked])[: min(RECHECK, int(checked.sum()))]
        could_be_lower = ~checked & (first - factor * step_sq < lowest[-1])
        if not could_be_lower.any():
            break
        next_up = [i for i in order if could_be_lower[i]][: min(RECHECK, RECHECK_EXTEND - extended)]
        picked = np.asarray(next_up, dtype=np.intp)
        credit[picked] = turned[picked] * (exact(picked, False) - reference)
        checked[picked] = True
        extended += picked.size
    return credit, int(checked.sum())
