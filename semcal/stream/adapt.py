"""A filter that stays calibrated when its stream drifts: online adaptation and drift alarms.

A saved filter is frozen at the stream it was fitted on: its shift makes THAT stream pass 1/M,
and its ratio r(x) = q(x) / p(x) assumes that stream's label mix p. When the stream drifts to
p', the pass rate moves off 1/M and the accepted mix moves off the trusted q. `Adapter` wraps a
filter and corrects it from the stream itself, item by item, in input order:

- `rate` (label-free, any filter): an offset d on the score so the items pass 1/M, from the
  last `window` items' scores (d = stream_shift(window scores, M), semcal.filter.ratio_calibration).
  On a flood of unlike texts it must pass more of them: it holds the rate, not the mix.
- `prior` (filters that carry a label posterior P(y | x)): the window's label prior p' by EM
  (semcal.filter.label_shift); the ratio for it, r'(x) = r(x) / Z(x), Z(x) = sum_y P(y | x) p'(y) / p(y);
  a weight c_y per label on log P'(y | x) so the accepted items, counted by the posterior, show
  the mix t the saved filter accepts on its own stream (`match_label_mix`, fitted on the
  filter's reference sample weighted by Z(x) to p': Z alone is too weak where the posterior is
  soft). Its pass rate is the most that keeps the mix t, min(1/M, min_y p'(y) / t(y))
  (`feasible_pass_rate`): on a flood it falls. The offset is never above the one the matching
  fitted on the weighted reference: where the window passes less than that reference says
  p' should, the stream holds less of what the mix needs than the posterior claims, and
  topping the rate up would pass the flood's texts that look most trusted-like.
- `refit` (text filters, given the trusted texts): every `refit_every` items a TF-IDF source is
  fitted afresh on the trusted texts against the last `refit_window` stream texts (bounded:
  at most `max_trusted` trusted texts), its log-ratio taken with temperature 1.

Every adaptive mode holds its pass rate per block of `window` items (counted from the first):
the offset is set for what the rest of the block still needs (`block_pass_rate`, at most twice
or half the rate). Estimates change only every `update_every` items, at fixed positions of the
stream, and each item is judged with the estimate made before it: the decisions are the same
for any batch size, given the seed and the input order. The estimation window starts filled
with the filter's reference sample (its fit's stream), so the first items are judged as the
saved filter judges them. It restarts from the last `change_window` items only on a change the
alarm's statistic confirms (`_changed`); each restart and each new target pass rate is a log
line naming the texts it was decided on.

Drift alarms (semcal.filter.drift_alarms): per tumbling window of `alarm_window` items the label
prior's KL or the mean log-ratio's shift from the reference, against the (1 - false_alarm_rate)
quantile of the same over `bootstrap` windows drawn from the reference sample. numpy / scipy
only, no file I/O (semcal.filter.drift saves and loads the reference).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from semcal.core.errors import UserError
from semcal.filter import calibration
from semcal.filter.drift_alarms import (
    Alarm,
    DriftReference,
    ItemWindow,
    bootstrap_threshold,
    change_statistic,
    change_statistics,
    mean_log_ratio_statistic,
    prior_statistic,
    reference_statistics,
)
from semcal.filter.fit_data import FitData, Items, Scored
from semcal.filter.label_shift import (
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
from semcal.stream.adapt_settings import AdaptSettings

__all__ = ["ALARMS", "MODES", "Adapter", "AdaptSettings"]

log = logging.getLogger(__name__)
_RATE_LOG_CHANGE = 0.1  # a target pass rate 10% off the last logged one is logged as new

MODES = ("none", "rate", "prior", "refit")
ALARMS = ("none", "auto", "prior", "mean_log_ratio")


# ---- the adaptive filter ----------------------------------------------------------------------------


class Adapter:
    """A filter judged with its adaptation (`mode`) and watched by alarms (`alarm`); see the module doc.

    `score(texts, top_tokens)` returns what Filter.score returns, with the adapted scores and
    acceptances; `pop_alarms()` the alarms raised since the last call.
    """

    def __init__(
        self,
        model: Any,  # semcal.filter.filtering.Filter
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
        self.window = ItemWindow(self.settings.window)
        self.alarm_items = ItemWindow(self.settings.alarm_window)
        self.refit_texts: list[str] = []
        self.trusted = _sample(trusted, self.settings.max_trusted, self.settings.seed) if trusted else None
        self.alarms: list[Alarm] = []
        self.refits = self.restarts = 0
        self.threshold = self._alarm_threshold() if self.alarm != "none" else float("nan")
        self.reference_offset = float("inf")  # prior: the offset matched on the weighted reference (a cap)
        self.logged_rate = self.rate  # the target pass rate last logged
        self.change_threshold = self._change_threshold() if reference is not None and self.mode != "none" else None
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
        values = reference_statistics(
            reference, reference.log_ratio, self.alarm, settings.alarm_window, settings.bootstrap, settings.seed
        )
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
        """Per text the adapted score and acceptance (semcal.filter.fit_data.Scored), in input order."""

        items = texts if isinstance(texts, Items) else Items(list(texts))
        scores = np.zeros(len(items))
        # The saved source scores the whole batch at once (one transform, not one per chunk);
        # refit's source changes between chunks and scores each.
        whole = None if self.mode == "refit" else self._source_scores(items)
        start = 0
        while start < len(items):
            # Up to the next update point: these items are judged with the current estimates.
            end = min(len(items), start + self.settings.update_every - self.seen % self.settings.update_every)
            chunk = Items(items.texts[start:end])
            if whole is None:
                known = self._source_scores(chunk)
            else:
                known = (whole[0][start:end], None if whole[1] is None else whole[1][start:end])
            scores[start:end] = self._judge_chunk(chunk, *known)
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

    def _source_scores(self, items: Items) -> tuple[np.ndarray, np.ndarray | None]:
        """The source's log-ratios and (where used) the label posterior of `items`."""
        posterior = self.model.label_posterior._posterior(items)[1] if self._uses_posterior() else None
        return self.source.log_ratio(items), posterior

    def _judge_chunk(self, items: Items, log_ratio: np.ndarray, posterior: np.ndarray | None) -> np.ndarray:
        """Judge a chunk that lies between two update points, then take it into the estimates."""
        base = self.link.apply(log_ratio, self.model.m)
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
        """The prior, label weights and target rate (mode prior) and the offset from the estimation window.

        The offset holds the pass rate per block of `window` items (counted from the first): the
        rest of a block passes what the block still needs (`block_pass_rate`). In mode prior it is
        capped by the offset matched on the reference weighted to p' (see the module doc). The EM
        starts from `prior_pseudo_count` items' worth of the fitted prior: a window's chance count
        of a rare label would otherwise move an undrifted filter.
        """
        if self._changed():
            self.window.keep_last(self.settings.change_window)
            self.restarts += 1
        scores, settings = self.window.scores, self.settings
        if self.mode == "prior":
            self.new_prior = em_prior(self.window.posterior, self.reference.stream_prior, settings.prior_pseudo_count)
            self.rate = feasible_pass_rate(self.target_mix, self.new_prior, self.model.m)
            # Logged per block (the rate is held per block), when 10% off the last one logged.
            if self.seen % settings.window == 0 and abs(self.rate / self.logged_rate - 1.0) > _RATE_LOG_CHANGE:
                self.logged_rate = self.rate
                log.info(
                    "adapt=prior: target pass rate %.4g (1/M %.4g), decided on %s",
                    self.rate,
                    1.0 / self.model.m,
                    self._window_texts(),
                )
            self._match_labels()
            scores = scores + self._prior_terms(self.window.posterior)
        pass_rate = block_pass_rate(self.rate, settings.window, self.seen % settings.window, self.block_accepted)
        self.offset = min(rate_offset(scores, self.model.m, pass_rate), self.reference_offset)

    def _window_texts(self) -> str:
        """Which texts the estimation window holds, for a log line."""
        size = len(self.window.scores)
        if size > self.seen:
            return f"the reference sample and texts 1-{self.seen}" if self.seen else "the reference sample"
        return f"texts {self.seen - size + 1}-{self.seen}"

    def _match_labels(self) -> None:
        """The label weights c for the prior p', fitted on the reference sample weighted to p'
        (weight Z(x) = p'(x) / p(x)): thousands of items, so c carries no window's noise; the
        offset fitted with them caps the window's (the reference's belief of what passes the rate)."""
        reference = self.reference
        log_z = log_prior_correction(reference.posterior, self.new_prior, reference.stream_prior)
        self.label_weights, self.reference_offset = match_label_mix(
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

    def _change_threshold(self) -> float:
        """The change statistic's threshold (`_changed`): its quantile over `window`-item windows
        drawn from the reference, each split as `_changed` splits the estimation window, at the
        alarm's false-alarm rate per `alarm_window` items spread over the checks in them (one
        every `update_every` items)."""
        settings, reference = self.settings, self.reference
        rate = settings.false_alarm_rate * settings.update_every / settings.alarm_window
        values = change_statistics(
            reference,
            self.link.apply(reference.log_ratio, self.model.m),
            self.mode == "prior",
            settings.change_window,
            settings.window,
            2 * settings.bootstrap,
            settings.seed + 1,
        )
        return bootstrap_threshold(values, rate)

    def _changed(self) -> bool:
        """Whether the last `change_window` items differ from the older ones of the window as the
        alarm's statistic would confirm (`change_statistic`: the KL of their EM label prior from
        the older items' one in mode prior, else the shift of their mean score), above
        `change_threshold`. A test of many features every few items (the earlier z test)
        restarted on undrifted streams."""
        recent, window = self.settings.change_window, self.window
        if self.change_threshold is None or self.seen < recent or len(window.scores) < 3 * recent:
            return False
        value = float(change_statistic(window.posterior, window.scores, recent, self.reference.stream_prior))
        name = "label prior KL" if window.posterior is not None else "mean score shift"
        if value <= self.change_threshold:
            return False
        log.info(
            "adapt=%s: texts %d-%d differ from the %d before them (%s %.4g > %.4g): estimates restart from them",
            self.mode,
            self.seen - recent + 1,
            self.seen,
            len(window.scores) - recent,
            name,
            value,
            self.change_threshold,
        )
        return True

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
        from semcal.filter.calibrations import Link
        from semcal.filter.sources import TfidfSource

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
