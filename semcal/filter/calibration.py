"""The calibration math: scores, acceptance probabilities, divergences and the Monte Carlo.

Plain numpy and scipy (scikit-learn for one logistic fit), no file I/O. The pieces, in the order the evaluation uses them:

1. Per-token differences d = log p_real - log p_general of one text.
2. A score per text: the paper's clipped sum (`clipped_scores`) or the plain sum.
3. Optionally a shift so that exp(score) averages 1 over held-out general texts
   (`heldout_shift`): the true density ratio p_real / p_general averages 1 over the
   general distribution, an estimated one often does not.
4. Acceptance a = min(1, exp(score) / M), M = |general_train| / |real_train|.
5. `monte_carlo`: n_runs rejection-sampling runs at once (one uniform matrix per chunk of
   runs, shared by every filter), with KL, total variation and pass rate per run.

Conventions: KL uses the natural log, 0 log 0 = 0, and is +inf when q = 0 < p. Standard
deviations over runs are population standard deviations (ddof=0, as numpy's default and the
paper's code); they describe the spread of single runs, not the standard error of the mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import log_expit, logsumexp, rel_entr

# Cumulative shares are compared with top_p up to this relative tolerance, so a share equal
# to top_p in exact arithmetic (e.g. 3 of 4 equal tokens at top_p=0.75) counts as within it.
_SHARE_TOLERANCE = 1e-12
# Rows of the padded difference matrix handled at once by clipped_scores (bounds memory).
_MAX_PADDED_CELLS = 4_000_000


def token_differences(real_log_probs: np.ndarray, general_log_probs: np.ndarray) -> np.ndarray:
    """d = log p_real - log p_general per token (both arrays over the same tokens)."""
    real_log_probs = np.asarray(real_log_probs, dtype=np.float64)
    general_log_probs = np.asarray(general_log_probs, dtype=np.float64)
    if real_log_probs.shape != general_log_probs.shape:
        raise ValueError(f"token counts differ: {real_log_probs.shape} vs {general_log_probs.shape}")
    return real_log_probs - general_log_probs


def clipped_scores(diffs_per_text: Sequence[np.ndarray], top_p: float = 0.75) -> np.ndarray:
    """The paper's clipped score of each text.

    Tokens are sorted by |d| descending; ties keep their original order (a stable sort), so of
    two tokens with equal |d| the earlier one is kept first. Tokens are kept while the
    cumulative share of the text's total |d| stays within top_p; the first (largest) token is
    always kept. The score is the sum of the kept signed d, and 0 for a text whose d are all 0
    (or that has no tokens). top_p=0 keeps only the largest token; top_p=1 keeps all.
    """
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be between 0 and 1 (got {top_p})")
    scores = np.zeros(len(diffs_per_text), dtype=np.float64)
    if not len(diffs_per_text):
        return scores
    lengths = np.array([len(d) for d in diffs_per_text])
    longest = max(1, int(lengths.max()))
    rows_per_block = max(1, _MAX_PADDED_CELLS // longest)
    for start in range(0, len(diffs_per_text), rows_per_block):
        block = diffs_per_text[start : start + rows_per_block]
        width = max(1, max(len(d) for d in block))
        # Pad with zeros: they sort after every real token (stable sort, placed last) and add 0.
        padded = np.zeros((len(block), width), dtype=np.float64)
        for row, diffs in enumerate(block):
            padded[row, : len(diffs)] = diffs
        order = np.argsort(-np.abs(padded), axis=1, kind="stable")
        sorted_diffs = np.take_along_axis(padded, order, axis=1)
        cumulative = np.cumsum(np.abs(sorted_diffs), axis=1)
        total = cumulative[:, -1:]
        keep = cumulative <= top_p * total * (1.0 + _SHARE_TOLERANCE)
        keep[:, 0] = True
        scores[start : start + len(block)] = np.where(keep, sorted_diffs, 0.0).sum(axis=1)
    return scores


def sum_scores(diffs_per_text: Sequence[np.ndarray]) -> np.ndarray:
    """The unclipped score: log p_real(x) - log p_general(x), the sum of all d."""
    return np.array([float(np.sum(d)) for d in diffs_per_text], dtype=np.float64)


def log_ratio_scores(diffs_per_text: Sequence[np.ndarray], method: str, top_p: float = 0.75) -> np.ndarray:
    """Each text's score, an estimate of log p_real(x) / p_general(x), by method name:
    "clipped" (the paper) or "sum"."""
    if method == "clipped":
        return clipped_scores(diffs_per_text, top_p)
    if method == "sum":
        return sum_scores(diffs_per_text)
    raise ValueError(f"unknown score method {method!r}: use 'clipped' or 'sum'")


def log_mean_exp(values: np.ndarray) -> float:
    """log(mean(exp(values))), computed without overflow."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("log_mean_exp of no values")
    return float(logsumexp(values) - np.log(values.size))


