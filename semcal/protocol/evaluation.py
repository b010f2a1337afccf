"""Evaluation stage: filter general_test by rejection sampling and measure how close the
filtered label distribution comes to real_train_<distortion>'s.

Reads the data set written by distort and the per-token log-prob files of general_test
under the general and the real model (token_sequence_probs output), and optionally of
held-out general_train texts. Every measured filter (semcal.filter.filters: the references, the
language models' score variants, THE filter and the candidates, each a source x calibration
semcal.filter.filtering.Filter fitted on general_train and normalised on general_test) turns them
into acceptance probabilities; `n_runs` seeded rejection-sampling runs measure them all on
the same random draws. The `filter` setting chooses THE filter (`filters.semcal` in
results.json): `<source>_<calibration>`, e.g. joint_labmom (the default) or clipped (the
paper's exact method). The saved filter is the measured object itself. Optional inputs
switch more filters on: a matched control model's scores (control_scores_csv,
control_heldout_csv) and a sentence encoder (embedding_model); `candidates=false` measures
only THE filter, the variants and the references of before (no calibrated filters).

Writes results.json, summary.md, per_text.csv, the label-distribution figure (PNG and
PDF) and THE filter, saved to apply to new texts (filter/, semcal.filter.filtering), into
output_dir, built beside it and swapped in whole (semcal.store.runstate): a failed run leaves a
finished evaluation as it was, and a rerun with the same settings and inputs does nothing.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal.core import distributed
from semcal.core.config import below_minimum
from semcal.core.errors import UserError
from semcal.filter import calibration, filters
from semcal.filter.filtering import FORMAT_VERSION, Filter
from semcal.filter.fit_data import FitData
from semcal.filter.sources import SOURCES
from semcal.protocol import item_evaluation
from semcal.protocol.evaluation_config import EvaluationConfig
from semcal.protocol.evaluation_inputs import (
    SCORE_FILES,
    EvaluationInputs,
    fit_data,
    has_language_model_scores,
    load_inputs,
)
from semcal.protocol.evaluation_results import Acceptance, collect_results, one_line_summary
from semcal.protocol.layout import FIGURE_STEM, PER_TEXT_NAME, RESULTS_NAME
from semcal.reports import item_report, report
from semcal.reports import results as result_file
from semcal.reports.results import EvaluationResults
from semcal.store import files, runstate, schema
from semcal.store.runstate import StageOutput

log = logging.getLogger(__name__)

# Settings that say where things are: what they point to is fingerprinted instead (runstate.identity).
WHERE_SETTINGS = ("dataset_name", "label_map", *SCORE_FILES, "embedding_model", "output_dir", "overwrite")




@distributed.main_process_only
def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Run the evaluation stage; returns the results as results.json holds them (EvaluationResults.to_dict)."""
    started = time.perf_counter()
    check_settings(config)
    output = StageOutput(
        "evaluate", config.output_dir, what=f"evaluate {config.distortion}", overwrite=config.overwrite, resumable=False
    )
    inputs, facts = load_inputs(config)
    data = fit_data(inputs, config)
    check_chosen(data, config)
    # Older runs re-run once: to save their filter in this format, and their results in this schema.
    inputs_read = {**facts["fingerprints"], "filter_format": FORMAT_VERSION, "sources": list(SOURCES)}
    inputs_read["results_schema"] = result_file.SCHEMA_VERSION
    identity = runstate.identity("evaluate", config, inputs=inputs_read, ignore=WHERE_SETTINGS)
    if output.up_to_date(identity):
        return result_file.read(output.path / RESULTS_NAME).to_dict()
    with output.building(identity) as staging:
        fitted, accepted = measure(inputs, data, config)
        runs = calibration.monte_carlo(
            {name: acceptance.accept for name, acceptance in accepted.items()},
            inputs.test_codes,
            inputs.real,
            config.n_runs,
            config.seed,
            epsilon=config.kl_epsilon,
            progress=True,
        )
        per_item = item_evaluation.per_item(fitted, data)
        results = collect_results(config, inputs, facts, accepted, runs, data.form, per_item)
        for warning in report.reliability_warnings(results):  # into summary.md and results.json too
            log.warning("evaluate %s: %s", config.distortion, warning)
            results.warnings.append(warning)
        explained = fitted[config.filter].source.contributions(data.stream, config.top_tokens)
        write_outputs(staging, config, inputs, results, accepted, runs, explained, started)
        save_filter(fitted[config.filter], staging / "filter", facts["fingerprints"])
        written = {"inputs": schema.to_dict(results.inputs), "outputs": schema.to_dict(results.outputs)}
        output.finish(config, summary=one_line_summary(results), **written)
    return results.to_dict()


