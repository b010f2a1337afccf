"""The per-item calibration and decision modes for people: summary.md and fit_report.md sections,
and the reliability diagram (semcal.protocol.item_evaluation computes the numbers)."""

from __future__ import annotations

from typing import Any

import numpy as np

from semcal.reports.numbers import format_number
from semcal.reports.results import DecisionsBlock, PerItemBlock

FIGURE_STEM = "reliability"  # reliability.png beside results.json (and in a semcal fit folder)
METRICS = (("brier", "Brier"), ("log_loss", "log loss"), ("roc_auc", "AUC"), ("mcc", "MCC"), ("ece", "ECE"))
METRICS += (("sn34", "sn34"),)


def per_item_lines(block: PerItemBlock, chosen: str | None = None) -> list[str]:
    """The per-item table: the constant reference first, then each filter (THE filter marked)."""
    reference = block.reference
    if reference is None:
        return ["", "## Per-item calibration", "", block.note or "not measured", ""]
    lines = [
        "",
        "## Per-item calibration (held-out rows, membership known)",
        "",
        f"Each filter's acceptance read as the probability that a held-out row belongs to the real split "
        f"({block.conversion}); {reference.rows} rows, {reference.members} members. The constant "
        f"predictor ({format_number(reference.forecast, 3)} for every row) is the reference. MCC at p ≥ "
        f"{reference.mcc_threshold}; ECE over {len(reference.reliability)}+ equal-mass bins; sn34 = "
        "√(((MCC+1)/2)^1.2 · ((0.25−Brier)/0.25)^1.8). "
        + (
            "The held-out rows also fit the calibrations' temperature."
            if block.heldout_used_by_calibrations is not False
            else "Each row's acceptance comes from the filter calibrated without it (cross-fitted)."
        ),
        "",
        "| filter | " + " | ".join(label for _, label in METRICS) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    named = [("constant (reference)", reference)] + [
        (f"**{name}**" if name == chosen else name, metrics) for name, metrics in block.filters.items()
    ]
    for name, metrics in named:
        lines.append(f"| {name} | " + " | ".join(format_number(getattr(metrics, key), 4) for key, _ in METRICS) + " |")
    if block.skipped:
        lines += ["", f"Not measured: {', '.join(block.skipped)} ({next(iter(block.skipped.values()))})."]
    return lines


def decision_lines(block: DecisionsBlock) -> list[str]:
    """Deception reduction of each decision mode beside sampling (%)."""
    lines = [
        "",
        "## Decision modes",
        "",
        f"Deception reduction (%) and pass rate (%) of each mode on the same texts, at the rate 1/M = "
        f"{format_number(100 * block.rate, 3)}%: sample (seeded draws, Monte Carlo mean; in brackets the expected "
        f"distribution's), threshold (a ≥ τ passing 1/M), top (the 1/M highest of each {block.window} texts). "
        "Deterministic modes have no spread.",
        "",
        "| filter | sample | threshold | top | pass rate sample / threshold / top | τ |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, modes in block.filters.items():
        sample, threshold, top = modes.sample, modes.threshold, modes.top
        rates = " / ".join(_percent(mode.pass_rate) for mode in (sample, threshold, top))
        lines.append(
            f"| {name} | {_percent(sample.deception_reduction)} ({_percent(sample.expected_deception_reduction)})"
            f" | {_percent(threshold.deception_reduction)} | {_percent(top.deception_reduction)} | {rates} | "
            f"{format_number(threshold.tau, 3)} |"
        )
    return lines


def _percent(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{100 * float(value):.1f}"


def plot_reliability(block: PerItemBlock, title: str, chosen: str | None = None):
    """Small multiples, one panel per filter: mean forecast vs observed member share of each
    equal-mass bin (marker area ∝ rows), the diagonal (calibrated) and the constant reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(block.filters)
    if chosen in names:  # THE filter first
        names.remove(chosen)
        names.insert(0, chosen)
    columns = min(4, max(len(names), 1))
    rows = int(np.ceil(max(len(names), 1) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    reference = block.reference
    top = max(
        [b.mean_forecast for m in block.filters.values() for b in m.reliability]
        + [b.observed for m in block.filters.values() for b in m.reliability]
        + [reference.forecast, 0.05]
    )
    limit = min(1.0, 1.1 * top)
    for axis, name in zip(axes.flat, names, strict=False):
        metrics = block.filters[name]
        bins = metrics.reliability
        axis.plot([0, limit], [0, limit], color="#999", linewidth=1, linestyle="--")
        axis.scatter(
            [b.mean_forecast for b in bins],
            [b.observed for b in bins],
            s=[20 + 200 * b.rows / metrics.rows for b in bins],
            color="#2166ac",
            alpha=0.8,
        )
        axis.plot([b.mean_forecast for b in bins], [b.observed for b in bins], color="#2166ac", linewidth=1)
        axis.scatter([reference.forecast], [reference.reliability[0].observed], marker="x", color="#b2182b")
        axis.set_xlim(0, limit)
        axis.set_ylim(0, limit)
        axis.set_title(
            f"{name}{' (THE filter)' if name == chosen else ''}\nBrier {metrics.brier:.3f} (const "
            f"{reference.brier:.3f}), ECE {metrics.ece:.3f}",
            fontsize=8,
        )
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    figure.supxlabel("predicted acceptance (membership probability), bin mean", fontsize=9)
    figure.supylabel("observed share of real-split members", fontsize=9)
    figure.suptitle(f"{title}\nreliability on held-out rows (× = constant predictor)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))  # room for the two-line title
    return figure


def write_reliability(folder, block: PerItemBlock, title: str, chosen: str | None = None) -> list[str]:
    """reliability.png in `folder` when the block has filters to draw; the names written."""
    from semcal.store import files

    if not block.filters:
        return []
    figure = plot_reliability(block, title, chosen)
    return [path.name for path in files.save_figure(figure, folder / FIGURE_STEM, formats=("png",))]
