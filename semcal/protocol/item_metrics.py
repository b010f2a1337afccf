"""Per-item calibration metrics: is a filter's acceptance a calibrated probability of membership?

In the research protocol the real split is drawn from general_train with P(row in real | y) =
q(y) / (p(y) M), so P(row in real | x) = r(x) / M: a filter's acceptance a(x) = min(1, r̂(x) / M)
is a forecast of the membership of a general_train row, and held-out rows, whose membership is
known, measure it without reading any general_test label. Where the real rows are a corpus of
their own (pooled, semcal.filter.fit_data), the pooled rows' P(real | x) = n_r r / (n_r r + n_g) with
r̂ = M a(x) (`membership_probability`).

The numbers, each read against the CONSTANT predictor (r̂ = 1 for every row: 1/M, or the real
share of the pooled rows), the forecast of a filter that knows nothing:

- Brier score (mean squared error; lower is better), log loss, ROC AUC (ranking only);
- MCC of the decisions p >= `threshold` (0.5, the Bayes decision for a calibrated probability);
- ECE: the reliability bins' |mean forecast - observed share| weighted by their rows, over
  equal-mass bins (forecasts crowd near 1/M, where equal-width bins would hold nearly all rows);
- sn34, GASBench's combined score: sqrt(mcc_norm^1.2 * brier_norm^1.8), mcc_norm = (MCC + 1) / 2,
  brier_norm = (0.25 - Brier) / 0.25, clipped to [0, 1] (a Brier above 0.25 scores 0).

Plain numpy and scikit-learn, no file I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_BINS = 10  # reliability bins (equal mass)
THRESHOLD = 0.5  # decisions for the MCC: p >= 0.5, the Bayes decision for a calibrated probability
_EPS = 1e-6  # forecasts are kept within [EPS, 1 - EPS] in the log loss: one certain miss would make it infinite
FORMS = ("subset", "pooled")


def membership_probability(accept: np.ndarray, m: float, form: str, n_real: int = 0, n_general: int = 0) -> np.ndarray:
    """A filter's forecast of each row's membership: a(x) itself over a marked subset; over pooled
    rows (n_real real, n_general general) n_r r / (n_r r + n_g) with the ratio r = M a(x)."""
    accept = np.asarray(accept, dtype=np.float64)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS} (got {form!r})")
    if form == "subset":
        return accept
    if n_real <= 0 or n_general <= 0:
        raise ValueError("pooled rows need n_real and n_general above 0")
    ratio = m * accept
    return n_real * ratio / (n_real * ratio + n_general)


def constant_probability(m: float, form: str, n_real: int = 0, n_general: int = 0) -> float:
    """The constant predictor's forecast: r = 1 for every row (1/M, or the pooled real share)."""
    return float(membership_probability(np.array([1.0 / m]), m, form, n_real, n_general)[0])


def reliability_bins(p: np.ndarray, is_real: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Equal-mass bins of the forecasts: per bin its rows, mean forecast and observed member share.
    Tied forecasts stay in one bin, so a constant forecast is one bin."""
    p, is_real = np.asarray(p, dtype=np.float64), np.asarray(is_real, dtype=np.float64)
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins = []
    for index in np.unique(which):
        rows = which == index
        bins.append(
            {"rows": int(rows.sum()), "mean_forecast": float(p[rows].mean()), "observed": float(is_real[rows].mean())}
        )
    return bins


def expected_calibration_error(bins: list[dict[str, float]]) -> float:
    total = sum(b["rows"] for b in bins)
    return float(sum(b["rows"] * abs(b["mean_forecast"] - b["observed"]) for b in bins) / total)


def sn34(mcc: float, brier: float) -> float:
    """GASBench's combined score of normalised MCC and Brier (module docstring)."""
    mcc_norm = float(np.clip((mcc + 1.0) / 2.0, 0.0, 1.0))
    brier_norm = float(np.clip((0.25 - brier) / 0.25, 0.0, 1.0))
    return float(np.sqrt(mcc_norm**1.2 * brier_norm**1.8))


def item_metrics(p: np.ndarray, is_real: np.ndarray, threshold: float = THRESHOLD) -> dict[str, Any]:
    """Every per-item number of the forecasts `p` of the memberships `is_real`, with their bins."""
    from sklearn.metrics import brier_score_loss, log_loss, matthews_corrcoef, roc_auc_score

    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    is_real = np.asarray(is_real, dtype=bool)
    if is_real.all() or not is_real.any():
        raise ValueError("the rows must include members and non-members")
    bins = reliability_bins(p, is_real)
    brier = float(brier_score_loss(is_real, p))
    # MCC of a constant decision is 0 (scikit-learn returns 0 with no warning for it).
    mcc = float(matthews_corrcoef(is_real, p >= threshold))
    return {
        "rows": int(len(p)),
        "members": int(is_real.sum()),
        "brier": brier,
        "log_loss": float(log_loss(is_real, np.clip(p, _EPS, 1.0 - _EPS), labels=[False, True])),
        "roc_auc": float(roc_auc_score(is_real, p)) if np.ptp(p) > 0 else 0.5,
        "mcc": mcc,
        "mcc_threshold": threshold,
        "ece": expected_calibration_error(bins),
        "sn34": sn34(mcc, brier),
        "mean_forecast": float(p.mean()),
        "reliability": bins,
    }