def measure(inputs: EvaluationInputs, data: FitData, config: EvaluationConfig):
    """Fit every measured filter and compute its acceptance of the evaluated texts: the filters
    (by name) and their acceptances, the label references included."""
    names = filters.measured(config.filter, data, config.candidates, config.classifier)
    fitted: dict[str, Filter] = {}
    accepted: dict[str, Acceptance] = {}
    for name in names:
        if name == "no_filter":
            accepted[name] = Acceptance(np.ones(len(inputs.text_ids)))
        elif name == "oracle":
            accept = calibration.oracle_accept_probs(inputs.test_codes, inputs.real, inputs.general, inputs.m)
            accepted[name] = Acceptance(accept)
        else:
            described = filters.describe(name)  # an alias (classifier) keeps its own name
            log.debug("fitting filter %s", name)
            fitted[name] = Filter.fit(described.source, described.calibration, data, name)
            accepted[name] = _acceptance(fitted[name])
    return fitted, accepted


def _acceptance(fitted: Filter) -> Acceptance:
    """The fitted filter's acceptance of its fit's stream (the evaluated texts), with score statistics."""
    scores = fitted.link.apply(fitted.fitted_stream, fitted.m)
    stats = {
        **fitted.stats,
        "link": fitted.link.to_dict(),
        "score_mean": float(np.mean(scores)),
        "score_std": float(np.std(scores)),
        # log mean exp(score) on the test texts: 0 when exp(score) averages 1 (calibrated)
        "test_log_mean_exp": calibration.log_mean_exp(scores),
    }
    return Acceptance(calibration.accept_probs(scores, fitted.m), scores, stats)


def save_filter(fitted: Filter, folder: Path, fingerprints: dict[str, Any]) -> bool:
    """Save THE filter into the staging folder; False with one log line when it cannot be saved
    (a language-model filter whose score files carry no model record)."""
    try:
        fitted.save(folder, fitted_on=fingerprints)
    except UserError as err:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("filter %s not saved: %s", fitted.name, err)
        return False
    return True


# ---------------------------------------------------------------------------------------
# settings and inputs


def check_settings(config: EvaluationConfig) -> None:
    """Every setting problem we can see before loading anything."""
    if not filters.is_filter(config.filter):
        raise UserError(
            f"filter={config.filter!r} is not a filter: give <source>_<calibration> with a source of "
            f"{', '.join(SOURCES)} and a calibration of {', '.join(filters.CALIBRATIONS)} (the source alone for "
            f"none), or classifier; e.g. {filters.DEFAULT_FILTER} (the default) or clipped (the paper's method)."
        )
    if not 0.0 <= config.top_p <= 1.0:
        raise UserError(f"top_p must be between 0 and 1 (got {config.top_p}).")
    problems = below_minimum(config, {"n_runs": 1, "seed": 0, "top_tokens": 0, "decision_window": 1})
    if problems:
        raise UserError("; ".join(problems) + ".")
    if config.kl_epsilon < 0:
        raise UserError(f"kl_epsilon must be 0 (no smoothing) or positive (got {config.kl_epsilon}).")
    _check_language_model_scores(config)
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
    if "heldout" in filters.needs(config.filter) and not given:
        raise UserError(
            f"filter={config.filter} needs {filters.NEEDS_HELP['heldout']}. Score them with token_sequence_probs, "
            f"or choose a filter without held-out scores (e.g. clipped, or {filters.DEFAULT_FILTER})."
        )
    for name in given + [name for name in ("control_scores_csv", "control_heldout_csv") if getattr(config, name)]:
        _check_file(getattr(config, name), name)


