"""The results an evaluation measures (semcal.reports.results.EvaluationResults, results.json): settings,
label distributions, KL, every filter's Monte Carlo and expected statistics, the per-item block
and the decision modes, assembled from the filters' acceptances and the rejection-sampling runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from semcal.core.config import config_to_dict
from semcal.filter import calibration, filters
from semcal.protocol import item_evaluation
from semcal.protocol.evaluation_config import EvaluationConfig
from semcal.protocol.evaluation_inputs import EvaluationInputs
from semcal.reports import results as result_file
from semcal.reports.numbers import format_number
from semcal.reports.results import EvaluationResults, FilterResult, PerItemBlock
from semcal.store import schema
from semcal.store.data import real_split_name


@dataclass
class Acceptance:
    """A measured filter's output on the evaluated texts: acceptance probability per text, its
    score s(x) when it has one (per_text.csv shows it), and its results block's statistics."""

    accept: np.ndarray
    scores: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def collect_results(
    config: EvaluationConfig,
    inputs: EvaluationInputs,
    facts: dict[str, Any],
    accepted: dict[str, Acceptance],
    runs: dict[str, calibration.FilterRuns],
    form: str,
    per_item: PerItemBlock,
) -> EvaluationResults:
    """results.json: settings, inputs, label distributions, KL, every filter's statistics, the
    per-item block and the decision modes; `form` how the real split relates to general_train."""
    labels, m = inputs.labels, inputs.m
    reported = {key: value for key, value in facts.items() if key not in ("fingerprints", "general_test_distribution")}
    evaluated = calibration.label_distribution(inputs.test_codes, len(labels))
    kl_general = calibration.kl_divergence(evaluated, inputs.real, config.kl_epsilon)
    kl_general_is_zero = config.distortion == "baseline" or kl_general < config.min_kl_general

    def result(name: str) -> FilterResult:
        measured = _filter_result(accepted[name].accept, runs[name], inputs, kl_general, kl_general_is_zero, config)
        return schema.from_dict(FilterResult, {**accepted[name].stats, **measured}, name, result_file.FIX)

    chosen = filters.describe(config.filter)
    kinds = {name: filters.describe(name).kind for name in accepted}
    measured = {"semcal": replace(result(chosen.name), filter_name=chosen.name, kind=chosen.kind)}
    measured |= {name: result(name) for name, kind in kinds.items() if kind != "variant"}
    variants = {name: result(name) for name, kind in kinds.items() if kind == "variant"}
    shown_kl = float("nan") if kl_general_is_zero else kl_general
    decisions = _decisions(inputs, accepted, measured | variants, shown_kl, config)
    return result_file.from_dict(
        {
            "stage": "evaluate",
            "dataset_name": config.dataset_name,
            "distortion": config.distortion,
            "real_split": real_split_name(config.distortion),
            "label_column": config.label_column,
            "filter_name": chosen.name,
            "paper_filter": filters.PAPER_FILTER,
            "config": config_to_dict(config),
            **reported,
            "M": m,
            "ideal_pass_rate": 1.0 / m,
            "labels": labels,
            "distributions": {
                "real_train": _by_label(inputs.real, labels),
                "general_train": _by_label(inputs.general, labels),
                "general_test": _by_label(facts["general_test_distribution"], labels),
                "evaluated": _by_label(evaluated, labels),
            },
            "kl_general": kl_general,
            "tvd_general": calibration.total_variation(evaluated, inputs.real),
            "kl_general_is_zero": bool(kl_general_is_zero),
            "kl_note": _kl_note(kl_general, kl_general_is_zero, config),
            "filters": measured,
            "variants": variants,
            "monte_carlo": {
                "n_runs": config.n_runs,
                "seed": config.seed,
                "std": "population standard deviation over runs (ddof=0): the spread of single runs, "
                "not the standard error of the mean",
                "common_random_numbers": "every filter and variant is measured on the same uniform draws",
                "pass_rate_unit": "fraction of evaluated texts (0-1)",
            },
            "real_rows": form,  # subset: marked rows of general_train; pooled: a corpus of its own
            "per_item": per_item,
            "decisions": decisions,
        }
    )


