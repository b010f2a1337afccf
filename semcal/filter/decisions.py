"""Decisions from acceptance probabilities: which items of a stream pass.

Three modes, used by `semcal filter` and measured side by side by the evaluation:

- `sample` (the default): one uniform draw below a(x) per item. Rejection sampling: the accepted
  items follow the real distribution when a(x) is the true r(x) / M, which is what the deception
  reduction measures. The draw is a function of the seed and the item's key (its id, or its text
  when the stream has no ids), never of its position (`keyed_uniforms`): any split of the stream,
  in any order, over any number of processes, gives the same decisions.
- `threshold`: accept when a(x) >= tau. tau comes from the saved filter alone: the acceptance
  quantiles of the fit's stream (tau = the (1 - rate) quantile, so the stream passes `rate`) or
  of the held-out real rows (tau = the `max_false_rejection` quantile, so at most that share of
  real items is rejected). Ties at tau pass together, so a stream with many equal a(x) (e.g. at
  1) passes more than `rate`: `top` keeps the rate exactly.
- `top`: in each window of `window` consecutive items, the highest a(x) pass; the count per
  window keeps the running pass rate at round(rate * items so far), ties broken by input order.

Deterministic modes give auditable, repeatable decisions; they do not sample the real
distribution (a threshold keeps only the most real-looking part), which the evaluation's
`decisions` block prices in deception reduction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semcal.core.errors import UserError

MODES = ("sample", "threshold", "top")
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 1001)  # the saved acceptance quantiles: rates to 0.1%
DEFAULT_WINDOW = 1000


def draw(accept: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform draw per item from `rng` (the evaluation's Monte Carlo runs: fresh draws per run)."""
    return rng.random(len(accept)) < accept


