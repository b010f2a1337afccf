"""Evaluation stage: filter general_test by rejection sampling and measure how close the
filtered label distribution comes to real_train_<distortion>'s.

Reads the data set written by distort and the per-token log-prob files of general_test
under the general and the real model (token_sequence_probs output), and optionally of
held-out general_train texts. Every filter of the registry (semcal.filters: no filter, the
oracle, every score variant, the estimators such as the TF-IDF classifier) turns them into
acceptance probabilities; `n_runs` seeded rejection-sampling runs measure them all on the
same random draws. The `filter` setting chooses THE filter (`filters.semcal` in results.json):
any registered filter but the references, or `variant`, the `score` / `normalize` variant
(filter=variant score=clipped normalize=none is the paper's exact method). Optional inputs
switch more filters on: a matched control model's scores (control_scores_csv,
control_heldout_csv) and a sentence encoder (embedding_model); `candidates=false` measures
only THE filter, the variants and the references of before (no calibrated filters).

Writes results.json, summary.md, per_text.csv, the label-distribution figure (PNG and
PDF) and THE filter, saved to apply to new texts (filter/, semcal.filtering), into
output_dir, built beside it and swapped in whole (semcal.runstate): a failed run leaves a
finished evaluation as it was, and a rerun with the same settings and inputs does nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal import calibration, distributed, files, filter_sources, filtering, report, runstate
from semcal.config import UserError, below_minimum, config_to_dict
from semcal.data import GENERAL_ROW_COLUMN, real_split_name
from semcal.evaluation_inputs import SCORE_FILES, load_inputs
from semcal.filters import (
    DEFAULT_FILTER,
    FILTERS,
    NEEDS_HELP,
    NORMALIZATIONS,
    PAPER_VARIANT,
    SCORE_METHODS,
    Acceptance,
    EvaluationInputs,
    Filter,
    chosen_name,
    filter_choices,
    runnable,
)
from semcal.runstate import StageOutput

log = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
# Settings that say where things are: what they point to is fingerprinted instead (runstate.identity).
WHERE_SETTINGS = ("dataset_name", "label_map", *SCORE_FILES, "embedding_model", "output_dir", "overwrite")


@dataclass
class EvaluationConfig:
    dataset_name: str = "runs/demo/data"  # data set written by distort: general_train, general_test, real_train_*
    distortion: str = "mild"  # the trusted set is real_train_<distortion>: baseline / mild / moderate / severe
    text_column: str = "text"  # column holding the texts (captions) the language models scored
    label_column: str = "label"  # column holding each text's label
    label_map: str | None = None  # optional fine-to-coarse label map: a JSON file or a name in label_maps/
    general_scores_csv: str = "runs/demo/scores/general_test.general/token_log_probs.csv"  # general_test, GENERAL model
    real_scores_csv: str = "runs/demo/scores/general_test.real_mild/token_log_probs.csv"  # general_test, REAL model
    general_heldout_csv: str | None = "runs/demo/scores/heldout.general/token_log_probs.csv"  # held-out texts, GENERAL
    real_heldout_csv: str | None = "runs/demo/scores/heldout.real_mild/token_log_probs.csv"  # held-out texts, REAL
    control_scores_csv: str | None = None  # general_test, matched CONTROL model (optional: the control_* filters)
    control_heldout_csv: str | None = None  # held-out texts, matched CONTROL model
    filter: str = DEFAULT_FILTER  # THE filter: a registered filter (README), or variant = the score / normalize one
    score: str = "clipped"  # clipped (the paper: tokens within top_p of the total |difference|) or sum (all tokens)
    normalize: str = "none"  # none (the paper), heldout (exp(score) averages 1), logistic or matched: see README
    top_p: float = 0.75  # share of the total |log-prob difference| the clipped score keeps (0: only the largest token)
    n_runs: int = 1000  # rejection-sampling runs; results are mean and population std over runs
    seed: int = 0  # seed of the random draws (shared by all filters) and of the classifier
    kl_epsilon: float = 0.0  # add this to every label frequency before KL (0: none; KL may then be infinite)
    classifier: bool = True  # also measure the TF-IDF + logistic regression filter (needs scikit-learn)
    candidates: bool = True  # also measure every calibrated filter and the label-posterior reference
    embedding_model: str | None = None  # a sentence-encoder folder (e.g. MiniLM's): the embedding_labmom filter
    min_kl_general: float = (
        0.01  # below this KL(general||real) counts as ~0: KL values are reported instead of a reduction
    )
    top_tokens: int = 3  # per text, how many tokens pushing the score up and down per_text.csv lists
    output_dir: str = "runs/demo/evaluation/mild"  # where results.json, summary.md, per_text.csv and the figure go
    overwrite: bool = False  # discard an unfinished evaluation of other settings left beside output_dir


@distributed.main_process_only
def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Run the evaluation stage; returns the results written to results.json."""
    started = time.perf_counter()
    check_settings(config)
    output = StageOutput(
        "evaluate", config.output_dir, what=f"evaluate {config.distortion}", overwrite=config.overwrite, resumable=False
    )
    inputs, facts = load_inputs(config)
    chosen = chosen_filter(inputs, config)
    # Older runs re-run once: to save their filter in this format, and the kinds that gained a saved form.
    inputs_read = {
        **facts["fingerprints"],
        "filter_format": filtering.FORMAT_VERSION,
        "saved_filter_sources": list(filter_sources.SOURCES),
    }
    identity = runstate.identity("evaluate", config, inputs=inputs_read, ignore=WHERE_SETTINGS)
    if output.up_to_date(identity):
        return files.read_json(output.path / RESULTS_NAME)
    with output.building(identity) as staging:
        accepted = {f.name: f.run(inputs, config) for f in runnable(inputs, config)}
        runs = calibration.monte_carlo(
            {name: acceptance.accept for name, acceptance in accepted.items()},
            inputs.test_codes,
            inputs.real,
            config.n_runs,
            config.seed,
            epsilon=config.kl_epsilon,
            progress=True,
        )
        results = collect_results(config, inputs, facts, chosen, accepted, runs)
        for warning in report.reliability_warnings(results):  # into summary.md and results.json too
            log.warning("evaluate %s: %s", config.distortion, warning)
            results["warnings"].append(warning)
        results = write_outputs(staging, config, inputs, results, accepted, runs, started)
        filtering.save_filter(
            staging / filtering.FOLDER_NAME, config, inputs, facts, chosen.name, accepted[chosen.name]
        )
        output.finish(config, summary=one_line_summary(results), inputs=results["inputs"], outputs=results["outputs"])
    return results


