"""Figures and tables for people: label-distribution charts and result summaries."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from semcal.filter import filters as filter_names
from semcal.reports.numbers import format_number, format_percent
from semcal.reports.results import EvaluationResults, FilterResult

# Below these, an evaluation's figures are mostly sampling noise: the KL of a sample of n texts over
# K labels is biased up by about (K - 1) / (2n), and a run's filtered sample is evaluated / M texts.
MIN_EVALUATED_TEXTS = 1000
MIN_ACCEPTED_PER_LABEL = 10  # expected accepted texts per label in one rejection-sampling run


def reliability_warnings(results: EvaluationResults) -> list[str]:
    """What a reader must know before trusting the deception reduction of `results`: that the filter
    makes the stream worse than no filter, or that the data set is too small for the figures to mean much."""
    warnings = []
    semcal, oracle = results.chosen, results.filters.get("oracle")
    reduction = semcal.deception_reduction
    if reduction is not None and reduction < 0:
        warnings.append(
            f"the filter {results.filter_name} makes the stream worse than no filter: deception reduction "
            f"{format_percent(reduction)}% (KL(filtered‖real) {format_number(semcal.kl_mean)} above KL(general‖real) "
            f"{format_number(results.kl_general)}; the oracle reaches "
            f"{format_percent(oracle.deception_reduction if oracle else None)}%). "
            "Do not deploy it: try another filter setting, or more data."
        )
    evaluated, labels, m = results.counts.evaluated, max(len(results.labels), 1), float(results.M)
    accepted = evaluated / m if m > 0 else float(evaluated)
    if evaluated < MIN_EVALUATED_TEXTS or accepted / labels < MIN_ACCEPTED_PER_LABEL:
        bias = (labels - 1) / (2 * max(accepted, 1.0))
        warnings.append(
            f"the data set is too small for these figures to mean much: {evaluated} texts evaluated, about "
            f"{accepted:.0f} accepted a run over {labels} labels (semcal asks for at least {MIN_EVALUATED_TEXTS} "
            f"evaluated texts and {MIN_ACCEPTED_PER_LABEL} accepted texts per label a run); the KL of so few texts "
            f"is biased up by about (labels - 1) / (2 × accepted) = {format_number(bias, 3)}, against "
            f"KL(general‖real) = {format_number(results.kl_general)}."
        )
    return warnings


def table_warnings(results_list: list[EvaluationResults], dataset_labels: list[str]) -> list[str]:
    """The reliability warnings of each row of a results table, as "data set / split: warning"."""
    return [
        f"{label} / {results.distortion}: {warning}"
        for results, label in zip(results_list, dataset_labels, strict=True)
        for warning in reliability_warnings(results)
    ]


def _table_filters(results: EvaluationResults) -> list:
    """The filters that get a column in the results table: always (oracle, classifier), or when
    these results measured them (semcal.filter.filters.TABLE_MEASURED)."""
    return filter_names.table_columns(list(results.filters))


def plot_label_distributions(frequencies: pd.DataFrame, title: str, sort_by: str | None = None):
    """Grouped bars of normalised label frequencies, one bar colour per set (column).

    `frequencies` has one row per label and one column per set (general, real, filtered,
    ...), each column summing to 1. Labels are sorted by `sort_by` (descending), so the
    eye can follow how far each set departs from the reference.
    """
    import matplotlib

    matplotlib.use("Agg")  # figures are written to files; no display is needed or assumed
    import matplotlib.pyplot as plt
    import seaborn as sns

    if sort_by is not None:
        frequencies = frequencies.sort_values(sort_by, ascending=False)
    long = frequencies.rename_axis("label").reset_index().melt(id_vars="label", var_name="set", value_name="frequency")
    n_labels = len(frequencies)
    width = min(max(6.0, 0.55 * n_labels * max(1, frequencies.shape[1]) / 2), 40.0)
    figure, axes = plt.subplots(figsize=(width, 4.8))
    sns.barplot(data=long, x="label", y="frequency", hue="set", ax=axes)
    axes.set_title(title)
    axes.set_xlabel("")
    axes.set_ylabel("normalised frequency")
    rotation = 0 if n_labels <= 5 and max(len(str(v)) for v in frequencies.index) <= 14 else 45
    plt.setp(axes.get_xticklabels(), rotation=rotation, ha="right" if rotation else "center")
    axes.legend(title="")
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------
# Evaluation results (results.json of semcal.protocol.evaluation) as Markdown and table rows.


def _mean_std(mean, std) -> str:
    return f"{format_number(mean)} ± {format_number(std)}"


def _number(value: float | None) -> float | None:
    """A number of the numeric table: None for missing and NaN (an empty CSV cell)."""
    return None if value is None or value != value else float(value)


def _reduction_cell(results: EvaluationResults, block: FilterResult | None) -> str:
    if block is None:
        return "—"
    if results.kl_general_is_zero:
        return f"n/a (KL≈0; ×{format_number(block.kl_ratio, 3)})"
    if block.deception_reduction is None:
        return "n/a (KL inf)" if math.inf in (block.kl_mean, results.kl_general) else "n/a"
    return format_percent(block.deception_reduction)


def results_table_row(
    results: EvaluationResults, dataset_label: str | None = None, numeric: bool = False, variants: tuple[str, ...] = ()
) -> dict:
    """One row of the paper-style table from one results.json.

    Display row (default): data set, split (the distortion), KL(general||real), KL(filtered||real)
    mean ± std (population std over runs), deception reduction (%), pass rate (%), then
    "<label> reduction (%)" of each filter of the registry shown in the table (oracle,
    classifier, ...) and of each name in `variants`.
    When KL(general||real) is about 0 (the baseline split), reduction cells read
    "n/a (KL≈0; ×r)" with r = KL filtered / KL general. With numeric=True: the same numbers as
    floats (percent columns in %, None where not applicable), for CSV and averaging over seeds.
    """
    filters = results.filters
    semcal = results.chosen
    dataset = dataset_label or results.dataset_name
    if numeric:

        def pct(value: float | None) -> float | None:
            value = _number(value)
            return None if value is None else 100 * value

        row = {
            "dataset": dataset,
            "split": results.distortion,
            "filter_name": results.filter_name,
            "kl_general": _number(results.kl_general),
            "kl_filtered_mean": _number(semcal.kl_mean),
            "kl_filtered_std": _number(semcal.kl_std),
            "kl_ratio": _number(semcal.kl_ratio),
            "deception_reduction_pct": pct(semcal.deception_reduction),
            "pass_rate_pct": pct(semcal.pass_rate_mean),
            "ideal_pass_rate_pct": pct(results.ideal_pass_rate),
        }
        row |= _brier_cells(results, numeric=True)
        blocks = [(f.name, filters.get(f.name)) for f in _table_filters(results)]
        for name, block in blocks + [(name, results.variants.get(name)) for name in variants]:
            row[f"{name}_kl_mean"] = _number(block.kl_mean) if block else None
            row[f"{name}_reduction_pct"] = pct(block.deception_reduction) if block else None
        return row
    row = {
        "data set": dataset,
        "split": results.distortion,
        "KL(general||real)": format_number(results.kl_general),
        "KL(filtered||real)": _mean_std(semcal.kl_mean, semcal.kl_std),
        "deception reduction (%)": _reduction_cell(results, semcal),
        "pass rate (%)": format_percent(semcal.pass_rate_mean),
        **_brier_cells(results, numeric=False),
    }
    for f in _table_filters(results):
        row[f"{f.label} reduction (%)"] = _reduction_cell(results, filters.get(f.name))
    for name in variants:
        row[f"{name} reduction (%)"] = _reduction_cell(results, results.variants.get(name))
    return row


def _brier_cells(results: EvaluationResults, numeric: bool) -> dict:
    """THE filter's per-item Brier score on held-out rows beside the constant predictor's (semcal.protocol.item_metrics)."""
    metrics = results.per_item.filters.get(results.filter_name)
    reference = results.per_item.reference
    if numeric:
        return {
            "brier": _number(metrics.brier) if metrics else None,
            "brier_constant": _number(reference.brier) if reference else None,
            "sn34": _number(metrics.sn34) if metrics else None,
        }
    shown = f"{format_number(metrics.brier, 3)} ({format_number(reference.brier, 3)})" if metrics and reference else "—"
    return {"Brier (constant)": shown}


def format_table(rows: list[dict]) -> str:
    """A Markdown table of rows (dicts); columns in first-seen order, numbers via format_number."""
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def cell(value) -> str:
        text = format_number(value) if isinstance(value, float) or value is None else str(value)
        return text.replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def evaluation_summary_markdown(results: EvaluationResults) -> str:
    """summary.md of one evaluation: settings, warnings, KL of every filter and variant, scores,
    label distributions."""
    from semcal.reports import item_report  # it formats with this module's helpers

    lines = _summary_header(results) + _summary_filters(results) + _summary_distributions(results)
    figures, reliability = (results.outputs.figures, results.outputs.reliability) if results.outputs else ([], [])
    if figures:
        lines += ["", f"![label distributions]({figures[0]})"]
    lines += item_report.per_item_lines(results.per_item, results.filter_name)
    lines += item_report.decision_lines(results.decisions)
    lines += [f"\n![reliability]({name})" for name in reliability]
    return "\n".join(lines) + "\n"


def _summary_header(results: EvaluationResults) -> list[str]:
    counts, join = results.counts, results.join.general_test
    joined = (
        f"(general scores file lost {join.general_lost} rows in the join, real scores file {join.real_lost})"
        if join
        else "(no language-model scores read: every row)"
    )
    lines = [
        f"# Semantic calibration: {results.dataset_name} / {results.distortion}",
        "",
        f"Filter: **{results.filter_name}** (filter={results.filter_name}); the paper's method is "
        f"`filter={filter_names.PAPER_FILTER}`. "
        f"{results.monte_carlo.n_runs} rejection-sampling runs, seed {results.monte_carlo.seed}; "
        "± is the population standard deviation over runs, not the standard error.",
        "",
        f"- texts evaluated: {counts.evaluated} of {counts.general_test} general_test rows {joined}",
        f"- general_train {counts.general_train}, {results.real_split} {counts.real_train}: "
        f"M = {format_number(results.M)}, ideal pass rate 1/M = {format_percent(results.ideal_pass_rate)}%",
        f"- KL(general||real) = {format_number(results.kl_general)}, TVD = {format_number(results.tvd_general)}",
    ]
    excluded = results.excluded_nonfinite
    if excluded.general_test or excluded.heldout:
        lines.append(
            f"- left out for a NaN or infinite log-prob: {excluded.general_test} general_test texts, "
            f"{excluded.heldout} held-out texts"
        )
    if results.kl_note:
        lines.append(f"- {results.kl_note}")
    # The evaluation stores the reliability warnings; a results object changed since gets the new ones too.
    warnings = results.warnings + [w for w in reliability_warnings(results) if w not in results.warnings]
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {warning}" for warning in warnings)]
    return lines


def _summary_filters(results: EvaluationResults) -> list[str]:
    """The table of every filter (registry order: THE filter, variants, references and estimators) and the scores."""
    filters, variants = results.filters, results.variants
    lines = [
        "",
        "| filter | KL(filtered‖real) | runs with KL = inf | TVD | pass rate (%) | expected KL | reduction (%) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    named = [(f"semcal ({results.filter_name})", results.chosen)]
    named += [(f"variant {name}", block) for name, block in variants.items()]
    named += [(filter_names.describe(name).label, block) for name, block in filters.items() if name != "semcal"]
    for name, block in named:
        lines.append(
            f"| {name} | {_mean_std(block.kl_mean, block.kl_std)} | {block.kl_infinite_runs} | "
            f"{_mean_std(block.tvd_mean, block.tvd_std)} | {format_percent(block.pass_rate_mean)} ± "
            f"{format_percent(block.pass_rate_std)} | {format_number(block.expected_kl)} | "
            f"{_reduction_cell(results, block)} |"
        )
    infinite = sorted({label for _, block in named for label in block.infinite_kl_labels})
    if infinite:
        lines += [
            "",
            f"KL is infinite where a filter lets through labels real_train never shows ({', '.join(infinite)}); "
            "set kl_epsilon to smooth.",
        ]
    lines += ["", "## Scores", "", "s(x) = t · l(x) + c, or the logistic link; a(x) = min(1, exp(s(x)) / M).", ""]
    lines += [
        "| variant | link | mean | std | log mean exp on test (0 = calibrated) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, block in variants.items():
        lines.append(
            f"| {name} | {_link(block.stats.get('link') or {})} | {format_number(block.score_mean)} | "
            f"{format_number(block.score_std)} | {format_number(block.test_log_mean_exp)} |"
        )
    return lines + _summary_calibrations(filters)


def _link(link: dict) -> str:
    """A filter's link (its stats: calibrations.Link.to_dict) as a formula's numbers."""
    if link.get("link") == "logistic":
        return f"logistic ({format_number(link['intercept'])} + {format_number(link['slope'])} l)"
    return f"t {format_number(link.get('temperature'))}, c {format_number(link.get('shift'))}"


def _summary_calibrations(filters: dict[str, FilterResult]) -> list[str]:
    """The calibrated filters' fitted parameters (their stats): a(x) = min(1, exp(t * l(x) + c) / M)."""
    calibrated = {name: block for name, block in filters.items() if name != "semcal" and "calibration" in block.stats}
    if not calibrated:
        return []
    lines = [
        "",
        "## Calibrations",
        "",
        "a(x) = min(1, exp(t · l(x) + c) / M); a shift-test statistic at or below its threshold makes t = 0 (flat).",
        "",
        "| filter | l(x) | criterion | temperature t | shift c | shift test (threshold) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, block in calibrated.items():
        fit = block.stats.get("calibration") or {}
        test = f"{format_number(fit.get('shift_statistic'))} ({format_number(fit.get('shift_threshold'))})"
        lines.append(
            f"| {name} | {block.log_ratio or ''} | {fit.get('criterion', 'none')} | "
            f"{format_number(fit['temperature'])} | {format_number(fit['shift'])} | {test} |"
        )
    return lines


def _summary_distributions(results: EvaluationResults) -> list[str]:
    distributions = results.distributions
    sets = {
        "general (evaluated)": distributions.evaluated,
        "real_train": distributions.real_train,
        "filtered (mean over runs)": results.chosen.mean_distribution,
        "filtered (expected)": results.chosen.expected_distribution,
        "oracle (expected)": results.filters["oracle"].expected_distribution,
    }
    lines = ["", "## Label distributions", "", "| label | " + " | ".join(sets) + " |"]
    lines.append("| --- |" + " --- |" * len(sets))
    order = sorted(results.labels, key=lambda label: -(distributions.real_train[label] or 0.0))
    for label in order:
        lines.append(f"| {label} | " + " | ".join(format_number(dist[label], 3) for dist in sets.values()) + " |")
    return lines


def plot_log_ratios(real: np.ndarray, general: np.ndarray, general_accept: np.ndarray, name: str):
    """Histograms of the source's log-ratio l(x) of held-out trusted and stream texts, and of the
    stream weighted by its acceptance (the stream as the filter passes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    values = np.concatenate([real, general])
    low, high = np.percentile(values, 0.5), np.percentile(values, 99.5)
    if high <= low:  # every text scored alike (corpora that cannot be told apart)
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 50)
    style = {"bins": bins, "density": True, "histtype": "step", "linewidth": 1.8}
    shown = (general >= low) & (general <= high)  # a weighted histogram needs weight inside its bins
    axes.hist(real, label=f"trusted (held out, {len(real)})", color="#1b7837", **style)
    axes.hist(general, label=f"stream (held out, {len(general)})", color="#762a83", **style)
    if general_accept[shown].sum() > 0:
        axes.hist(
            general,
            weights=general_accept,
            label="stream weighted by acceptance",
            color="#e08214",
            linestyle="--",
            **style,
        )
    axes.set_xlabel("log-ratio l(x) = log p_real(x) / p_general(x) (estimated)")
    axes.set_ylabel("density")
    axes.set_title(f"{name}: trusted vs stream texts")
    axes.legend(frameon=False)
    figure.tight_layout()
    return figure
