"""The calibrations of a filter: how a source's log-ratio l(x) becomes the score s(x), whose
acceptance is a(x) = min(1, exp(s(x)) / M).

A calibration is fitted on the source's log-ratio of the held-out rows (whose real
membership is known) and of the stream, and saves as its LINK, the map l -> s:

    linear    s = temperature * l + shift
    logistic  s = log(M * sigmoid(intercept + slope * l))   (a(x) is the fitted P(real | x))

    class MyCalibration(Calibration):
        name = "mine"
        needs = ("membership",)            # FitData.has
        uses_heldout = True                # needs the source's held-out log-ratio
        def fit(self, fit: CalibrationInput) -> Link: ...

and one line in CALIBRATIONS at the bottom. The math is semcal.filter.calibration and
semcal.filter.ratio_calibration (numpy / scipy, no I/O).

- `none`: s = l (the paper's method, with the clipped source).
- `heldout`: shift so exp(s) averages 1 over the held-out general rows.
- `logistic`: P(real | x) = sigmoid(a + b l) fitted on held-out membership.
- `matched`: scale so the held-out rows reweighted by exp(b l) have the real members' mean l.
- `stream`: t = 1 and the shift c by STREAM SELF-NORMALISATION (the stream passes exactly
  1/M); flat (t = 0) when the held-out rows' TF-IDF ratio shows no shift at all.
- `mom`: label-free moments: t makes the held-out general rows, weighted by a, match the
  held-out real rows' means of INSTRUMENTS (other sources' log-ratios, whose errors are not
  l's), c by the stream.
- `labmom`: label moments: the instruments are the held-out rows' labels (one-hot); when
  they show no shift, the filter falls back to the label-posterior source (semcal.filter.filters).
- `likelihood`: t by the membership log-likelihood of P(real | x) = a(x), c by the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from semcal.core.errors import UserError
from semcal.filter import calibration, ratio_calibration
from semcal.filter.fit_data import FitData
from semcal.filter.sources import SOURCES, fit_source, saved_number

LINKS = ("linear", "logistic")


@dataclass
class Link:
    """The map from a source's log-ratio to the score; plain floats, the saved calibration."""

    link: str = "linear"
    temperature: float = 1.0
    shift: float = 0.0
    intercept: float = 0.0
    slope: float = 1.0

    def apply(self, log_ratio: np.ndarray, m: float) -> np.ndarray:
        if self.link == "logistic":
            return calibration.logistic_log_ratio(log_ratio, self.intercept, self.slope, m)
        return self.temperature * np.asarray(log_ratio, dtype=np.float64) + self.shift

    def to_dict(self) -> dict[str, Any]:
        if self.link == "logistic":
            return {"link": "logistic", "intercept": self.intercept, "slope": self.slope}
        return {"link": "linear", "temperature": self.temperature, "shift": self.shift}

    @classmethod
    def from_dict(cls, saved: Any, where: str) -> Link:
        """A saved link, checked: a known link, finite numbers."""
        if not isinstance(saved, dict) or saved.get("link") not in LINKS:
            raise UserError(
                f"{where}: 'calibration' must have a link of {LINKS} (got {saved!r}): the filter is damaged."
            )
        keys = ("intercept", "slope") if saved["link"] == "logistic" else ("temperature", "shift")
        values = {key: saved_number(saved, key, where, what=f"calibration {key!r}") for key in keys}
        return cls(saved["link"], **values)


@dataclass
class CalibrationInput:
    """What a calibration is fitted on: the source's log-ratio of the held-out rows (None when the
    source has none) and of the stream, the fit data, and the source's name."""

    data: FitData
    source: str
    heldout: np.ndarray | None
    stream: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)  # what the fit reports (results.json)
    no_shift: bool = False  # set by a calibration that found no shift to calibrate on

    @property
    def general_heldout(self) -> np.ndarray:
        """The held-out general rows' log-ratio."""
        return self.heldout[self.data.heldout_in_general]

    def weighted(self) -> np.ndarray | None:
        """Which held-out rows a calibration weights: None when the real rows are a subset (all)."""
        return None if self.data.form == "subset" else self.data.heldout_in_general