def heldout_shift(heldout_scores: np.ndarray) -> float:
    """The shift c that makes exp(score - c) average 1 over the held-out general texts.

    Computed on held-out texts, never on the texts being filtered, so the filter does not
    use the test set to calibrate itself.
    """
    return log_mean_exp(heldout_scores)


def ratio_m(n_general_train: int, n_real_train: int) -> float:
    """M = |general_train| / |real_train|: the bound on p_real / p_general for a subset."""
    if n_general_train <= 0 or n_real_train <= 0:
        raise ValueError(f"split sizes must be positive (general {n_general_train}, real {n_real_train})")
    return n_general_train / n_real_train


def accept_probs(scores: np.ndarray, m: float) -> np.ndarray:
    """a = min(1, exp(s) / M), computed in log space so large scores do not overflow."""
    return np.exp(np.minimum(0.0, np.asarray(scores, dtype=np.float64) - np.log(m)))


def oracle_accept_probs(label_codes: np.ndarray, real: np.ndarray, general: np.ndarray, m: float) -> np.ndarray:
    """The filter that knows each text's label y: a = min(1, (q(y) / p(y)) / M).

    `real` is q (real_train's label distribution), `general` is p (general_train's). A label
    with p(y) = 0 gets a = 0. No filter that sees only the text can do better in expectation.
    """
    real, general = np.asarray(real, dtype=np.float64), np.asarray(general, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(general > 0, real / general, 0.0)
    return np.minimum(1.0, ratio / m)[np.asarray(label_codes)]


def label_distribution(label_codes: np.ndarray, n_labels: int) -> np.ndarray:
    """Normalised label frequencies of codes 0..n_labels-1."""
    counts = np.bincount(np.asarray(label_codes, dtype=np.int64), minlength=n_labels).astype(np.float64)
    return counts / counts.sum()


def smooth(distribution: np.ndarray, epsilon: float) -> np.ndarray:
    """Add epsilon to every label's frequency and renormalise (epsilon=0: unchanged)."""
    if epsilon <= 0:
        return np.asarray(distribution, dtype=np.float64)
    distribution = np.asarray(distribution, dtype=np.float64)
    n_labels = distribution.shape[-1]
    return (distribution + epsilon) / (distribution.sum(axis=-1, keepdims=True) + n_labels * epsilon)


def kl_divergence(p: np.ndarray, q: np.ndarray, epsilon: float = 0.0) -> np.ndarray | float:
    """KL(p || q) in nats over the last axis; 0 log 0 = 0, +inf where q = 0 < p.

    p may be a matrix of distributions (one per row); rows of NaN give NaN. With epsilon > 0
    both sides are smoothed first (`smooth`), which keeps KL finite.
    """
    # rel_entr is p log(p / q) with 0 log 0 = 0 and +inf where q = 0 < p; NaN stays NaN.
    result = rel_entr(smooth(p, epsilon), smooth(q, epsilon)).sum(axis=-1)
    return float(result) if np.ndim(result) == 0 else result


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray | float:
    """Total variation distance 0.5 * sum |p - q| over the last axis."""
    result = 0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum(axis=-1)
    return float(result) if np.ndim(result) == 0 else result


def expected_filtered_distribution(accept: np.ndarray, label_codes: np.ndarray, n_labels: int) -> np.ndarray:
    """The filtered label distribution in expectation: sum of a per label, normalised."""
    mass = np.bincount(np.asarray(label_codes, dtype=np.int64), weights=accept, minlength=n_labels)
    total = mass.sum()
    return mass / total if total > 0 else np.full(n_labels, np.nan)


def deception_reduction(kl_filtered: float, kl_general: float) -> float:
    """1 - KL(filtered || real) / KL(general || real); NaN where the ratio means nothing."""
    if not np.isfinite(kl_general) or kl_general <= 0 or np.isnan(kl_filtered):
        return float("nan")
    return 1.0 - kl_filtered / kl_general


@dataclass
class FilterRuns:
    """Per-run statistics of one filter over the Monte Carlo runs.

    kl, tvd, pass_rate: one value per run (NaN KL/TVD for a run that kept nothing).
    mean_distribution: the filtered label distribution averaged over non-empty runs.
    """

    kl: np.ndarray
    tvd: np.ndarray
    pass_rate: np.ndarray
    mean_distribution: np.ndarray

    def summary(self) -> dict[str, float | int]:
        """Mean and population std (ddof=0) over runs; empty runs are left out of KL/TVD."""
        kept = ~np.isnan(self.kl)
        infinite = np.isinf(self.kl)
        kl = self.kl[kept]
        return {
            "kl_mean": _mean(kl),
            "kl_std": _std(kl) if not np.isinf(kl).any() else float("nan"),
            "kl_infinite_runs": int(infinite.sum()),
            "tvd_mean": _mean(self.tvd[kept]),
            "tvd_std": _std(self.tvd[kept]),
            "pass_rate_mean": float(np.mean(self.pass_rate)),
            "pass_rate_std": _std(self.pass_rate),
            "empty_runs": int((~kept).sum()),
            "n_runs": int(self.kl.size),
        }


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def _std(values: np.ndarray) -> float:
    """Population std; exactly 0 for identical values (np.std leaves rounding residue there)."""
    if not values.size:
        return float("nan")
    return 0.0 if np.ptp(values) == 0 else float(np.std(values))


def monte_carlo(
    accept_by_filter: Mapping[str, np.ndarray],
    label_codes: np.ndarray,
    real: np.ndarray,
    n_runs: int,
    seed: int,
    epsilon: float = 0.0,
    chunk_runs: int = 100,
    progress: bool = False,
) -> dict[str, FilterRuns]:
    """n_runs seeded rejection-sampling runs of every filter at once.

    In each run every text is kept with its filter's acceptance probability. All filters use
    the same uniform draws (common random numbers), so their differences are not sampling
    noise. Runs are drawn in chunks of `chunk_runs`, one (runs x texts) uniform matrix per
    chunk, consumed in order from one generator: the result does not depend on chunk_runs,
    and run r uses the same draws as a per-run loop calling rng.random(n_texts) r-th time.
    Label counts per run are a matrix product of the keep matrix with the one-hot labels.
    """
    if n_runs < 1:
        raise ValueError(f"n_runs must be at least 1 (got {n_runs})")
    label_codes = np.asarray(label_codes, dtype=np.int64)
    real = np.asarray(real, dtype=np.float64)
    n_texts, n_labels = label_codes.size, real.size
    one_hot = np.zeros((n_texts, n_labels), dtype=np.float32)
    one_hot[np.arange(n_texts), label_codes] = 1.0
    accepts = {name: np.asarray(a, dtype=np.float64) for name, a in accept_by_filter.items()}
    counts = {name: np.empty((n_runs, n_labels), dtype=np.float64) for name in accepts}
    rng = np.random.default_rng(seed)
    starts = range(0, n_runs, chunk_runs)
    if progress:
        from semcal.core import console

        starts = console.progress(starts, desc="monte carlo", total=len(starts), unit="chunk")
    for start in starts:
        stop = min(start + chunk_runs, n_runs)
        uniforms = rng.random((stop - start, n_texts))
        for name, accept in accepts.items():
            # float32 counts are exact below 2**24 texts per label.
            counts[name][start:stop] = (uniforms < accept).astype(np.float32) @ one_hot
    results = {}
    for name, filter_counts in counts.items():
        kept = filter_counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            distributions = filter_counts / kept[:, None]  # NaN rows for runs that kept nothing
        non_empty = kept > 0
        results[name] = FilterRuns(
            kl=np.asarray(kl_divergence(distributions, real, epsilon)),
            tvd=np.asarray(total_variation(distributions, real)),
            pass_rate=kept / n_texts,
            mean_distribution=(distributions[non_empty].mean(axis=0) if non_empty.any() else np.full(n_labels, np.nan)),
        )
    return results


def fit_membership_logistic(scores: np.ndarray, is_real: np.ndarray, ridge: float = 1e-6) -> tuple[float, float]:
    """Intercept and slope of P(real | x) = sigmoid(intercept + slope * score).

    Fitted on held-out general_train texts, whose membership in real_train is known. Because
    real_train is a subset of general_train, P(real | x) over general_train texts equals
    p_real(x) / (M p_general(x)): exactly the acceptance probability. The fit corrects the
    offset (a real model trained on less data, or longer, than the general one) and the scale
    (noise in the log-ratio) of the language models' score. Maximum likelihood with a tiny
    ridge (scikit-learn's LogisticRegression, C = 1 / ridge), on the standardised score for
    conditioning.
    """
    from sklearn.linear_model import LogisticRegression

    scores = np.asarray(scores, dtype=np.float64)
    is_real = np.asarray(is_real, dtype=np.float64)
    if scores.shape != is_real.shape or scores.ndim != 1:
        raise ValueError("scores and is_real must be 1-D arrays of the same length")
    if is_real.min() == is_real.max():
        raise ValueError("the held-out texts must include both real_train members and non-members")
    center, spread = float(scores.mean()), float(scores.std()) or 1.0
    model = LogisticRegression(C=1.0 / ridge, tol=1e-10, max_iter=1000)
    model.fit(((scores - center) / spread)[:, None], is_real.astype(int))
    slope = float(model.coef_[0, 0]) / spread
    return float(model.intercept_[0]) - slope * center, slope


def logistic_log_ratio(scores: np.ndarray, intercept: float, slope: float, m: float) -> np.ndarray:
    """The calibrated log density ratio log(M * sigmoid(intercept + slope * score)).

    With it, accept_probs gives min(1, sigmoid(...)) = sigmoid(...), the fitted P(real | x).
    """
    return np.log(m) + log_expit(intercept + slope * np.asarray(scores, dtype=np.float64))


def fit_matched_scale(heldout_scores: np.ndarray, is_real: np.ndarray, max_scale: float = 20.0) -> float:
    """The scale b >= 0 at which held-out general texts, weighted by exp(b * score), have the
    mean score of the held-out real_train members.

    If exp(b * score) were proportional to the true ratio p_real / p_general, reweighting
    general texts by it would give the real distribution, so every statistic of the
    reweighted texts would match the real ones; b is chosen so that the score itself does.
    A language model learns only part of a label shift, which shrinks score differences
    (b > 1 restores them); noise in the score needs b < 1. Label-free: it uses only which
    held-out texts belong to real_train. 0 when real members score no higher than the rest.
    """
    scores = np.asarray(heldout_scores, dtype=np.float64)
    is_real = np.asarray(is_real, dtype=bool)
    if scores.shape != is_real.shape or not is_real.any():
        raise ValueError("scores and is_real must have the same shape, with at least one real_train member")
    target = float(scores[is_real].mean())

    def weighted_mean(scale: float) -> float:
        logits = scale * scores
        weights = np.exp(logits - logits.max())
        return float(np.sum(weights * scores) / np.sum(weights))

    # The weighted mean rises with the scale (its derivative is a weighted variance).
    if weighted_mean(0.0) >= target:
        return 0.0
    if weighted_mean(max_scale) <= target:
        return max_scale
    return float(brentq(lambda scale: weighted_mean(scale) - target, 0.0, max_scale, xtol=1e-12))