def _filter_result(
    accept: np.ndarray,
    runs: calibration.FilterRuns,
    inputs: EvaluationInputs,
    kl_general: float,
    kl_general_is_zero: bool,
    config: EvaluationConfig,
) -> dict[str, Any]:
    stats = runs.summary()
    labels, real = inputs.labels, inputs.real
    expected = calibration.expected_filtered_distribution(accept, inputs.test_codes, len(labels))
    result: dict[str, Any] = {
        **stats,
        "accept_prob_mean": float(np.mean(accept)),  # the expected pass rate
        "expected_kl": calibration.kl_divergence(expected, real, config.kl_epsilon),
        "expected_tvd": calibration.total_variation(expected, real),
        "expected_distribution": _by_label(expected, labels),
        "mean_distribution": _by_label(runs.mean_distribution, labels),
        "kl_ratio": stats["kl_mean"] / kl_general if kl_general > 0 and np.isfinite(kl_general) else float("nan"),
        "deception_reduction": None,
        "infinite_kl_labels": [
            label
            for label, q, mass in zip(labels, real, expected, strict=True)
            if q == 0 and mass > 0 and config.kl_epsilon == 0
        ],
    }
    if not kl_general_is_zero:
        reduction = calibration.deception_reduction(stats["kl_mean"], kl_general)
        result["deception_reduction"] = None if np.isnan(reduction) else reduction
    return result


def _kl_note(kl_general: float, is_zero: bool, config: EvaluationConfig) -> str:
    if not np.isfinite(kl_general):
        return (
            "KL(general||real) is infinite: general_test has labels that real_train never shows, so no reduction "
            "can be computed. Set kl_epsilon (e.g. 1e-6) to smooth."
        )
    if is_zero:
        why = (
            "the baseline split" if config.distortion == "baseline" else f"below min_kl_general={config.min_kl_general}"
        )
        return (
            f"KL(general||real) = {kl_general:.4g} is about 0 ({why}): the deception reduction would be a ratio of "
            "noise, so KL values (and kl_ratio = KL filtered / KL general) are reported instead."
        )
    return ""


def _by_label(distribution: np.ndarray, labels: list[str]) -> dict[str, float]:
    return {label: float(value) for label, value in zip(labels, distribution, strict=True)}


def one_line_summary(results: EvaluationResults) -> str:
    """The stage's closing line, e.g. "reduction 65.1% (oracle 98.0%), pass rate 0.21 (1/M 0.20)"."""
    semcal = results.chosen
    passed = f"pass rate {semcal.pass_rate_mean:.2f} (1/M {results.ideal_pass_rate:.2f})"
    warned = f"; {len(results.warnings)} warnings (summary.md)" if results.warnings else ""
    if semcal.deception_reduction is None:
        kl = f"KL {format_number(results.kl_general)} -> {format_number(semcal.kl_mean)}"
        why = "KL(general||real) about 0" if results.kl_general_is_zero else "infinite KL"
        return f"{kl} ({why}: no reduction), {passed}{warned}"
    oracle = results.filters["oracle"].deception_reduction
    shown = "n/a" if oracle is None else f"{100 * oracle:.1f}%"
    worse = "worse than no filter; " if semcal.deception_reduction < 0 else ""
    return f"reduction {100 * semcal.deception_reduction:.1f}% ({worse}oracle {shown}), {passed}{warned}"


def _decisions(
    inputs: EvaluationInputs,
    accepted: dict[str, Acceptance],
    sampled: dict[str, FilterResult],
    kl_general: float,
    config: EvaluationConfig,
) -> result_file.DecisionsBlock:
    """Each decision mode's deception reduction beside sampling (semcal.protocol.item_evaluation); kl_general NaN
    when it is about 0."""
    return item_evaluation.decision_modes(
        {name: acceptance.accept for name, acceptance in accepted.items() if name != "no_filter"},
        sampled,
        inputs.test_codes,
        inputs.real,
        kl_general,
        1.0 / inputs.m,
        config.kl_epsilon,
        config.decision_window,
    )
