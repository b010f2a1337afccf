"""The distortion's planning math: how many rows of each label a real split takes to reach a
target KL(general || real) (numpy / scipy, no I/O; semcal.protocol.distort draws and writes the splits).

- `tilt`: q(y) proportional to p(y) * exp(lam * r_y), one seeded random score r_y per label;
  KL grows monotonically with lam, so lam is found by root finding (brentq).
- `max_subset`: among distributions at the target KL, the one that keeps the most rows (every
  row of some labels, one common share w of the others).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from semcal.filter import calibration

STRATEGIES = ("tilt", "max_subset")


@dataclass
class SplitPlan:
    """How many rows of each label a real split takes (none for a uniform target-0 split)."""

    name: str
    target_kl: float
    counts: np.ndarray  # rows to draw per label, in the order of `labels`


def _counts_for(q: np.ndarray, available: np.ndarray) -> np.ndarray:
    """The largest integer subset with label shares q: at least one row of every label."""
    with np.errstate(divide="ignore"):  # q underflows to 0 at extreme tilts: that label sets no bound
        total = np.min(available / q)
    return np.clip(np.round(q * total), 1, available).astype(int)


def realised_kl(general_counts: np.ndarray, counts: np.ndarray) -> float:
    return calibration.kl_divergence(general_counts / general_counts.sum(), counts / counts.sum())


def _within(achieved: float, target: float, tolerance: float) -> bool:
    return abs(achieved - target) <= tolerance * target


def _polish(general_counts: np.ndarray, counts: np.ndarray, target: float, max_moves: int = 200) -> np.ndarray:
    """Move single rows in or out while that brings the integer KL closer to the target.

    Rounding per-label counts to integers leaves the KL a little off, most on labels
    with few rows; one-row moves close most of that gap.
    """
    counts = counts.copy()
    error = abs(realised_kl(general_counts, counts) - target)
    for _ in range(max_moves):
        best_move, best_error = None, error
        for label in range(len(counts)):
            for step in (-1, 1):
                moved = counts[label] + step
                if 1 <= moved <= general_counts[label]:
                    counts[label] = moved
                    moved_error = abs(realised_kl(general_counts, counts) - target)
                    counts[label] -= step
                    if moved_error < best_error:
                        best_move, best_error = (label, step), moved_error
        if best_move is None:
            break
        counts[best_move[0]] += best_move[1]
        error = best_error
    return counts


# Precision of the tilt or share where KL reaches the target (brentq's xtol).
_XTOL = 1e-12


def _solve(kl_at, low: float, high: float, target: float) -> float:
    """Parameter where kl_at (increasing) reaches target; kl_at(low) < target <= kl_at(high) is assumed."""
    root = optimize.brentq(lambda value: kl_at(value) - target, low, high, xtol=_XTOL)
    # Integer counts make kl_at a step function and root its step: take whichever side lands closer.
    step = 2 * (_XTOL + 4 * np.finfo(float).eps * abs(root))
    sides = (max(low, root - step), min(high, root + step))
    return min(sides, key=lambda value: abs(kl_at(value) - target))


def plan_tilt(general_counts: np.ndarray, target: float, scores: np.ndarray) -> np.ndarray:
    """Counts per label of the tilt towards `scores` that reaches KL `target`."""
    p = general_counts / general_counts.sum()

    def counts_at(lam: float) -> np.ndarray:
        logits = np.log(p) + lam * scores
        q = np.exp(logits - logits.max())
        return _counts_for(q / q.sum(), general_counts)

    def kl_at(lam: float) -> float:
        return realised_kl(general_counts, counts_at(lam))

    high = 1.0
    while kl_at(high) < target:
        high *= 2.0
        if high > 1e4:
            limit = kl_at(high)
            raise Infeasible(
                f"the strongest tilt that keeps at least one row of every label reaches KL {limit:.3f}; "
                "lower the target, or change seed (which labels are favoured) or use strategy=max_subset"
            )
    return _polish(general_counts, counts_at(_solve(kl_at, 0.0, high, target)), target)


def plan_max_subset(general_counts: np.ndarray, target: float, tolerance: float) -> np.ndarray:
    p = general_counts / general_counts.sum()
    n_labels = len(p)
    if n_labels <= 16:
        candidates = [
            np.array(thinned)
            for size in range(1, n_labels)
            for thinned in itertools.combinations(range(n_labels), size)
        ]
    else:  # too many subsets to try: thin the rarest or the most common labels first
        ascending = np.argsort(p)
        candidates = [ascending[:k] for k in range(1, n_labels)] + [ascending[-k:] for k in range(1, n_labels)]

    best_counts, best_size = None, -1
    for thinned in candidates:

        def counts_at(keep_share: float, thinned=thinned) -> np.ndarray:
            counts = general_counts.copy()
            counts[thinned] = np.clip(np.round(general_counts[thinned] * keep_share), 1, None)
            return counts.astype(int)

        # KL falls as the kept share w rises: solve on -w so the searched function rises.
        def kl_at(minus_share: float, counts_at=counts_at) -> float:
            return realised_kl(general_counts, counts_at(-minus_share))

        if kl_at(-1e-9) < target:
            continue
        counts = _polish(general_counts, counts_at(-_solve(kl_at, -1.0, -1e-9, target)), target)
        if _within(realised_kl(general_counts, counts), target, tolerance) and counts.sum() > best_size:
            best_counts, best_size = counts, int(counts.sum())
    if best_counts is None:
        raise Infeasible(
            "no subset keeping at least one row of every label reaches it within tolerance; lower the target"
        )
    return best_counts


class Infeasible(Exception):
    pass


def label_scores(n_labels: int, seed: int) -> np.ndarray:
    """The seeded random score per label that the tilt strategy favours."""
    return np.random.default_rng(seed).standard_normal(n_labels)


def plan_split(
    name: str, target: float, general_counts: np.ndarray, strategy: str, tolerance: float, scores: np.ndarray
) -> SplitPlan:
    if target < 0:
        raise Infeasible("a KL target cannot be negative")
    if target == 0:
        # A uniform draw (see draw_rows): its per-label counts come from the draw itself.
        return SplitPlan(name, 0.0, np.zeros(0, dtype=int))
    if len(general_counts) < 2:
        raise Infeasible("general_train has a single label, so every subset has its distribution (KL 0)")
    if strategy == "tilt":
        counts = plan_tilt(general_counts, target, scores)
    else:
        counts = plan_max_subset(general_counts, target, tolerance)
    achieved = realised_kl(general_counts, counts)
    if not _within(achieved, target, tolerance):
        raise Infeasible(
            f"the closest subset the label counts allow reaches KL {achieved:.4f}, outside "
            f"{tolerance:.0%} of the target; general_train is too small for this target"
        )
    return SplitPlan(name, target, counts)