# ---------------------------------------------------------------------------------------
# settings and inputs


def check_settings(config: EvaluationConfig) -> None:
    """Every setting problem we can see before loading anything."""
    if config.filter not in filter_choices():
        raise UserError(f"filter={config.filter!r} is not a filter; choose one of {', '.join(filter_choices())}.")
    if config.score not in SCORE_METHODS:
        raise UserError(f"score={config.score!r} is not one of {SCORE_METHODS}.")
    if config.normalize not in NORMALIZATIONS:
        raise UserError(f"normalize={config.normalize!r} is not one of {tuple(NORMALIZATIONS)}.")
    if not 0.0 <= config.top_p <= 1.0:
        raise UserError(f"top_p must be between 0 and 1 (got {config.top_p}).")
    problems = below_minimum(config, {"n_runs": 1, "seed": 0, "top_tokens": 0})
    if problems:
        raise UserError("; ".join(problems) + ".")
    if config.kl_epsilon < 0:
        raise UserError(f"kl_epsilon must be 0 (no smoothing) or positive (got {config.kl_epsilon}).")
    for name in ("general_scores_csv", "real_scores_csv"):
        _check_file(getattr(config, name), name)
    given = [name for name in ("general_heldout_csv", "real_heldout_csv") if getattr(config, name)]
    if len(given) == 1:
        missing = "real_heldout_csv" if given[0] == "general_heldout_csv" else "general_heldout_csv"
        raise UserError(f"{given[0]} is set but {missing} is not: give both held-out files or neither.")
    _check_pair(config, ("control_scores_csv", "control_heldout_csv"))
    if config.control_heldout_csv and not given:
        raise UserError("control_heldout_csv is joined with real_heldout_csv: give the held-out score files too.")
    if config.embedding_model and not Path(config.embedding_model).is_dir():
        raise UserError(
            f"embedding_model={config.embedding_model} is not a folder (a sentence encoder's, e.g. MiniLM)."
        )
    if config.normalize != "none" and not given:
        raise UserError(
            f"normalize={config.normalize} needs general_heldout_csv and real_heldout_csv: per-token log-probs of held-out "
            "general_train texts under both models. Score them with token_sequence_probs, or set normalize=none."
        )
    for name in given + [name for name in ("control_scores_csv", "control_heldout_csv") if getattr(config, name)]:
        _check_file(getattr(config, name), name)


