"""The label-shift math of adaptation and drift alarms (semcal.stream.adapt): numpy / scipy, no I/O.

Under label shift the stream's label prior moves from p to p' while P(x | y) stays: the prior
is estimated by EM from a label posterior P(y | x) (Saerens, Latinne & Decaestecker, 2002),
the density ratio moves by Z(x) = sum_y P(y | x) p'(y) / p(y), and per-label weights on the
shifted posterior's log-probabilities match the accepted label mix (`match_label_mix`). The
pass rate a stream of prior p' allows for a mix t is `feasible_pass_rate`;
"""

from __future__ import annotations

import numpy as np

from semcal.filter.ratio_calibration import stream_shift

_EM_TOLERANCE = 1e-7
_EM_MAX_ITERATIONS = 300
_MIN_WEIGHT = 1e-12  # Z(x) and p'(y) are kept above this before a log or a division
_MIN_POSTERIOR = 1e-4  # P(y | x) is kept above this before its log is a feature: one item cannot dominate
_KL_FLOOR = 1e-3  # added to each label share before the KL the label weights minimise
_RATE_SWING = 2.0  # the rest of a block passes between 1/(2M) and 2/M to meet the block's pass rate


def em_prior(posterior: np.ndarray, reference_prior: np.ndarray, pseudo_count: float = 1.0) -> np.ndarray:
    """The label prior p' of the items whose posterior under `reference_prior` is `posterior`, by EM.

    Rows may be stacked windows: posterior (..., n, K) gives priors (..., K). E-step: P'(y | x)
    proportional to P(y | x) p'(y) / p(y); M-step: p'(y) = mean over x of P'(y | x). A pseudo-count
    of `pseudo_count` items spread as the reference prior keeps p' off 0: a label estimated
    absent would make Z(x) vanish for its items and the corrected ratio explode.
    """
    posterior = np.asarray(posterior, dtype=np.float64)
    reference = np.maximum(np.asarray(reference_prior, dtype=np.float64), _MIN_WEIGHT)
    n = posterior.shape[-2]

    def em_step(prior: np.ndarray) -> np.ndarray:
        # sum_x P'(y | x) = w(y) sum_x P(y | x) / Z(x), Z = P w: two matrix products, no (n, K) temporary
        weights = _prior_weights(prior, reference)
        inverse_z = 1.0 / np.maximum(np.matmul(posterior, weights[..., :, None]), _MIN_WEIGHT)
        tilted_sum = weights * np.matmul(np.swapaxes(inverse_z, -1, -2), posterior)[..., 0, :]
        return (tilted_sum + pseudo_count * reference) / (n + pseudo_count)

    # SQUAREM (Varadhan & Roland, 2008): an extrapolated step from two EM steps, then one EM step
    # from there. EM of a soft posterior converges linearly and slowly (150-300 steps); the
    # likelihood is concave in p', so the accelerated iterates reach the same maximum.
    prior = np.broadcast_to(reference, posterior.shape[:-2] + reference.shape).copy()
    for _ in range(_EM_MAX_ITERATIONS // 3):
        first = em_step(prior)
        second = em_step(first)
        change, curvature = first - prior, second - 2.0 * first + prior
        norm_change = np.sqrt(np.sum(change**2, axis=-1, keepdims=True))
        norm_curvature = np.sqrt(np.sum(curvature**2, axis=-1, keepdims=True))
        step = -np.maximum(1.0, norm_change / np.maximum(norm_curvature, _MIN_WEIGHT))  # -1 is plain EM (second)
        jumped = prior - 2.0 * step * change + step**2 * curvature
        # A jump off the simplex falls back to the two plain EM steps.
        jumped = np.where(np.all(jumped > 0, axis=-1, keepdims=True), jumped, second)
        updated = em_step(jumped / jumped.sum(axis=-1, keepdims=True))
        done = np.max(np.abs(updated - prior)) < _EM_TOLERANCE
        prior = updated
        if done:
            break
    return prior


def log_prior_correction(posterior: np.ndarray, new_prior: np.ndarray, reference_prior: np.ndarray) -> np.ndarray:
    """log Z(x) = log sum_y P(y | x) p'(y) / p(y): log p'(x) / p(x) under label shift."""
    return np.log(np.maximum(np.asarray(posterior) @ _prior_weights(new_prior, reference_prior), _MIN_WEIGHT))


def shifted_posterior(posterior: np.ndarray, new_prior: np.ndarray, reference_prior: np.ndarray) -> np.ndarray:
    """P'(y | x) = P(y | x) (p'(y) / p(y)) / Z(x): the posterior under the prior p'."""
    tilted = np.asarray(posterior) * _prior_weights(new_prior, reference_prior)
    return tilted / np.maximum(tilted.sum(axis=-1, keepdims=True), _MIN_WEIGHT)


def _prior_weights(new_prior: np.ndarray, reference_prior: np.ndarray) -> np.ndarray:
    return np.maximum(new_prior, _MIN_WEIGHT) / np.maximum(reference_prior, _MIN_WEIGHT)


def match_label_mix(
    scores: np.ndarray,
    posterior: np.ndarray,
    target: np.ndarray,
    m: float,
    ridge: float,
    start: np.ndarray,
    weights: np.ndarray | None = None,
    pass_rate: float | None = None,
) -> tuple[np.ndarray, float]:
    """Label weights c and offset d for which min(1, exp(s + F c + d) / M), F = log P(y | x),
    passes `pass_rate` (default 1/M) of the items and accepts, counted by the posterior, the
    label mix `target` (items weighted by `weights`, default 1).

    argmin over (c, d) of KL(accepted || target) + ridge * mean(c^2) + (log pass rate - log pass_rate)^2
    by L-BFGS with the exact gradient (milliseconds for 5,000 items), from c = `start`. Each
    share is floored at 1e-3 before the KL (a label absent from the items stays finite).
    """
    from scipy.optimize import minimize

    features = np.column_stack([np.log(np.maximum(posterior, _MIN_POSTERIOR)), np.ones(len(scores))])
    target = np.asarray(target, dtype=np.float64) + _KL_FLOOR
    item_weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    size = float(item_weights.sum())
    k, log_m = posterior.shape[1], float(np.log(m))
    log_rate = float(np.log(1.0 / m if pass_rate is None else pass_rate))

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        shifted = scores + features @ theta
        accept = np.exp(np.minimum(0.0, shifted - log_m)) * item_weights
        slope = np.where(shifted < log_m, accept, 0.0)  # d accept / d score
        total = accept.sum()
        mix = accept @ posterior / total
        log_share = np.log((mix + _KL_FLOOR) / target)
        rate_error = float(np.log(total / size) - log_rate)
        loss = float((mix + _KL_FLOOR) @ log_share) + ridge * float(theta[:k] @ theta[:k]) / k + rate_error**2
        # d loss / d score_i: through the mix (d KL / d mix = log share + 1, d mix / d accept_i = (P_i - mix) / total)
        # and through the pass rate.
        through_mix = posterior @ (log_share + 1.0) - float(mix @ (log_share + 1.0))
        per_item = slope * (through_mix / total + 2.0 * rate_error / total)
        gradient = features.T @ per_item
        gradient[:k] += 2.0 * ridge * theta[:k] / k
        return loss, gradient

    first = np.append(
        np.asarray(start, dtype=np.float64), rate_offset(scores + features[:, :k] @ start, m, np.exp(log_rate))
    )
    found = minimize(loss_and_gradient, first, jac=True, method="L-BFGS-B")
    label_weights = np.asarray(found.x[:k], dtype=np.float64)
    return label_weights, float(found.x[k])


def rate_offset(scores: np.ndarray, m: float, pass_rate: float | None = None) -> float:
    """The offset d for which min(1, exp(s + d) / M) averages `pass_rate` (default 1/M) over `scores`."""
    return stream_shift(scores, m, 1.0, pass_rate)


def block_pass_rate(rate: float, block: int, judged: int, accepted: float, swing: float = _RATE_SWING) -> float:
    """The pass rate the rest of a block of `block` items needs for the whole block to pass
    `rate`, after `judged` items passed `accepted` (expected); kept within a factor `swing` of
    `rate` so a block that went far off is brought back over the next ones, not by one extreme chunk."""
    if judged == 0:
        return rate
    needed = (block * rate - accepted) / (block - judged)
    return float(np.clip(needed, rate / swing, min(1.0, swing * rate)))


def feasible_pass_rate(target: np.ndarray, prior: np.ndarray, m: float) -> float:
    """min(1/M, min_y p'(y) / t(y)): the most a stream of label prior p' can pass with the
    accepted items still in the mix t. 1/M unless p' holds too little of a label the mix needs
    (p'(y) < t(y) / M); the rate then falls so far that the label's whole share is its share of
    the accepted items. Passing more would top the rate up with what the mix has enough of
    (e.g. the flood itself): more items, a worse mix."""
    ratios = np.asarray(prior, dtype=np.float64) / np.maximum(np.asarray(target, dtype=np.float64), _MIN_WEIGHT)
    return float(min(1.0 / m, ratios.min()))
