"""Drift alarms and restart checks of semcal.stream.adapt: per-window statistics, bootstrap thresholds, the alarm record.

A statistic says "these items are not the stream the filter was fitted on": `prior`, KL(p' || p)
of the EM label prior of the items from the reference prior; `mean_log_ratio`, |mean l(x) - its
reference mean|. Its threshold is a high quantile of the same statistic over windows drawn from
the reference sample (`bootstrap_threshold`). The reference (`DriftReference`) is what a filter
keeps of its fit's stream (semcal.filter.drift saves and loads it). numpy only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semcal.filter import calibration
from semcal.filter.fit_data import FitData
from semcal.filter.label_shift import em_prior


@dataclass
class DriftReference:
    """What a filter keeps of the stream it was fitted on: its source's log-ratio of (a sample of)
    that stream and, for a filter fitted with labels, the label posterior of the same items and
    the prior it implies there (the mean posterior over the whole fitted stream)."""

    log_ratio: np.ndarray  # (n,)
    posterior: np.ndarray | None = None  # (n, labels)
    labels: list[str] | None = None
    stream_prior: np.ndarray | None = None  # (labels,)


@dataclass
class ItemWindow:
    """The last `size` items' scores (and posteriors, texts), the reference sample first: what an
    alarm window or semcal.stream.adapt's estimation window holds."""

    size: int
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    posterior: np.ndarray | None = None
    texts: list[str] = field(default_factory=list)

    def push(self, scores: np.ndarray, posterior: np.ndarray | None, texts: list[str] | None = None) -> None:
        self.scores = np.concatenate([self.scores, scores])[-self.size :]
        if posterior is not None:
            stacked = posterior if self.posterior is None else np.concatenate([self.posterior, posterior])
            self.posterior = stacked[-self.size :]
        if texts is not None:
            self.texts = (self.texts + list(texts))[-self.size :]

    def keep_last(self, count: int) -> None:
        self.scores = self.scores[-count:]
        self.posterior = None if self.posterior is None else self.posterior[-count:]
        self.texts = self.texts[-count:]


@dataclass
class Alarm:
    """One window whose statistic crossed its threshold."""

    window: int  # 1-based window number
    first_item: int  # 1-based positions among the stream's texts
    last_item: int
    statistic: str
    value: float
    threshold: float
    false_alarm_rate: float

    def message(self) -> str:
        return (
            f"drift alarm: window {self.window} (texts {self.first_item}-{self.last_item}): {self.statistic} "
            f"{self.value:.4g} > threshold {self.threshold:.4g} (false-alarm rate {self.false_alarm_rate:g} "
            "on the undrifted stream)"
        )

    def record(self) -> dict[str, Any]:
        return {
            "alarm": self.message(),
            "window": self.window,
            "first_item": self.first_item,
            "last_item": self.last_item,
            "statistic": self.statistic,
            "value": self.value,
            "threshold": self.threshold,
        }


def prior_statistic(posterior: np.ndarray, reference_prior: np.ndarray) -> np.ndarray:
    """KL(p' || p) of the EM prior of each window (posterior (..., n, K)) from the reference prior."""
    return np.asarray(calibration.kl_divergence(em_prior(posterior, reference_prior), reference_prior))


def mean_log_ratio_statistic(log_ratio: np.ndarray, reference_mean: float) -> np.ndarray:
    return np.abs(np.asarray(log_ratio).mean(axis=-1) - reference_mean)


def bootstrap_threshold(values: np.ndarray, false_alarm_rate: float) -> float:
    """The (1 - rate) quantile of the statistic over the reference windows (the higher order statistic)."""
    return float(np.quantile(values, 1.0 - false_alarm_rate, method="higher"))


def reference_statistics(
    reference: DriftReference, scores: np.ndarray, statistic: str, size: int, draws: int, seed: int
) -> np.ndarray:
    """The statistic (`prior`: the label prior's KL; else the mean score's shift) of `draws`
    windows of `size` items drawn (seeded, with replacement) from the reference: its null distribution."""
    rows = np.random.default_rng(seed).integers(0, len(scores), size=(draws, size))
    if statistic == "prior":
        return prior_statistic(reference.posterior[rows], reference.stream_prior)
    return mean_log_ratio_statistic(np.asarray(scores)[rows], float(np.mean(scores)))


def change_statistic(
    posterior: np.ndarray | None, scores: np.ndarray, recent: int, reference_prior: np.ndarray | None
) -> np.ndarray:
    """How the last `recent` items of a window (axis -1 / -2 of stacked windows) differ from the
    older ones: the KL of their EM label prior from the older items' (given a posterior), else the
    shift of their mean score. semcal.stream.adapt restarts its estimates when it is high."""
    if posterior is not None:
        older = em_prior(posterior[..., :-recent, :], reference_prior)
        return np.asarray(calibration.kl_divergence(em_prior(posterior[..., -recent:, :], reference_prior), older))
    return np.abs(scores[..., -recent:].mean(axis=-1) - scores[..., :-recent].mean(axis=-1))


def change_statistics(
    reference: DriftReference, scores: np.ndarray, use_posterior: bool, recent: int, size: int, draws: int, seed: int
) -> np.ndarray:
    """`change_statistic` of `draws` windows of `size` items drawn (seeded, with replacement) from
    the reference: its null distribution, the older items' noise included (a null against the
    reference prior itself would leave that noise out and restart undrifted streams)."""
    rows = np.random.default_rng(seed).integers(0, len(scores), size=(draws, size))
    posterior = reference.posterior[rows] if use_posterior else None
    return change_statistic(posterior, np.asarray(scores)[rows], recent, reference.stream_prior)


def reference_of(stream_log_ratio: np.ndarray, label_posterior: Any, data: FitData, size: int, seed: int):
    """The drift reference of a filter fitted on `data`: a seeded sample of at most `size` of its
    stream's log-ratios and (given the label posterior source) posteriors; the stream prior over all."""
    n = len(stream_log_ratio)
    rows = np.arange(n) if n <= size else np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    if label_posterior is None:
        return DriftReference(np.asarray(stream_log_ratio, dtype=np.float64)[rows])
    posterior = label_posterior._posterior(data.stream)[1]
    return DriftReference(
        np.asarray(stream_log_ratio, dtype=np.float64)[rows],
        posterior[rows],
        list(label_posterior.classes),
        posterior.mean(axis=0),
    )
