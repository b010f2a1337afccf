"""Per-item calibration and decision modes of fitted filters: the `per_item` and `decisions`
blocks of results.json (semcal evaluate) and fit_results.json (semcal fit).

- per_item: every fitted filter's acceptance of the HELD-OUT general_train rows (semcal fit:
  the held-out rows of both corpora), read as a forecast of their membership in the real
  split, scored by semcal.protocol.item_metrics against the constant predictor. The held-out rows are
  also the rows the calibrations fit their temperature on (one or two numbers per filter), so
  these figures are in-sample for the calibration, out-of-sample for the source.
- decisions: the deception reduction of each decision mode (semcal.filter.decisions) on the evaluated
  texts, beside sampling: `threshold` at the tau that passes 1/M of them, `top` the 1/M
  highest of each window. Deterministic modes select one fixed set: its KL is exact, with no
  Monte Carlo spread; sampling is given both as its Monte Carlo mean and its expectation.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from semcal.filter import calibration, decisions
from semcal.filter.filtering import Filter
from semcal.filter.fit_data import FitData
from semcal.protocol import item_metrics
from semcal.reports.results import FIX, DecisionsBlock, FilterResult, PerItemBlock
from semcal.store import schema

log = logging.getLogger(__name__)

CONVERSION = {
    "subset": "P(member | x) = a(x): the real split is a marked subset of general_train, r(x) / M exactly",
    "pooled": "P(real | x) = n_r r / (n_r r + n_g) with r = M a(x), n_r and n_g the held-out real and general rows: "
    "the real rows are a corpus of their own",
}


def per_item(fitted: dict[str, Filter], data: FitData, accepted: dict[str, np.ndarray] | None = None) -> PerItemBlock:
    """The per_item block: the constant reference and each fitted filter's metrics (or why it has none).
    `accepted`: a filter's acceptance of the held-out rows when already computed (semcal fit's cross-fitted one)."""
    is_real = data.heldout_is_real
    block: dict[str, Any] = {"rows": "held-out general_train rows, membership in the real split known", "filters": {}}
    if not data.has("membership"):
        block["note"] = "no held-out rows both in and out of the real split: no per-item metrics"
        return schema.from_dict(PerItemBlock, block, "per_item", FIX)
    counts = {"n_real": int(is_real.sum()), "n_general": int((~is_real).sum())}
    constant = item_metrics.constant_probability(data.m, data.form, **counts)
    block |= {
        "form": data.form,
        "conversion": CONVERSION[data.form],
        "heldout_used_by_calibrations": True,
        "reference": {"forecast": constant, **item_metrics.item_metrics(np.full(len(is_real), constant), is_real)},
        "skipped": {},
    }
    for name, stream_filter in fitted.items():
        reason = _no_heldout_scores(stream_filter, data)
        if reason:
            block["skipped"][name] = reason
            continue
        accept = (accepted or {}).get(name)
        if accept is None:
            accept = stream_filter.accept_probs(data.heldout_items)
        forecast = item_metrics.membership_probability(accept, stream_filter.m, data.form, **counts)
        block["filters"][name] = item_metrics.item_metrics(forecast, is_real)
    if block["skipped"]:
        log.info("per-item metrics: %d filters skipped (no held-out scores)", len(block["skipped"]))
    return schema.from_dict(PerItemBlock, block, "per_item", FIX)


def _no_heldout_scores(stream_filter: Filter, data: FitData) -> str:
    """Why the filter cannot score the held-out rows without loading models ("" when it can)."""
    diffs = data.heldout_items.diffs
    if not stream_filter.source.language_models or (diffs is not None and len(diffs) == len(data.heldout_items)):
        return ""
    return "its source reads the language models' scores, and the held-out rows have none (general_heldout_csv)"


def decision_modes(
    accepted: dict[str, np.ndarray],
    sampled: dict[str, FilterResult],
    test_codes: np.ndarray,
    real: np.ndarray,
    kl_general: float,
    rate: float,
    kl_epsilon: float,
    window: int,
) -> DecisionsBlock:
    """The decisions block: per filter, sampling's numbers (`sampled`: its results block) beside
    the threshold and top modes at the rate 1/M, on the same texts."""
    n_labels = len(real)

    def measured(keep: np.ndarray) -> dict[str, Any]:
        distribution = calibration.expected_filtered_distribution(keep.astype(np.float64), test_codes, n_labels)
        kl = calibration.kl_divergence(distribution, real, kl_epsilon) if keep.any() else float("nan")
        return {"pass_rate": float(keep.mean()), "kl": kl, **_reduction(kl, kl_general)}

    by_filter = {}
    for name, accept in accepted.items():
        block = sampled[name]
        tau = decisions.Thresholds.of(accept, None).for_rate(rate)
        by_filter[name] = {
            "sample": {
                "pass_rate": block.pass_rate_mean,
                "kl": block.kl_mean,
                "kl_expected": block.expected_kl,
                **_reduction(block.kl_mean, kl_general),
                "expected_deception_reduction": _reduction(block.expected_kl, kl_general)["deception_reduction"],
            },
            "threshold": {"tau": tau, **measured(accept >= tau)},
            "top": measured(_top(accept, rate, window)),
        }
    modes = {
        "rate": rate,
        "window": window,
        "texts": "the evaluated general_test texts, in per_text.csv order (top: windows of consecutive texts)",
        "note": "threshold and top select one fixed set: exact KL, no spread; sample: Monte Carlo mean (kl) and the "
        "KL of the expected filtered distribution (kl_expected)",
        "filters": by_filter,
    }
    return schema.from_dict(DecisionsBlock, modes, "decisions", FIX)


def _top(accept: np.ndarray, rate: float, window: int) -> np.ndarray:
    top = decisions.TopShare(rate)
    return np.concatenate([top(accept[start : start + window]) for start in range(0, len(accept), window)])


def _reduction(kl: Any, kl_general: float) -> dict[str, float | None]:
    value = calibration.deception_reduction(float(kl), kl_general) if isinstance(kl, (int, float)) else float("nan")
    return {"deception_reduction": None if np.isnan(value) else float(value)}