class Calibration:
    """Base class: see the module docstring."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    uses_heldout: ClassVar[bool] = False

    def fit(self, fit: CalibrationInput) -> Link:
        raise NotImplementedError


class NoCalibration(Calibration):
    name, label = "none", ""

    def fit(self, fit: CalibrationInput) -> Link:
        return Link()


class HeldoutShift(Calibration):
    name, label, uses_heldout = "heldout", "heldout", True

    def fit(self, fit: CalibrationInput) -> Link:
        shift = calibration.heldout_shift(fit.general_heldout)
        fit.stats.update(heldout_log_mean_exp_before_shift=shift, heldout_texts=len(fit.general_heldout))
        return Link(shift=-shift)


class Logistic(Calibration):
    name, label, needs, uses_heldout = "logistic", "logistic", ("membership",), True

    def fit(self, fit: CalibrationInput) -> Link:
        intercept, slope = calibration.fit_membership_logistic(fit.heldout, fit.data.heldout_is_real)
        fit.stats.update(heldout_texts=len(fit.heldout))
        return Link("logistic", intercept=intercept, slope=slope)


class Matched(Calibration):
    name, label, needs, uses_heldout = "matched", "matched", ("membership",), True

    def fit(self, fit: CalibrationInput) -> Link:
        scale = calibration.fit_matched_scale(fit.heldout, fit.data.heldout_is_real)
        shift = calibration.heldout_shift(scale * fit.general_heldout)
        fit.stats.update(scale=scale, heldout_texts=len(fit.heldout))
        return Link(temperature=scale, shift=-shift)


def _calibrated(fit: CalibrationInput, criterion: str, instruments: np.ndarray | None = None, **stats: Any) -> Link:
    """The temperature by `criterion` on the held-out rows, the shift on the stream."""
    data = fit.data
    is_real = data.heldout_is_real if criterion != "fixed" or instruments is not None else None
    fitted = ratio_calibration.calibrate_stream(
        fit.stream, data.m, criterion, fit.heldout, is_real, instruments, weighted=fit.weighted()
    )
    fit.stats.update(calibration=fitted.to_dict(), **stats)
    return Link(temperature=fitted.temperature, shift=fitted.shift)


class StreamShift(Calibration):
    name, label = "stream", "stream"

    def fit(self, fit: CalibrationInput) -> Link:
        if not fit.data.has("heldout_rows"):
            return _calibrated(fit, "fixed", detector=None)
        detector = fit_source(fit.data, "tfidf")[1]
        return _calibrated(fit, "fixed", detector, detector="tfidf")


class Moments(Calibration):
    name, label, needs, uses_heldout = "mom", "moments", ("membership", "heldout_rows"), True

    def fit(self, fit: CalibrationInput) -> Link:
        views = other_views(fit.data, fit.source)
        return _calibrated(fit, "moments", np.column_stack(list(views.values())), instruments_used=list(views))


class LabelMoments(Calibration):
    name, label, needs, uses_heldout = "labmom", "label moments", ("membership", "labels"), True

    def fit(self, fit: CalibrationInput) -> Link:
        codes = fit.data.label_codes[fit.data.heldout]
        instruments = (codes[:, None] == np.unique(codes)[None, :]).astype(np.float64)
        link = _calibrated(fit, "moments", instruments)
        found = fit.stats["calibration"]
        # The chi-square test saw no label shift (a baseline split): the source's tilt would only select its noise.
        fit.no_shift = bool(found["shift_statistic"] <= found["shift_threshold"])
        return link


class Likelihood(Calibration):
    name, label, needs, uses_heldout = "likelihood", "likelihood", ("membership",), True

    def fit(self, fit: CalibrationInput) -> Link:
        return _calibrated(fit, "likelihood")


def other_views(data: FitData, source: str) -> dict[str, np.ndarray]:
    """Instruments of the label-free moments: held-out log-ratios of other sources, whose errors are
    not the source's. For a language-model source the TF-IDF one; for a text source the language
    models' (and the embedding one when given), else the hashed n-gram one."""
    views: dict[str, np.ndarray] = {}
    if SOURCES[source].language_models:
        views["tfidf"] = fit_source(data, "tfidf")[1]
    else:
        if data.has("heldout") and data.has("lm"):
            views["sum"] = fit_source(data, "sum")[1]
        if data.has("control"):
            views["control_sum"] = fit_source(data, "control_sum")[1]
    if data.has("embedding") and source != "embedding":
        views["embedding"] = fit_source(data, "embedding")[1]
    if not views:
        views["ngram"] = fit_source(data, "ngram")[1]
    return views


CALIBRATIONS: dict[str, type[Calibration]] = {
    calibration_class.name: calibration_class
    for calibration_class in (
        NoCalibration,
        HeldoutShift,
        Logistic,
        Matched,
        StreamShift,
        Moments,
        LabelMoments,
        Likelihood,
    )
}