def _check_pair(config: EvaluationConfig, names: tuple[str, str]) -> None:
    given = [name for name in names if getattr(config, name)]
    if len(given) == 1:
        missing = names[1] if given[0] == names[0] else names[0]
        raise UserError(f"{given[0]} is set but {missing} is not: give both or neither.")


def _check_file(path: str | None, name: str) -> None:
    if not path:
        raise UserError(f"{name} is not set: give the path of a token_sequence_probs output CSV.")
    if not Path(path).is_file():
        raise UserError(f"{name}={path} does not exist (looked at {Path(path).resolve()}).")


def chosen_filter(inputs: EvaluationInputs, config: EvaluationConfig) -> Filter:
    """THE filter (`filter`, or `score` and `normalize`), refused before any work when its inputs are missing."""
    chosen = FILTERS[chosen_name(config)]
    missing = [need for need in chosen.needs if not inputs.has(need)]
    if "heldout" in missing and "membership" in missing:  # membership of held-out rows that are not there
        missing.remove("membership")
    if missing and chosen.kind == "variant":
        raise UserError(
            f"normalize={config.normalize} needs to know which held-out texts are in {real_split_name(config.distortion)}:"
            f" its {GENERAL_ROW_COLUMN} column (written by distort) and held-out texts both in and out of it."
        )
    if missing:
        raise UserError(
            f"filter={chosen.name} needs {'; and '.join(NEEDS_HELP[need] for need in missing)}. Give them, or choose "
            "another filter (e.g. filter=variant, the language models' score)."
        )
    return chosen


# ---------------------------------------------------------------------------------------
# results


def collect_results(
    config: EvaluationConfig,
    inputs: EvaluationInputs,
    facts: dict[str, Any],
    chosen: Filter,
    accepted: dict[str, Acceptance],
    runs: dict[str, calibration.FilterRuns],
) -> dict[str, Any]:
    """results.json: settings, inputs, label distributions, KL, and every filter's statistics."""
    labels, m = inputs.labels, inputs.m
    reported = {key: value for key, value in facts.items() if key not in ("fingerprints", "general_test_distribution")}
    evaluated = calibration.label_distribution(inputs.test_codes, len(labels))
    kl_general = calibration.kl_divergence(evaluated, inputs.real, config.kl_epsilon)
    kl_general_is_zero = config.distortion == "baseline" or kl_general < config.min_kl_general

    def result(name: str) -> dict[str, Any]:
        measured = _filter_result(accepted[name].accept, runs[name], inputs, kl_general, kl_general_is_zero, config)
        return {**accepted[name].stats, **measured}

    variant = chosen.name if chosen.kind == "variant" else None
    filters = {"semcal": {"filter_name": chosen.name, "variant": variant, **result(chosen.name)}}
    filters |= {f.name: result(f.name) for f in FILTERS.values() if f.kind != "variant" and f.name in accepted}
    return {
        "stage": "evaluate",
        "dataset_name": config.dataset_name,
        "distortion": config.distortion,
        "real_split": real_split_name(config.distortion),
        "label_column": config.label_column,
        "filter_name": chosen.name,
        "paper_variant": PAPER_VARIANT,
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
        "filters": filters,
        "variants": {f.name: result(f.name) for f in FILTERS.values() if f.kind == "variant" and f.name in accepted},
        "monte_carlo": {
            "n_runs": config.n_runs,
            "seed": config.seed,
            "std": "population standard deviation over runs (ddof=0): the spread of single runs, "
            "not the standard error of the mean",
            "common_random_numbers": "every filter and variant is measured on the same uniform draws",
            "pass_rate_unit": "fraction of evaluated texts (0-1)",
        },
    }


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


