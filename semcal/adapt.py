"""A filter that stays calibrated when its stream drifts: online adaptation and drift alarms.

A saved filter is frozen at the stream it was fitted on: its shift makes THAT stream pass 1/M,
and its ratio r(x) = q(x) / p(x) assumes that stream's label mix p. When the stream drifts to
p', the pass rate moves off 1/M and the accepted mix moves off the trusted q. `Adapter` wraps a
filter and corrects it from the stream itself, item by item, in input order:

- `rate` (label-free, any filter): an offset d on the score so the items pass 1/M, from the
  last `window` items' scores (d = stream_shift(window scores, M), semcal.ratio_calibration).
- `prior` (filters that carry a label posterior P(y | x)): the window's label prior p' by
  maximum likelihood (the EM of Saerens, Latinne & Decaestecker, 2002); the ratio for the new
  prior, r'(x) = q(x) / p'(x) = r(x) / Z(x) with Z(x) = sum_y P(y | x) p'(y) / p(y) (under label
  shift p'(x) / p(x) = Z(x)); then a weight c_y per label on log P'(y | x), the posterior under
  p', chosen so the accepted items, counted by P'(y | x), show the label mix the saved filter
  accepts on its own stream, counted by P(y | x) (`match_label_mix`). The correction by Z alone
  is too weak where the posterior is soft (a caption that mentions a dog and traffic counts
  towards both): it moves an item by the mean of its labels' ratios, where the mix needs its
  own label's. A calibrated posterior counts the accepted mix of any acceptance of x without
  bias, so matching on it needs no labels; c is fitted on the filter's reference sample
  weighted by Z(x) to the window's prior (thousands of items: only the K numbers of p' carry
  the window's noise), and is 0 when p' = p. Its pass rate is what that mix allows,
  sum_y min(p'(y), t(y) / M) (`feasible_pass_rate`): 1/M unless the stream holds too little of
  a label the mix needs, which then passes whole, as the oracle's.
- `refit` (text filters, given the trusted texts): every `refit_every` items a TF-IDF source is
  fitted afresh on the trusted texts against the last `refit_window` stream texts (bounded:
  at most `max_trusted` trusted texts), its log-ratio taken with temperature 1.

Every adaptive mode holds its pass rate (1/M; `prior`: the feasible one) per block of `window`
items (counted from the first): the offset is set for what the rest of the block still needs
(`block_pass_rate`, at most twice or half the rate), so items that came unlike the estimation
window, or a switch inside a block, do not move the block's rate. Estimates change only every
`update_every` items, at fixed positions of the stream, and each item is judged with the
estimate made before it: the decisions are the same for any batch size, given the seed and
the input order. The estimation window starts filled with the filter's reference sample (its
fit's stream), so the first items are judged as the saved filter judges them and new items
replace the reference ones as they come.

Drift alarms: per tumbling window of `alarm_window` items a statistic of "this window is not
the stream the filter was fitted on": `prior`, KL(p' || p) of the EM prior of the window from
the reference one; `mean_log_ratio`, |mean l(x) over the window - its reference mean|. Its
threshold is the (1 - false_alarm_rate) quantile of the statistic over `bootstrap` windows
drawn (seeded, with replacement) from the reference sample: on an undrifted stream a window
alarms with probability false_alarm_rate.

numpy / scipy only, no file I/O (semcal.drift saves and loads the reference).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semcal import calibration
from semcal.config import UserError
from semcal.drift_alarms import (
    Alarm,
    DriftReference,
    bootstrap_threshold,
    mean_log_ratio_statistic,
    prior_statistic,
    reference_of,
)
from semcal.fit_data import FitData, Items, Scored
from semcal.label_shift import (
    _MIN_POSTERIOR,
    _MIN_WEIGHT,
    block_pass_rate,
    em_prior,
    feasible_pass_rate,
    log_prior_correction,
    match_label_mix,
    rate_offset,
    shifted_posterior,
)

__all__ = [  # the label-shift math lives in semcal.label_shift; these names stay importable from here
    "ALARMS",
    "MODES",
    "Adapter",
    "AdaptSettings",
    "Alarm",
    "DriftReference",
    "block_pass_rate",
    "bootstrap_threshold",
    "em_prior",
    "feasible_pass_rate",
    "log_prior_correction",
    "match_label_mix",
    "mean_log_ratio_statistic",
    "prior_statistic",
    "rate_offset",
    "reference_of",
    "shifted_posterior",
]

log = logging.getLogger(__name__)

MODES = ("none", "rate", "prior", "refit")
ALARMS = ("none", "auto", "prior", "mean_log_ratio")


@dataclass
class AdaptSettings:
    """Window sizes, periods and rates of adaptation and alarms (defaults measured on bench/bench_drift.py)."""

    window: int = 500  # items the rate and prior estimates look back over
    update_every: int = 25  # items between two re-estimates
    change_window: int = 50  # the recent items tested for a sudden change of the pass rate (see _estimate)
    change_z: float = 4.0  # how many standard errors the recent items must differ from the older ones to restart
    prior_pseudo_count: float = 50.0  # prior: items' worth of the fitted prior the EM starts from (see _estimate)
    match_ridge: float = 0.001  # prior: ridge on the mean squared label weight c (weights of log-probabilities)
    alarm_window: int = 500  # items per alarm window (tumbling: windows do not overlap)
    false_alarm_rate: float = 0.01  # share of windows of the undrifted stream that alarm
    bootstrap: int = 1000  # reference windows drawn to set the alarm threshold
    refit_every: int = 1000  # refit: items between two refits
    refit_window: int = 1000  # refit: the last stream texts the source is refitted against
    max_trusted: int = 4000  # refit: trusted texts used per refit at most (a seeded sample)
    seed: int = 0  # seed of the bootstrap and of the refits

    def check(self) -> None:
        for name in (
            "window",
            "update_every",
            "change_window",
            "alarm_window",
            "bootstrap",
            "refit_every",
            "refit_window",
        ):
            if getattr(self, name) < 10:
                raise UserError(f"adapt_settings {name} must be at least 10 (got {getattr(self, name)}).")
        if self.window % self.update_every:
            raise UserError(
                f"adapt_settings window ({self.window}) must be a multiple of update_every ({self.update_every}): "
                "the pass rate is held per window."
            )
        if self.max_trusted < 20:
            raise UserError(f"adapt_settings max_trusted must be at least 20 (got {self.max_trusted}).")
        for name in ("prior_pseudo_count", "match_ridge"):
            if getattr(self, name) < 0:
                raise UserError(f"adapt_settings {name} must be at least 0 (got {getattr(self, name)}).")
        if not 0.0 < self.false_alarm_rate < 0.5:
            raise UserError(f"adapt_settings false_alarm_rate must be in (0, 0.5) (got {self.false_alarm_rate}).")


# ---- the adaptive filter ----------------------------------------------------------------------------


@dataclass
class _Window:
    """The last `size` items' scores (and posteriors, texts), the reference sample first."""

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


