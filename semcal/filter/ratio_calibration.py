"""Calibrating a log density ratio into an acceptance probability, from the run's own data.

Any estimate l(x) of log p_real(x) / p_general(x) (the language models' score, a
classifier's log-odds) becomes the filter

    a(x) = min(1, exp(t * l(x) + c) / M),      M = |general_train| / |real_train|,

with two parameters fitted per run, never tuned to a data set:

- the shift c by STREAM SELF-NORMALISATION (`stream_shift`): the mean of a(x) over the
  unlabeled general_test stream is exactly 1/M. A true ratio r = p_real / p_general with
  r <= M (real_train is a subset of general_train) passes exactly 1/M of general texts:
  E_general[r / M] = 1/M. An estimate with an offset (a real model that simply trained
  longer) would otherwise saturate at a = 1 and under-filter.
- the temperature t, by one of two label-free criteria on held-out general_train rows,
  whose membership in real_train is known without labels:
  * `likelihood`: the membership log-likelihood of P(real | x) = a(x) (over general_train,
    P(real | x) = r(x) / M exactly), with c tied to the stream normalisation. It gives the
    best calibrated per-text probability, which is flat when l is noisy.
  * `moments`: the held-out general rows, weighted by a(x), must have the held-out real
    members' means of INSTRUMENTS: features from another estimator, whose errors are not
    those of l. The true ratio reweights general into real, so it matches every statistic;
    matching l's own mean would reward its noise (the tilt also selects the noise), an
    independent view does not.

`fit_stacked` combines several features (the LM ratio, its length-normalised form, a
classifier's logit) by logistic regression on held-out membership. numpy / scipy /
scikit-learn only; no torch, no file I/O. Fitted parameters are plain floats.

Both criteria first test whether the held-out members differ from the other rows at all
(`shift_test`, a chi-square test at `significance`). If they do not, the temperature is 0:
every text passes with 1/M. Fitting a temperature to pure noise (a baseline split, where
real_train is a uniform subset) would only add sampling noise to the label distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import chi2

TEMPERATURE_CRITERIA = ("fixed", "likelihood", "moments")
# Probabilities are kept within [EPS, 1 - EPS] in the log-likelihood: a saturated a(x) = 1
# on one non-member would otherwise make the whole likelihood -inf.
_EPS = 1e-4
# Temperatures are searched in these multiples of 1 / std(l) on the stream.
_TEMPERATURE_RANGE = (0.02, 20.0)


@dataclass
class RatioCalibration:
    """a(x) = min(1, exp(temperature * l(x) + shift) / m); plain floats, JSON-ready."""

    temperature: float
    shift: float
    m: float
    criterion: str
    stream_pass_rate: float  # mean a(x) over the stream: 1/m by construction
    shift_statistic: float = float("nan")  # chi-square statistic of "the held-out members differ at all"
    shift_threshold: float = float("nan")  # its critical value; below it the temperature is 0 (flat, 1/M)

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def calibrated_accept(log_ratio: np.ndarray, m: float, temperature: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """min(1, exp(temperature * log_ratio + shift) / m), in log space so nothing overflows."""
    logits = temperature * np.asarray(log_ratio, dtype=np.float64) + shift - np.log(m)
    return np.exp(np.minimum(0.0, logits))


def stream_shift(
    stream_log_ratio: np.ndarray, m: float, temperature: float = 1.0, pass_rate: float | None = None
) -> float:
    """The shift c for which min(1, exp(temperature * l + c) / m) averages exactly `pass_rate`
    (default 1/m) over the stream.

    The mean acceptance rises monotonically with c from 0 to 1, so the root is unique. At
    c0 = log(pass_rate m) - log mean exp(t l) the unclipped values average pass_rate, so the
    clipped mean is at most that there; at c = log m - min(t l) every text passes (mean 1 >=
    pass_rate). brentq between.
    """
    if m <= 1.0:
        raise ValueError(f"M must exceed 1 for a subset to be selected (got {m})")
    scaled = temperature * np.asarray(stream_log_ratio, dtype=np.float64)
    if scaled.size == 0:
        raise ValueError("the stream holds no texts")
    target = 1.0 / m if pass_rate is None else float(pass_rate)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the pass rate must be in (0, 1] (got {target})")

    def excess(shift: float) -> float:
        return float(np.mean(calibrated_accept(scaled, m, 1.0, shift))) - target

    peak = float(scaled.max())
    low = float(np.log(target * m)) - (peak + np.log(np.mean(np.exp(scaled - peak))))
    high = float(np.log(m) - scaled.min())
    if excess(low) >= 0.0 or high <= low:  # nothing is clipped: exact already
        return low
    return float(brentq(excess, low, high, xtol=1e-12, rtol=1e-12, maxiter=200))


def membership_log_likelihood(
    heldout_log_ratio: np.ndarray, is_real: np.ndarray, m: float, temperature: float, shift: float
) -> float:
    """Mean log-likelihood of held-out membership under P(real | x) = calibrated_accept(...)."""
    p_real = np.clip(calibrated_accept(heldout_log_ratio, m, temperature, shift), _EPS, 1.0 - _EPS)
    is_real = np.asarray(is_real, dtype=bool)
    return float(np.mean(np.where(is_real, np.log(p_real), np.log1p(-p_real))))


def moment_discrepancy(
    heldout_log_ratio: np.ndarray,
    is_real: np.ndarray,
    instruments: np.ndarray,
    m: float,
    temperature: float,
    shift: float,
    weighted: np.ndarray | None = None,
) -> float:
    """Sum over instruments of ((a-weighted held-out mean - real members' mean) / std)^2.

    `weighted`: the held-out rows that are general rows, weighted by a (default all: the real
    rows are a subset of them); the others only set the real members' mean."""
    instruments = _as_matrix(instruments, len(heldout_log_ratio))
    is_real = np.asarray(is_real, dtype=bool)
    weights = calibrated_accept(heldout_log_ratio, m, temperature, shift)
    if weighted is not None:
        weights = np.where(weighted, weights, 0.0)
    if weights.sum() <= 0:
        return float("inf")
    weighted_mean = weights @ instruments / weights.sum()
    target = instruments[is_real].mean(axis=0)
    spread = instruments.std(axis=0)
    spread[spread == 0] = 1.0
    return float(np.sum(((weighted_mean - target) / spread) ** 2))


def calibrate_stream(
    stream_log_ratio: np.ndarray,
    m: float,
    criterion: str = "likelihood",
    heldout_log_ratio: np.ndarray | None = None,
    is_real: np.ndarray | None = None,
    instruments: np.ndarray | None = None,
    temperature: float = 1.0,
    significance: float = 0.01,
    weighted: np.ndarray | None = None,
) -> RatioCalibration:
    """Choose the temperature by `criterion` and the shift by stream self-normalisation.

    fixed: the given temperature. likelihood: needs held-out log-ratios and membership.
    moments: also needs the held-out rows' instruments (n_heldout x k, or n_heldout).
    Given instruments and membership, fixed and moments become flat (temperature 0) when
    `shift_test` finds no difference between members and the rest; likelihood tests itself.
    `weighted`: which held-out rows are general rows (default all; see moment_discrepancy).
    """
    statistic = threshold = float("nan")
    if criterion not in TEMPERATURE_CRITERIA:
        raise ValueError(f"criterion must be one of {TEMPERATURE_CRITERIA} (got {criterion!r})")
    stream_log_ratio = np.asarray(stream_log_ratio, dtype=np.float64)
    if criterion != "fixed":
        if heldout_log_ratio is None or is_real is None:
            raise ValueError(f"criterion={criterion} needs heldout_log_ratio and is_real")
        is_real = np.asarray(is_real, dtype=bool)
        if is_real.all() or not is_real.any():
            raise ValueError("the held-out rows must include real_train members and non-members")
        if criterion == "moments" and instruments is None:
            raise ValueError("criterion=moments needs instruments for the held-out rows")

        def loss(t: float) -> float:
            shift = stream_shift(stream_log_ratio, m, t)
            if criterion == "likelihood":
                return -membership_log_likelihood(heldout_log_ratio, is_real, m, t, shift)
            return moment_discrepancy(heldout_log_ratio, is_real, instruments, m, t, shift, weighted)

        temperature = _minimise_temperature(loss, float(np.std(stream_log_ratio)) or 1.0)
        if criterion == "likelihood":
            # Likelihood ratio against the flat filter (t = 0: P(real | x) = 1/M for every x).
            statistic = 2 * len(is_real) * (loss(0.0) - loss(temperature))
            threshold = float(chi2.ppf(1 - significance, df=1))
    if criterion != "likelihood" and instruments is not None and is_real is not None:
        statistic, threshold = shift_test(is_real, instruments, significance, weighted)
    if statistic <= threshold:  # False for NaN: no test, no flattening
        temperature = 0.0
    shift = stream_shift(stream_log_ratio, m, temperature)
    pass_rate = float(np.mean(calibrated_accept(stream_log_ratio, m, temperature, shift)))
    return RatioCalibration(
        float(temperature), float(shift), float(m), criterion, pass_rate, float(statistic), float(threshold)
    )


def shift_test(
    is_real: np.ndarray, instruments: np.ndarray, significance: float = 0.01, weighted: np.ndarray | None = None
) -> tuple[float, float]:
    """Hotelling-type chi-square statistic of "the members' instrument means equal the general
    held-out rows' means", and its critical value at `significance` (k instruments: k degrees of freedom).

    Members that are part of the general rows (the default, `weighted` None) differ from their
    mean with covariance Sigma * (1/n_real - 1/n); two separate samples with Sigma * (1/n_real + 1/n).
    """
    is_real = np.asarray(is_real, dtype=bool)
    instruments = _as_matrix(instruments, len(is_real))
    general = np.ones(len(is_real), dtype=bool) if weighted is None else np.asarray(weighted, dtype=bool)
    n, n_real = int(general.sum()), int(is_real.sum())
    difference = instruments[is_real].mean(axis=0) - instruments[general].mean(axis=0)
    factor = 1.0 / n_real - 1.0 / n if weighted is None else 1.0 / n_real + 1.0 / n
    covariance = np.atleast_2d(np.cov(instruments, rowvar=False)) * factor
    statistic = float(difference @ np.linalg.pinv(covariance) @ difference)
    return statistic, float(chi2.ppf(1 - significance, df=instruments.shape[1]))


def _minimise_temperature(loss, spread: float) -> float:
    """A log-spaced grid over the temperature range (the loss need not be unimodal), then a
    bounded refinement between the grid neighbours of the best point."""
    low, high = (bound / spread for bound in _TEMPERATURE_RANGE)
    grid = np.geomspace(low, high, 41)
    values = np.array([loss(t) for t in grid])
    best = int(np.nanargmin(values))
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    refined = minimize_scalar(loss, bounds=(left, right), method="bounded", options={"xatol": 1e-4 * left})
    return float(refined.x) if refined.fun <= values[best] else float(grid[best])


def _as_matrix(values: np.ndarray, n_rows: int) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    matrix = matrix.reshape(n_rows, -1) if matrix.ndim == 1 else matrix
    if matrix.shape[0] != n_rows:
        raise ValueError(f"instruments have {matrix.shape[0]} rows but the held-out set has {n_rows}")
    return matrix


# ---------------------------------------------------------------------------------------
# stacking several features into one ratio


def lm_ratio_features(diffs_per_text: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per text: the LM log-ratio (sum of d), its length-normalised form and the token count."""
    sums = np.array([float(np.sum(d)) for d in diffs_per_text])
    lengths = np.array([max(len(d), 1) for d in diffs_per_text], dtype=np.float64)
    return {"lm_sum": sums, "lm_mean": sums / lengths, "n_tokens": lengths}


@dataclass
class StackedCalibrator:
    """P(real | x) = sigmoid(intercept + sum_k weight_k * (feature_k - center_k) / scale_k),
    fitted on held-out membership; prior = the members' share there. Plain floats."""

    feature_names: list[str]
    center: list[float]
    scale: list[float]
    weights: list[float]
    intercept: float
    prior: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fit_stacked(
    heldout_features: np.ndarray, is_real: np.ndarray, feature_names: Sequence[str], c: float = 1.0
) -> StackedCalibrator:
    """Logistic regression of held-out membership on standardised features (scikit-learn).

    Unweighted: the members' share is what makes P(real | x) = prior * p_real / p_general.
    """
    from sklearn.linear_model import LogisticRegression

    features = _as_matrix(heldout_features, len(is_real))
    if features.shape[1] != len(feature_names):
        raise ValueError(f"{features.shape[1]} feature columns but {len(feature_names)} names")
    is_real = np.asarray(is_real, dtype=bool)
    if is_real.all() or not is_real.any():
        raise ValueError("the held-out rows must include real_train members and non-members")
    center, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=1000).fit((features - center) / scale, is_real)
    return StackedCalibrator(
        feature_names=list(feature_names),
        center=center.tolist(),
        scale=scale.tolist(),
        weights=model.coef_[0].tolist(),
        intercept=float(model.intercept_[0]),
        prior=float(is_real.mean()),
    )


def stacked_log_ratio(calibrator: StackedCalibrator, features: np.ndarray) -> np.ndarray:
    """log r(x) = log(P(real | x) / prior) under the stacked calibrator."""
    features = _as_matrix(features, len(features))
    standardised = (features - np.array(calibrator.center)) / np.array(calibrator.scale)
    logits = calibrator.intercept + standardised @ np.array(calibrator.weights)
    return -np.logaddexp(0.0, -logits) - np.log(calibrator.prior)


# ---------------------------------------------------------------------------------------
# a label-free check: can a classifier still tell the real rows from the accepted stream?


def two_sample_auc(
    features: Any,
    is_real: np.ndarray,
    weights: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
    fold: np.ndarray | None = None,
) -> float:
    """Out-of-fold ROC AUC of a logistic regression telling real rows from stream rows (the
    classifier two-sample test): 0.5 means indistinguishable. `weights` weigh the stream rows
    (e.g. by their acceptance, the stream as the filter passes it) in both fitting and scoring;
    real rows weigh 1, and each class is rescaled to the same total weight. `fold`: each row's
    fold (e.g. by text, so a text in both samples is never fitted on and scored at once);
    default stratified random folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import PredefinedSplit, StratifiedKFold

    is_real = np.asarray(is_real, dtype=bool)
    weight = np.ones(len(is_real)) if weights is None else np.where(is_real, 1.0, np.asarray(weights, dtype=np.float64))
    for side in (is_real, ~is_real):
        total = weight[side].sum()
        weight[side] *= 0.0 if total <= 0 else len(is_real) / 2 / total
    folds = min(folds, int(is_real.sum()), int((~is_real).sum()))
    if folds < 2 or weight[~is_real].sum() <= 0:
        return float("nan")
    predicted = np.zeros(len(is_real))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed) if fold is None else PredefinedSplit(fold)
    for train, test in splitter.split(np.zeros(len(is_real)), is_real):
        # liblinear: many times faster than lbfgs on sparse text features, and only a ranking is needed.
        model = LogisticRegression(solver="liblinear", random_state=seed)
        model.fit(features[train], is_real[train], sample_weight=weight[train])
        predicted[test] = model.decision_function(features[test])
    return float(roc_auc_score(is_real, predicted, sample_weight=weight))


def effective_sample_share(weights: np.ndarray) -> float:
    """Kish's effective sample size of weighted rows, as a share of the rows: (sum w)^2 / (n sum w^2)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = float(np.sum(weights**2))
    return float(np.sum(weights) ** 2 / (len(weights) * total)) if total > 0 else 0.0