def keyed_uniforms(keys: Sequence[str], seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per key, a function of (seed, key) alone: SipHash-2-4 of the key's
    UTF-8 bytes under a 128-bit key derived from the seed (pandas.util.hash_array, vectorised), its
    top 53 bits as a float. The same key always gets the same number, whatever comes before it."""
    import pandas as pd  # lazy: `semcal filter --help` does not need it

    hash_key = hashlib.blake2b(f"semcal-decisions:{seed}".encode(), digest_size=8).hexdigest()
    values = np.asarray(keys, dtype=object) if len(keys) else np.zeros(0, dtype=object)
    hashed = pd.util.hash_array(values, encoding="utf8", hash_key=hash_key, categorize=False)
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def decision_keys(texts: Sequence[str], ids: Sequence[Any] | None = None) -> list[str]:
    """What a `sample` decision is keyed on: each item's id as text (an id 7 and "7" are one key), or,
    for a stream without ids, its text (equal texts then get equal decisions)."""
    if ids is None:
        return list(texts)
    return [str(identifier) for identifier in ids]


def keyed_draw(accept: np.ndarray, keys: Sequence[str], seed: int) -> np.ndarray:
    """The `sample` decisions: accept an item when its keyed uniform (`keyed_uniforms`) is below a(x)."""
    return keyed_uniforms(keys, seed) < np.asarray(accept, dtype=np.float64)


def quantiles(accept: np.ndarray) -> list[float]:
    return [float(q) for q in np.quantile(np.asarray(accept, dtype=np.float64), QUANTILE_LEVELS)]


@dataclass
class Thresholds:
    """Acceptance quantiles at QUANTILE_LEVELS of the fit's stream and of the held-out real rows
    (None when the source has no held-out scores): what a saved filter needs for `threshold`."""

    stream: list[float]
    real_heldout: list[float] | None = None

    @classmethod
    def of(cls, stream_accept: np.ndarray, real_heldout_accept: np.ndarray | None) -> Thresholds:
        real = None if real_heldout_accept is None or not len(real_heldout_accept) else quantiles(real_heldout_accept)
        return cls(quantiles(stream_accept), real)

    def for_rate(self, rate: float) -> float:
        """tau for which the fit's stream passes `rate` (a >= tau)."""
        return float(np.interp(1.0 - rate, QUANTILE_LEVELS, self.stream))

    def for_false_rejection(self, max_false_rejection: float) -> float:
        """tau for which at most `max_false_rejection` of the held-out real rows fall below it."""
        if self.real_heldout is None:
            raise UserError(
                "this filter has no held-out real rows to set a false-rejection threshold on: set rate instead of "
                "max_false_rejection (or fit the filter with held-out scores)."
            )
        return float(np.interp(max_false_rejection, QUANTILE_LEVELS, self.real_heldout))

    def to_dict(self) -> dict[str, Any]:
        return {"levels": len(QUANTILE_LEVELS), "stream": self.stream, "real_heldout": self.real_heldout}

    @classmethod
    def from_dict(cls, saved: Any, where: str) -> Thresholds:
        """Saved quantiles, checked: as many as QUANTILE_LEVELS, non-decreasing, within [0, 1]."""
        if not isinstance(saved, dict):
            raise UserError(f"{where}: 'decision_thresholds' must be a JSON object: the filter is damaged.")
        tables = {key: saved.get(key) for key in ("stream", "real_heldout")}
        for key, table in tables.items():
            if table is None and key == "real_heldout":
                continue
            values = np.asarray(table if isinstance(table, list) else [], dtype=object)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            floats = np.asarray(values, dtype=np.float64) if numbers else np.array([np.nan])
            if (
                len(values) != len(QUANTILE_LEVELS)
                or not np.isfinite(floats).all()
                or (np.diff(floats) < 0).any()
                or floats.min() < 0
                or floats.max() > 1
            ):
                raise UserError(
                    f"{where}: decision_thresholds {key!r} must be {len(QUANTILE_LEVELS)} non-decreasing numbers in "
                    "[0, 1]: the filter is damaged; fit it again."
                )
        return cls(tables["stream"], tables["real_heldout"])


class TopShare:
    """The `top` mode over consecutive windows: the running pass rate stays at round(rate * seen)."""

    def __init__(self, rate: float):
        self.rate, self.seen, self.passed = rate, 0, 0

    def __call__(self, accept: np.ndarray) -> np.ndarray:
        accept = np.asarray(accept, dtype=np.float64)
        self.seen += len(accept)
        quota = int(np.clip(round(self.rate * self.seen) - self.passed, 0, len(accept)))
        keep = np.zeros(len(accept), dtype=bool)
        keep[np.argsort(-accept, kind="stable")[:quota]] = True  # stable: ties by input order
        self.passed += quota
        return keep


@dataclass
class Decider:
    """Decisions of one mode for batches of acceptances, in input order (only `top` keeps state, and so
    depends on the order: it ranks within windows of consecutive items)."""

    mode: str
    tau: float | None = None
    rate: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self._top = TopShare(self.rate) if self.mode == "top" else None

    def __call__(self, accept: np.ndarray, keys: Sequence[str] | None = None) -> np.ndarray:
        """Decisions for `accept`; `sample` needs each item's key (its id, or its text)."""
        if self.mode == "sample":
            if keys is None or len(keys) != len(accept):
                raise ValueError("decision=sample needs one key (id or text) per item")
            return keyed_draw(accept, keys, self.seed)
        if self.mode == "threshold":
            return np.asarray(accept, dtype=np.float64) >= self.tau
        return self._top(accept)


def decider(
    mode: str,
    pass_rate: float,
    thresholds: Thresholds | None,
    rate: float | None = None,
    max_false_rejection: float | None = None,
    seed: int = 0,
) -> Decider:
    """The Decider of `mode` for a filter passing `pass_rate` (1/M) with `thresholds` (its saved
    quantiles); `rate` overrides the share to pass, `max_false_rejection` sets tau by the real rows."""
    check_settings(mode, rate, max_false_rejection)
    target = pass_rate if rate is None else rate
    if mode != "threshold":
        return Decider(mode, rate=target, seed=seed)
    if thresholds is None:
        raise UserError(
            "this filter was saved without acceptance quantiles, which decision=threshold needs: fit it again with "
            "this semcal (semcal fit, or re-run the evaluation), or use decision=sample or top."
        )
    if max_false_rejection is not None:
        return Decider(mode, tau=thresholds.for_false_rejection(max_false_rejection))
    return Decider(mode, tau=thresholds.for_rate(target), rate=target)


def check_settings(mode: str, rate: float | None, max_false_rejection: float | None) -> None:
    if mode not in MODES:
        raise UserError(f"decision={mode!r} is not one of {', '.join(MODES)}: e.g. decision=threshold.")
    if rate is not None and not 0.0 < rate <= 1.0:
        raise UserError(f"rate must be the share of the stream to pass, in (0, 1] (got {rate}).")
    if max_false_rejection is not None:
        if not 0.0 <= max_false_rejection < 1.0:
            raise UserError(f"max_false_rejection must be in [0, 1) (got {max_false_rejection}), e.g. 0.05.")
        if mode != "threshold" or rate is not None:
            raise UserError("max_false_rejection sets the threshold: use it with decision=threshold and without rate.")