def _check_language_model_scores(config: EvaluationConfig) -> None:
    """Both general_test score files or neither; neither only for a chosen filter that reads no LM scores."""
    _check_pair(config, ("general_scores_csv", "real_scores_csv"))
    if has_language_model_scores(config):
        for name in ("general_scores_csv", "real_scores_csv"):
            _check_file(getattr(config, name), name)
        return
    if filters.needs_language_models(config.filter):
        raise UserError(
            f"filter={config.filter} reads the language models' scores, but general_scores_csv and real_scores_csv "
            f"are not set: give both, or choose a filter that reads none (e.g. {filters.DEFAULT_FILTER})."
        )
    others = [name for name in SCORE_FILES if getattr(config, name)]  # the general_test pair is not set here
    if others:
        raise UserError(
            f"{others[0]} is set but general_scores_csv and real_scores_csv are not: the held-out and control scores "
            "are read together with the general_test ones, so give those too or drop them all."
        )


def check_chosen(data: FitData, config: EvaluationConfig) -> None:
    """THE filter is refused before any work when its inputs are missing."""
    name = config.filter
    missing = filters.missing_needs(name, data)
    if missing:
        raise UserError(
            f"filter={name} needs {'; and '.join(filters.NEEDS_HELP[need] for need in missing)}. Give them, or choose "
            f"another filter (e.g. {filters.DEFAULT_FILTER}, or clipped, the paper's method)."
        )


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


# ---------------------------------------------------------------------------------------
# outputs


def write_outputs(
    folder: Path,
    config: EvaluationConfig,
    inputs: EvaluationInputs,
    results: EvaluationResults,
    accepted: dict[str, Acceptance],
    runs: dict[str, calibration.FilterRuns],
    explained: list[tuple[str, str]],
    started: float,
) -> None:
    """The figure, per_text.csv, results.json and summary.md into `folder`; sets the results' outputs."""
    chosen = config.filter
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
    figure_paths = files.save_figure(figure, folder / FIGURE_STEM, formats=("png", "pdf"))
    files.write_csv(folder / PER_TEXT_NAME, per_text_table(inputs, accepted, chosen, explained))
    results.outputs = result_file.Outputs(
        results=RESULTS_NAME,
        summary="summary.md",
        per_text=PER_TEXT_NAME,
        figures=[path.name for path in figure_paths],
        reliability=item_report.write_reliability(
            folder, results.per_item, f"{shown_name} / {config.distortion}", chosen
        ),
    )
    results.elapsed_s = round(time.perf_counter() - started, 3)
    result_file.write(folder / RESULTS_NAME, results)
    files.write_text(folder / "summary.md", report.evaluation_summary_markdown(results))


def per_text_table(
    inputs: EvaluationInputs, accepted: dict[str, Acceptance], chosen: str, explained: list[tuple[str, str]]
) -> pd.DataFrame:
    """One row per evaluated text: THE filter's score and acceptance, every other filter's, the
    tokens (or n-grams) that moved THE filter's score most, from its own source, the text."""
    table = pd.DataFrame(
        {
            "text_id": inputs.text_ids,
            "label": np.asarray(inputs.labels, dtype=object)[inputs.test_codes],
            "score": accepted[chosen].scores,
            "accept_prob": accepted[chosen].accept,
        }
    )
    shown = [name for name in accepted if name != "no_filter"]
    for name in shown:
        if accepted[name].scores is not None:
            table[f"score_{name}"] = accepted[name].scores
    for name in shown:
        if filters.describe(name).kind != "variant":
            table[f"{name}_accept_prob"] = accepted[name].accept
    if inputs.tokens is not None:  # an evaluation without score files has no tokens
        table["n_tokens"] = [len(t) for t in inputs.tokens]
    table["tokens_up"] = [up for up, _ in explained]
    table["tokens_down"] = [down for _, down in explained]
    table["text"] = inputs.test_texts
    return table
