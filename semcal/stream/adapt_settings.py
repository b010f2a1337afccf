"""The settings of semcal.stream.adapt: windows, periods and rates of adaptation and drift alarms."""

from __future__ import annotations

from dataclasses import dataclass

from semcal.core.errors import UserError


@dataclass
class AdaptSettings:
    """Window sizes, periods and rates of adaptation and alarms (defaults measured on bench/bench_drift.py)."""

    window: int = 500  # items the rate and prior estimates look back over
    update_every: int = 25  # items between two re-estimates
    change_window: int = 50  # the recent items tested for a sudden change (see _changed)
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
