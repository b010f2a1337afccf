"""How much of the stream could the trusted corpus have been drawn from? A mixture-proportion
estimate from positive-unlabelled learning (numpy only, no I/O).

The stream is a mixture: alpha * P_trusted + (1 - alpha) * P_other. Given a classifier's
out-of-fold scores of trusted texts (the positives) and of stream texts (the unlabelled), the
share of the stream above a score threshold c is q_u(c) = alpha q_p(c) + (1 - alpha) q_o(c)
>= alpha q_p(c), so every threshold gives an upper bound q_u(c) / q_p(c) on alpha, tight
where only trusted-like texts score (the top bin). Best Bin Estimation (Garg, Wu, Smola,
Balakrishnan and Lipton, "Mixture Proportion Estimation and PU Learning: A Modern Approach",
NeurIPS 2021) picks the threshold whose upper confidence bound is lowest and returns the
ratio there. The interval is a bootstrap of both samples (percentiles).

It was chosen over Elkan-Noto's estimator, which divides by the classifier's mean score on
the positives and so needs calibrated probabilities; BBE needs only a ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DELTA, GAMMA = 0.1, 0.01  # BBE's confidence level and slack, the paper's values


@dataclass
class MixtureShare:
    """The estimate of alpha and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float  # the interval's coverage, e.g. 0.9


def best_bin_estimate(positive: np.ndarray, unlabelled: np.ndarray) -> float:
    """BBE's alpha from scores of positives and of unlabelled texts (higher: more positive-like)."""
    positive, unlabelled = np.asarray(positive, dtype=np.float64), np.asarray(unlabelled, dtype=np.float64)
    if not len(positive) or not len(unlabelled):
        raise ValueError("best_bin_estimate needs scores of both samples")
    thresholds = np.unique(np.concatenate([positive, unlabelled]))
    # Shares at or above each threshold, from the sorted samples.
    q_p = 1.0 - np.searchsorted(np.sort(positive), thresholds, side="left") / len(positive)
    q_u = 1.0 - np.searchsorted(np.sort(unlabelled), thresholds, side="left") / len(unlabelled)
    slack = np.sqrt(np.log(4 / DELTA) / (2 * len(positive))) + np.sqrt(np.log(4 / DELTA) / (2 * len(unlabelled)))
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(q_p > 0, (q_u + (1 + GAMMA) * slack) / q_p, np.inf)
    best = int(np.argmin(bound))
    return float(min(1.0, q_u[best] / q_p[best]))


def mixture_share(
    positive: np.ndarray, unlabelled: np.ndarray, resamples: int = 200, level: float = 0.9, seed: int = 0
) -> MixtureShare:
    """best_bin_estimate with a bootstrap percentile interval (both samples resampled)."""
    rng = np.random.default_rng(seed)
    positive, unlabelled = np.asarray(positive, dtype=np.float64), np.asarray(unlabelled, dtype=np.float64)
    estimates = [
        best_bin_estimate(rng.choice(positive, len(positive)), rng.choice(unlabelled, len(unlabelled)))
        for _ in range(resamples)
    ]
    low, high = np.quantile(estimates, [(1 - level) / 2, (1 + level) / 2])
    return MixtureShare(best_bin_estimate(positive, unlabelled), float(low), float(high), level)