def one_line_summary(results: dict[str, Any]) -> str:
    """The stage's closing line, e.g. "reduction 65.1% (oracle 98.0%), pass rate 0.21 (1/M 0.20)"."""
    filters = results["filters"]
    semcal = filters["semcal"]
    passed = f"pass rate {semcal['pass_rate_mean']:.2f} (1/M {results['ideal_pass_rate']:.2f})"
    warned = f"; {len(results['warnings'])} warnings (summary.md)" if results["warnings"] else ""
    if semcal["deception_reduction"] is None:
        kl = f"KL {report.format_number(results['kl_general'])} -> {report.format_number(semcal['kl_mean'])}"
        why = "KL(general||real) about 0" if results["kl_general_is_zero"] else "infinite KL"
        return f"{kl} ({why}: no reduction), {passed}{warned}"
    oracle = filters["oracle"]["deception_reduction"]
    shown = "n/a" if oracle is None else f"{100 * oracle:.1f}%"
    worse = "worse than no filter; " if semcal["deception_reduction"] < 0 else ""
    return f"reduction {100 * semcal['deception_reduction']:.1f}% ({worse}oracle {shown}), {passed}{warned}"


# ---------------------------------------------------------------------------------------
# outputs


def write_outputs(
    folder: Path,
    config: EvaluationConfig,
    inputs: EvaluationInputs,
    results: dict[str, Any],
    accepted: dict[str, Acceptance],
    runs: dict[str, calibration.FilterRuns],
    started: float,
) -> dict[str, Any]:
    """The figure, per_text.csv, results.json and summary.md into `folder`; returns the results as written."""
    chosen = results["filter_name"]
    frequencies = pd.DataFrame(
        {
            "general (test)": calibration.label_distribution(inputs.test_codes, len(inputs.labels)),
            "real (train)": inputs.real,
            f"filtered ({chosen}, mean of {config.n_runs} runs)": runs[chosen].mean_distribution,
        },
        index=inputs.labels,
    )
    shown_name = "/".join(Path(config.dataset_name).parts[-2:])  # e.g. "demo/data" from runs/demo/data
    title = f"{shown_name} / {config.distortion}: label distributions, general vs real vs filtered"
    figure = report.plot_label_distributions(frequencies, title, sort_by="real (train)")
    figure_paths = files.save_figure(figure, folder / "label_distributions", formats=("png", "pdf"))
    files.write_csv(folder / "per_text.csv", per_text_table(inputs, accepted, chosen, config.top_tokens))
    results["outputs"] = {
        "results": RESULTS_NAME,
        "summary": "summary.md",
        "per_text": "per_text.csv",
        "figures": [path.name for path in figure_paths],
    }
    results["elapsed_s"] = round(time.perf_counter() - started, 3)
    results = files.plain_json(results)
    files.write_json(folder / RESULTS_NAME, results, strict=True)
    files.write_text(folder / "summary.md", report.evaluation_summary_markdown(results))
    return results


def per_text_table(
    inputs: EvaluationInputs, accepted: dict[str, Acceptance], chosen: str, top_tokens: int
) -> pd.DataFrame:
    """One row per evaluated text: THE filter's score and acceptance, every other filter's, the
    tokens that moved the score most, the text."""
    table = pd.DataFrame(
        {
            "text_id": inputs.text_ids,
            "label": np.asarray(inputs.labels, dtype=object)[inputs.test_codes],
            "score": accepted[chosen].scores,
            "accept_prob": accepted[chosen].accept,
        }
    )
    shown = [f for f in FILTERS.values() if f.name in accepted and f.per_text]
    for f in shown:
        if accepted[f.name].scores is not None:
            table[f"score_{f.name}"] = accepted[f.name].scores
    for f in shown:
        if f.kind != "variant":
            table[f"{f.name}_accept_prob"] = accepted[f.name].accept
    table["n_tokens"] = [len(t) for t in inputs.tokens]
    pairs = list(zip(inputs.tokens, inputs.diffs, strict=True))
    table["tokens_up"] = [report.pushing_tokens(tokens, diffs, top_tokens, up=True) for tokens, diffs in pairs]
    table["tokens_down"] = [report.pushing_tokens(tokens, diffs, top_tokens, up=False) for tokens, diffs in pairs]
    table["text"] = inputs.test_texts
    return table
