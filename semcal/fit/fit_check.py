"""What `semcal fit` reports, computed only on rows that no part of the fit learned from.

- The held-out rows are chosen by text (semcal.filter.fit_data.text_position), so a text found in
  both corpora is held out on both sides, and no source trains on a held-out row
  (FitData.sources_train_only).
- The calibration (temperature, shift, and what a calibration fits) is fitted on the held-out
  rows, so the report cross-fits it: the held-out rows are split by text into REPORT_FOLDS
  folds, and each fold's acceptance comes from the filter calibrated on the other folds
  (`crossfit_accept`). Every number of the report (pass rate, KL, deception reduction,
  two-sample AUC, Brier score, reliability) is computed on those acceptances.
- The trusted share of the stream (`trusted_share`): a mixture-proportion estimate
  (semcal.fit.mixture) on out-of-fold scores of a TF-IDF classifier of trusted vs stream texts,
  cross-fitted over every row in folds by text. It is the pass rate when neither the setting
  nor the labels give one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from semcal.filter import calibration
from semcal.filter.fit_data import FitData, text_position
from semcal.fit.fit_results import FitResults
from semcal.fit.mixture import MixtureShare, mixture_share
from semcal.protocol import item_evaluation
from semcal.reports.results import PerItemBlock

log = logging.getLogger(__name__)

REPORT_FOLDS = 5  # folds of the held-out rows for the cross-fitted calibration of the report
SHARE_FOLDS = 5  # folds of all rows for the trusted-share classifier
KL_EPSILON = 1e-6
# The advice's thresholds: below LOW_SHARE the stream holds almost nothing trusted-like; from
# SAME_SHARE (or an AUC before weighting below SAME_AUC) the corpora cannot be told apart.
LOW_SHARE, SAME_SHARE, SAME_AUC = 0.03, 0.9, 0.55
MIN_RATE, MAX_RATE = 0.01, 0.95  # the estimated pass rate is kept within these


def folds_by_text(texts: list[str], folds: int, seed: int) -> np.ndarray:
    """A fold per text from the text itself (equal texts, one fold), seeded apart from the held-out draw."""
    position = text_position(texts, seed + 1)
    return np.minimum((position * folds).astype(np.int64), folds - 1)


def trusted_share(data: FitData) -> tuple[MixtureShare, np.ndarray]:
    """The share of the stream the trusted corpus could have been drawn from, with its interval,
    and the out-of-fold classifier scores of every row it was estimated on."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline

    from semcal.filter.sources import tfidf_vectorizer

    general = data.in_general
    texts, is_real = data.texts, data.is_real
    fold = folds_by_text(texts, SHARE_FOLDS, data.seed)
    # Each fold's vectorizer and classifier are fitted without the fold: the scores are out-of-fold.
    model = make_pipeline(tfidf_vectorizer(min_df=2), LogisticRegression(solver="liblinear", random_state=data.seed))
    scores = cross_val_predict(model, texts, is_real, cv=PredefinedSplit(fold), method="decision_function")
    return mixture_share(scores[is_real], scores[general & ~is_real], seed=data.seed), scores


def overlap_share(real: list[str], general: list[str]) -> float:
    """The share of the trusted corpus's texts that are also in the stream sample."""
    stream = set(general)
    return float(np.mean([text in stream for text in real])) if real else 0.0


def crossfit_accept(stream_filter: Any, data: FitData, source: str, calibration_name: str) -> np.ndarray:
    """The acceptance of every held-out row by the filter calibrated without that row's fold.

    The sources fitted for `stream_filter` (data.cache) are reused: none saw a held-out row.
    Each fold's calibration is fitted on the other folds' held-out rows, its stream shift on
    their held-out stream rows, as `stream_filter`'s was on all of them."""
    from semcal.filter.filtering import Filter

    items = data.heldout_items
    fold = folds_by_text(items.texts, REPORT_FOLDS, data.seed)
    accept = np.empty(len(items))
    for k in range(REPORT_FOLDS):
        inside = fold == k
        if not inside.any():
            continue
        keep = np.ones(len(data.texts), dtype=bool)
        keep[data.heldout_rows[inside]] = False
        part = data.keep_rows(keep)
        part.stream = part.heldout_items.select(np.flatnonzero(part.heldout_in_general & ~part.heldout_is_real))
        part.cache = {
            key: (source_fit, None if heldout is None else np.asarray(heldout)[~inside])
            for key, (source_fit, heldout) in data.cache.items()
        }
        fold_filter = Filter.fit(source, calibration_name, part, stream_filter.name)
        accept[inside] = fold_filter.accept_probs(items.select(inside))
    return accept


def label_check(data: FitData, accept: np.ndarray) -> dict[str, Any]:
    """Label distributions of the held-out trusted rows, stream rows and accepted stream (expected), with KL."""
    is_real = data.heldout_is_real
    codes, k = data.label_codes[data.heldout_rows], len(data.labels)
    real = calibration.label_distribution(codes[is_real], k)
    stream = calibration.label_distribution(codes[~is_real], k)
    accepted = calibration.expected_filtered_distribution(accept[~is_real], codes[~is_real], k)
    kl_before = calibration.kl_divergence(stream, real, KL_EPSILON)
    kl_after = calibration.kl_divergence(accepted, real, KL_EPSILON)
    by_label = {
        name: dict(zip(data.labels, values, strict=True))
        for name, values in (("real", real), ("stream", stream), ("accepted", accepted))
    }
    reduction = calibration.deception_reduction(kl_after, kl_before)
    return {
        "distributions": by_label,
        "kl_before": kl_before,
        "kl_after": kl_after,
        "deception_reduction": reduction,
        "kl_epsilon": KL_EPSILON,
    }


def per_item(stream_filter: Any, data: FitData, accept: np.ndarray) -> PerItemBlock:
    """The per-item block (Brier score, reliability) on the cross-fitted acceptances."""
    block = item_evaluation.per_item({stream_filter.name: stream_filter}, data, {stream_filter.name: accept})
    block.heldout_used_by_calibrations = False  # each row's calibration was fitted without it
    return block


def estimated_rate(share: MixtureShare) -> float:
    """The pass rate from the trusted-share estimate, kept where a filter can still select."""
    return float(np.clip(share.estimate, MIN_RATE, MAX_RATE))


def advice(results: FitResults) -> list[str]:
    """Warnings, one sentence each, for corpora or a fit a user should not trust blindly."""
    share, warnings = results.trusted_share, []
    auc_before, auc_after = results.two_sample_auc_before, results.two_sample_auc_after
    if share.estimate >= SAME_SHARE or auc_before < SAME_AUC:
        warnings.append(
            f"The trusted corpus cannot be told from the stream (trusted share {share.estimate:.2f}, two-sample "
            f"AUC {auc_before:.2f}): the stream already looks trusted, so pass everything and skip the filter."
        )
    elif share.interval[1] < LOW_SHARE:
        warnings.append(
            f"The stream holds almost nothing like the trusted corpus (trusted share {share.estimate:.3f}, at "
            f"most {share.interval[1]:.3f}): whatever passes is the least unlike part of an unlike stream; check the "
            "corpora are the ones you meant."
        )
    if np.isfinite(auc_after) and auc_after < 0.5:
        warnings.append(
            f"After weighting, the two-sample AUC is {auc_after:.2f}, below 0.5: the accepted stream looks more "
            "trusted than the trusted texts, a sign the filter over-fits; fit on more texts or pass more."
        )
    return warnings