class Adapter:
    """A filter judged with its adaptation (`mode`) and watched by alarms (`alarm`); see the module doc.

    `score(texts, top_tokens)` returns what Filter.score returns, with the adapted scores and
    acceptances; `pop_alarms()` the alarms raised since the last call.
    """

    def __init__(
        self,
        model: Any,  # semcal.filtering.Filter
        mode: str = "none",
        alarm: str = "none",
        settings: AdaptSettings | None = None,
        trusted: list[str] | None = None,
    ):
        self.model, self.mode, self.settings = model, mode, settings or AdaptSettings()
        self.settings.check()
        reference: DriftReference | None = getattr(model, "drift", None)
        self.reference = reference
        self.alarm = self._alarm_statistic(alarm, reference)
        self._check_mode(trusted)
        self.seen = 0  # stream texts judged so far
        self.offset = 0.0  # the rate offset d
        self.block_accepted = 0.0  # the expected passes of the current block of `window` items so far
        self.rate = 1.0 / model.m  # the pass rate held (mode prior: what the label mix allows)
        # A filter fitted without labels keeps log-ratios only: no prior, no label weights.
        self.new_prior = None if reference is None else reference.stream_prior
        self.label_weights = None if self.new_prior is None else np.zeros(len(self.new_prior))  # prior: c
        self.source, self.link = model.source, model.link
        self.target_mix = self._saved_filter_mix() if self.mode == "prior" else None
        self.window = _Window(self.settings.window)
        self.alarm_items = _Window(self.settings.alarm_window)
        self.refit_texts: list[str] = []
        self.trusted = _sample(trusted, self.settings.max_trusted, self.settings.seed) if trusted else None
        self.alarms: list[Alarm] = []
        self.refits = self.restarts = 0
        self.threshold = self._alarm_threshold() if self.alarm != "none" else float("nan")
        if reference is not None and self.mode != "none":
            self._start_window(reference)

    # ---- set-up ---------------------------------------------------------------------------------

    def _check_mode(self, trusted: list[str] | None) -> None:
        if self.mode not in MODES:
            raise UserError(f"adapt={self.mode!r} is not one of {', '.join(MODES)}.")
        if self.mode == "prior" and not self._has_posterior():
            raise UserError(
                f"adapt=prior re-weights the filter by label and needs a label posterior, which filter "
                f"{self.model.name} does not carry (it was fitted without labels, or by an older semcal): fit it "
                "again with labels (semcal run, or semcal fit --label_column=...), or use adapt=rate."
            )
        if self.mode == "refit" and (self.model.source.language_models or not trusted):
            raise UserError(
                "adapt=refit refits a TF-IDF source on the trusted texts: give them as adapt_settings trusted=PATH "
                "(a file or DATASET:SPLIT of the trusted corpus) with a text filter, or use adapt=rate or prior."
            )

    def _has_posterior(self) -> bool:
        reference = self.reference
        return (
            reference is not None
            and reference.posterior is not None
            and getattr(self.model, "label_posterior", None) is not None
        )

    def _alarm_statistic(self, alarm: str, reference: DriftReference | None) -> str:
        if alarm not in ALARMS:
            raise UserError(f"alarm={alarm!r} is not one of {', '.join(ALARMS)}.")
        if alarm == "none":
            return alarm
        if reference is None:
            raise UserError(
                f"alarm={alarm} compares the stream with the one filter {self.model.name} was fitted on, which it "
                "does not carry (filters saved before drift alarms): fit it again with this semcal, or set alarm=none."
            )
        if alarm == "auto":
            return "prior" if self._has_posterior() else "mean_log_ratio"
        if alarm == "prior" and not self._has_posterior():
            raise UserError(
                f"alarm=prior needs a label posterior, which filter {self.model.name} does not carry: use "
                "alarm=mean_log_ratio, or fit the filter with labels."
            )
        return alarm

    def _alarm_threshold(self) -> float:
        """The statistic's (1 - rate) quantile over reference windows drawn with replacement."""
        reference, settings = self.reference, self.settings
        rng = np.random.default_rng(settings.seed)
        rows = rng.integers(0, len(reference.log_ratio), size=(settings.bootstrap, settings.alarm_window))
        if self.alarm == "prior":
            values = prior_statistic(reference.posterior[rows], reference.stream_prior)
        else:
            values = mean_log_ratio_statistic(reference.log_ratio[rows], float(np.mean(reference.log_ratio)))
        threshold = bootstrap_threshold(values, settings.false_alarm_rate)
        log.info(
            "drift alarms: %s per %d texts, threshold %.4g (false-alarm rate %g over %d reference windows)",
            self._statistic_name(),
            settings.alarm_window,
            threshold,
            settings.false_alarm_rate,
            settings.bootstrap,
        )
        return threshold

    def _statistic_name(self) -> str:
        return {"prior": "label_prior_kl", "mean_log_ratio": "mean_log_ratio_shift"}[self.alarm]

    def _start_window(self, reference: DriftReference) -> None:
        """The estimation window starts as the reference sample's last `window` items (see the module doc)."""
        scores = self.link.apply(reference.log_ratio, self.model.m)
        self.window.push(scores, reference.posterior if self.mode == "prior" else None)
        self._estimate()

    def _saved_filter_mix(self) -> np.ndarray:
        """The label mix the saved filter accepts on its own stream, counted by the posterior: what
        mode prior keeps. Counted by the same posterior on both sides, its counting errors cancel
        (a target of the trusted mix itself would move an undrifted filter by them)."""
        reference = self.reference
        accept = calibration.accept_probs(self.link.apply(reference.log_ratio, self.model.m), self.model.m)
        return accept @ reference.posterior / max(float(accept.sum()), _MIN_WEIGHT)

    def _uses_posterior(self) -> bool:
        return self.mode == "prior" or self.alarm == "prior"

    # ---- judging --------------------------------------------------------------------------------

    def score(self, texts: list[str] | Items, top_tokens: int = 0):
        """Per text the adapted score and acceptance (semcal.fit_data.Scored), in input order."""

        items = texts if isinstance(texts, Items) else Items(list(texts))
        scores = np.zeros(len(items))
        start = 0
        while start < len(items):
            # Up to the next update point: these items are judged with the current estimates.
            end = min(len(items), start + self.settings.update_every - self.seen % self.settings.update_every)
            scores[start:end] = self._judge_chunk(Items(items.texts[start:end]))
            start = end
        # The strongest tokens explain the saved source's score (the adaptation moves every text alike).
        explained = self.model.source.contributions(items, top_tokens) if top_tokens else [("", "")] * len(items)
        up, down = ([pair[i] for pair in explained] for i in (0, 1))
        return Scored(scores, calibration.accept_probs(scores, self.model.m), up, down)

    def accept_probs(self, texts: list[str] | Items) -> np.ndarray:
        return self.score(texts).accept

    def pop_alarms(self) -> list[Alarm]:
        alarms, self.alarms = self.alarms, []
        return alarms

    def _judge_chunk(self, items: Items) -> np.ndarray:
        """Score a chunk that lies between two update points, then take it into the estimates."""
        log_ratio = self.source.log_ratio(items)
        base = self.link.apply(log_ratio, self.model.m)
        posterior = self.model.label_posterior._posterior(items)[1] if self._uses_posterior() else None
        if self.mode == "none":
            adjusted = base
        else:
            adjusted = base + self.offset
            if self.mode == "prior":
                adjusted += self._prior_terms(posterior)
            self.block_accepted += float(calibration.accept_probs(adjusted, self.model.m).sum())
        if self.alarm == "mean_log_ratio" and self.source is not self.model.source:  # refitted: the saved one's
            log_ratio = self.model.source.log_ratio(items)
        self._observe(items, base, log_ratio, posterior)
        return adjusted

    def _observe(self, items: Items, base: np.ndarray, log_ratio: np.ndarray, posterior: np.ndarray | None) -> None:
        self.seen += len(items)
        if self.mode != "none":
            self.window.push(base, posterior if self.mode == "prior" else None)
        if self.alarm != "none":
            self.alarm_items.push(log_ratio, posterior)
            if self.seen % self.settings.alarm_window == 0:
                self._check_alarm()
        if self.mode == "refit":
            self.refit_texts = (self.refit_texts + items.texts)[-self.settings.refit_window :]
            if self.seen % self.settings.refit_every == 0:
                self._refit()
        if self.seen % self.settings.window == 0:
            self.block_accepted = 0.0
        if self.mode != "none" and self.seen % self.settings.update_every == 0:
            self._estimate()

    def _estimate(self) -> None:
        """The prior and label weights (mode prior) and the offset from the estimation window.

        The offset holds the pass rate per block of `window` items (counted from the first item):
        the rest of a block passes what the block still needs (`block_pass_rate`), so the rate
        over each block stays on 1/M however the items that came differed from the window's.

        An abrupt switch would otherwise be followed for a whole window by estimates that are
        partly the old stream's: when the last `change_window` items differ from the older ones
        (`_changed`), the window restarts from them (the older items are dropped) and grows back
        as items come. The EM starts from `prior_pseudo_count` items' worth of the fitted prior:
        a window's chance count of a rare label would otherwise move an undrifted filter.
        """
        if self.seen >= self.settings.change_window and self._changed():
            self.window.keep_last(self.settings.change_window)
            self.restarts += 1
            log.info(
                "adapt=%s: the stream changed at text %d; estimates restart from the last %d texts",
                self.mode,
                self.seen,
                self.settings.change_window,
            )
        scores = self.window.scores
        if self.mode == "prior":
            self.new_prior = em_prior(
                self.window.posterior, self.reference.stream_prior, self.settings.prior_pseudo_count
            )
            self.rate = feasible_pass_rate(self.target_mix, self.new_prior, self.model.m)
            self._match_labels()
            scores = scores + self._prior_terms(self.window.posterior)
        settings = self.settings
        pass_rate = block_pass_rate(self.rate, settings.window, self.seen % settings.window, self.block_accepted)
        self.offset = rate_offset(scores, self.model.m, pass_rate)

    def _match_labels(self) -> None:
        """The label weights c for the prior p', fitted on the reference sample weighted to p'
        (weight Z(x) = p'(x) / p(x)): thousands of items, so c carries no window's noise."""
        reference = self.reference
        log_z = log_prior_correction(reference.posterior, self.new_prior, reference.stream_prior)
        self.label_weights, _ = match_label_mix(
            self.link.apply(reference.log_ratio, self.model.m) - log_z,
            shifted_posterior(reference.posterior, self.new_prior, reference.stream_prior),
            self.target_mix,
            self.model.m,
            self.settings.match_ridge,
            self.label_weights,
            np.exp(log_z),
            self.rate,
        )

    def _prior_terms(self, posterior: np.ndarray) -> np.ndarray:
        """What mode prior adds to an item's score: -log Z(x) + c . log P'(y | x) (see match_label_mix)."""
        reference = self.reference
        shifted = shifted_posterior(posterior, self.new_prior, reference.stream_prior)
        return np.log(np.maximum(shifted, _MIN_POSTERIOR)) @ self.label_weights - log_prior_correction(
            posterior, self.new_prior, reference.stream_prior
        )

    def _changed(self) -> bool:
        """Whether the last `change_window` items differ from the older ones of the window beyond
        chance: a two-sample z statistic per feature (the acceptance under the saved link and, in
        mode prior, each label's posterior), the largest above `change_z`."""
        recent, window = self.settings.change_window, self.window
        if len(window.scores) < 2 * recent:
            return False
        features = calibration.accept_probs(window.scores, self.model.m)[:, None]
        if window.posterior is not None:
            features = np.column_stack([features, window.posterior])
        new, old = features[-recent:], features[:-recent]
        spread = np.sqrt(new.var(axis=0) / len(new) + old.var(axis=0) / len(old))
        z = np.abs(new.mean(axis=0) - old.mean(axis=0)) / np.maximum(spread, 1e-9)
        return bool(np.max(z) > self.settings.change_z)

    def _check_alarm(self) -> None:
        window = self.seen // self.settings.alarm_window
        if self.alarm == "prior":
            value = float(prior_statistic(self.alarm_items.posterior, self.reference.stream_prior))
        else:
            value = float(mean_log_ratio_statistic(self.alarm_items.scores, float(np.mean(self.reference.log_ratio))))
        if value > self.threshold:
            alarm = Alarm(
                window,
                self.seen - self.settings.alarm_window + 1,
                self.seen,
                self._statistic_name(),
                value,
                self.threshold,
                self.settings.false_alarm_rate,
            )
            log.warning("%s", alarm.message())
            self.alarms.append(alarm)

    def _refit(self) -> None:
        """A TF-IDF source on the trusted texts against the recent stream texts; temperature 1."""
        from semcal.calibrations import Link
        from semcal.sources import TfidfSource

        recent, trusted = self.refit_texts, self.trusted
        texts = recent + trusted
        is_real = np.concatenate([np.zeros(len(recent), bool), np.ones(len(trusted), bool)])
        heldout = np.zeros(len(texts), dtype=bool)  # every row trains: the rate offset calibrates the shift
        data = FitData(texts, is_real, heldout, Items(recent), self.model.m, form="pooled", seed=self.settings.seed)
        data.heldout_items = Items(recent[:1])  # the source scores its held-out rows after fitting; none are used
        source = TfidfSource()
        source.fit(data)
        self.source, self.link, self.refits = source, Link(temperature=1.0, shift=0.0), self.refits + 1
        self.window.scores = self.link.apply(source.log_ratio(Items(recent[-self.settings.window :])), self.model.m)
        self._estimate()
        log.info("adapt=refit: refit %d on %d stream and %d trusted texts", self.refits, len(recent), len(trusted))


def _sample(texts: list[str], limit: int, seed: int) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    rows = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
    return [texts[i] for i in rows]
