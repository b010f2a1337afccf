"""Evaluation stage: filter general_test by rejection sampling and measure how close the
filtered label distribution comes to real_train's.

Reads the data set written by distort and the per-token log-prob files of general_test
under the general and the real model (token_sequence_probs output). Scores every text
(calibration.py), turns scores into acceptance probabilities, runs `n_runs` seeded
rejection-sampling runs and compares with reference filters on the same texts and the same
random draws: no filter, the ORACLE (knows the label) and the CLASSIFIER (TF-IDF + logistic
regression). Writes results.json, summary.md, per_text.csv, the label-distribution figure
(PNG and PDF) and semcal_record.json into output_dir.

Every score variant (paper clipped, unclipped sum, each normalised on held-out general texts
when their files are given) is measured in the same run and reported under `variants`; the
`score` / `normalize` settings choose which one is THE filter (`filters.semcal`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal import calibration, files, report
from semcal.config import UserError, config_to_dict
from semcal.data import (
    GENERAL_ROW_COLUMN,
    GENERAL_TEST,
    GENERAL_TRAIN,
    general_rows_of,
    get_split,
    labels_of,
    load_dataset_dict,
    real_split_name,
    texts_of,
)

SCORE_METHODS = ("clipped", "sum")
NORMALIZATIONS = ("none", "heldout", "logistic", "matched")
PAPER_VARIANT = "clipped"  # score=clipped, normalize=none: the paper's exact method


@dataclass
class EvaluationConfig:
    dataset_name: str = "runs/demo/data"  # data set written by distort: general_train, general_test, real_train_<split>
    split_name: str = "mild"  # the trusted set is real_train_<split_name>: baseline / mild / moderate / severe
    text_column: str = "text"  # column holding the texts (captions) the language models scored
    label_column: str = "label"  # column holding each text's label
    label_map: str | None = None  # optional fine-to-coarse label map: a JSON file or a name in label_maps/
    general_scores_csv: str = "runs/demo/scores/general_test.general/token_log_probs.csv"  # general_test, GENERAL model
    real_scores_csv: str = "runs/demo/scores/general_test.real_mild/token_log_probs.csv"  # general_test, REAL model
    general_heldout_csv: str | None = "runs/demo/scores/heldout.general/token_log_probs.csv"  # held-out texts, GENERAL
    real_heldout_csv: str | None = "runs/demo/scores/heldout.real_mild/token_log_probs.csv"  # held-out texts, REAL
    score: str = "clipped"  # clipped (the paper: tokens within top_p of the total |difference|) or sum (all tokens)
    normalize: str = "none"  # none (the paper), heldout (exp(score) averages 1), logistic or matched: see README
    top_p: float = 0.75  # share of the total |log-prob difference| the clipped score keeps (0: only the largest token)
    n_runs: int = 1000  # rejection-sampling runs; results are mean and population std over runs
    seed: int = 0  # seed of the random draws (shared by all filters) and of the classifier
    kl_epsilon: float = 0.0  # add this to every label frequency before KL (0: none; KL may then be infinite)
    classifier: bool = True  # also measure the TF-IDF + logistic regression filter (needs scikit-learn)
    min_kl_general: float = (
        0.01  # below this KL(general||real) counts as ~0: KL values are reported instead of a reduction
    )
    top_tokens: int = 3  # per text, how many tokens pushing the score up and down per_text.csv lists
    output_dir: str = "runs/demo/evaluation/mild"  # where results.json, summary.md, per_text.csv and the figure go


def variant_name(score: str, normalize: str) -> str:
    return score if normalize == "none" else f"{score}_{normalize}"


def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Run the evaluation stage; returns the results written to results.json."""
    started = time.perf_counter()
    _check_settings(config)
    output_dir = Path(config.output_dir)

    # ---- data: labels of every split, texts where needed ----
    dataset = load_dataset_dict(config.dataset_name)
    real_split = real_split_name(config.split_name)
    general_train = get_split(dataset, GENERAL_TRAIN)
    general_test = get_split(dataset, GENERAL_TEST)
    real_train = get_split(dataset, real_split)
    general_train_labels = labels_of(general_train, GENERAL_TRAIN, config.label_column, config.label_map)
    general_test_labels = labels_of(general_test, GENERAL_TEST, config.label_column, config.label_map)
    real_train_labels = labels_of(real_train, real_split, config.label_column, config.label_map)
    general_test_texts = texts_of(general_test, GENERAL_TEST, config.text_column)
    real_general_rows = general_rows_of(real_train, real_split, len(general_train))

    # ---- scores: join the two models' files, check they scored the same tokens ----
    general_scores = _read_scores(config.general_scores_csv, "general_scores_csv")
    real_scores = _read_scores(config.real_scores_csv, "real_scores_csv")
    text_ids, diffs, tokens, join = join_scores(general_scores, real_scores, len(general_test), GENERAL_TEST)
    heldout_diffs, heldout_join, heldout_is_real = None, None, None
    if config.general_heldout_csv and config.real_heldout_csv:
        heldout_general = _read_scores(config.general_heldout_csv, "general_heldout_csv")
        heldout_real = _read_scores(config.real_heldout_csv, "real_heldout_csv")
        heldout_ids, heldout_diffs, _, heldout_join = join_scores(
            heldout_general, heldout_real, len(general_train), GENERAL_TRAIN
        )
        if real_general_rows is not None:
            heldout_is_real = np.isin(heldout_ids, real_general_rows)

    # ---- label distributions ----
    labels = sorted(set(general_train_labels) | set(general_test_labels) | set(real_train_labels))
    code_of = {label: code for code, label in enumerate(labels)}
    n_labels = len(labels)
    test_codes = np.array([code_of[label] for label in general_test_labels[text_ids]], dtype=np.int64)
    real = calibration.label_distribution([code_of[y] for y in real_train_labels], n_labels)
    general = calibration.label_distribution([code_of[y] for y in general_train_labels], n_labels)
    general_test_all = calibration.label_distribution([code_of[y] for y in general_test_labels], n_labels)
    evaluated = calibration.label_distribution(test_codes, n_labels)
    kl_general = calibration.kl_divergence(evaluated, real, config.kl_epsilon)
    kl_general_is_zero = config.split_name == "baseline" or kl_general < config.min_kl_general
    m = calibration.ratio_m(len(general_train), len(real_train))

    # ---- acceptance probabilities of every filter ----
    variants = _score_variants(diffs, heldout_diffs, heldout_is_real, config.top_p, m)
    chosen = variant_name(config.score, config.normalize)
    if chosen not in variants:
        raise UserError(
            f"normalize={config.normalize} needs to know which held-out texts are in {real_split}: its "
            f"{GENERAL_ROW_COLUMN} column (written by distort) and held-out texts both in and out of it."
        )
    accept_by_filter = {"no_filter": np.ones(len(text_ids))}
    accept_by_filter |= {f"variant:{name}": variant["accept"] for name, variant in variants.items()}
    accept_by_filter["oracle"] = calibration.oracle_accept_probs(test_codes, real, general, m)
    if config.classifier:
        print(f"training the classifier reference on {len(general_train)} general_train texts ...", flush=True)
        from semcal.baselines import classifier_accept_probs

        accept_by_filter["classifier"] = classifier_accept_probs(
            texts_of(general_train, GENERAL_TRAIN, config.text_column),
            texts_of(real_train, real_split, config.text_column),
            real_general_rows,
            [general_test_texts[i] for i in text_ids],
            seed=config.seed,
        )

    # ---- Monte Carlo: the same random draws for every filter ----
    runs = calibration.monte_carlo(
        accept_by_filter, test_codes, real, config.n_runs, config.seed, epsilon=config.kl_epsilon, progress=True
    )

    def filter_result(name: str) -> dict[str, Any]:
        return _filter_result(
            accept_by_filter[name], runs[name], test_codes, real, labels, kl_general, kl_general_is_zero, config
        )

    filters = {"semcal": {"variant": chosen, **filter_result(f"variant:{chosen}")}}
    filters |= {name: filter_result(name) for name in ("no_filter", "oracle", "classifier") if name in runs}
    variant_results = {
        name: {**variant["score_stats"], **filter_result(f"variant:{name}")} for name, variant in variants.items()
    }

    results: dict[str, Any] = {
        "stage": "evaluate",
        "dataset_name": config.dataset_name,
        "split_name": config.split_name,
        "label_column": config.label_column,
        "filter_variant": chosen,
        "paper_variant": PAPER_VARIANT,
        "config": config_to_dict(config),
        "inputs": _fingerprints(config, general_test_texts, real_train, real_split),
        "join": {"general_test": join, **({"heldout": heldout_join} if heldout_join else {})},
        "counts": {
            "general_train": len(general_train),
            "general_test": len(general_test),
            "real_train": len(real_train),
            "evaluated": len(text_ids),
            "heldout": len(heldout_diffs) if heldout_diffs is not None else 0,
        },
        "M": m,
        "ideal_pass_rate": 1.0 / m,
        "labels": labels,
        "distributions": {
            "real_train": _by_label(real, labels),
            "general_train": _by_label(general, labels),
            "general_test": _by_label(general_test_all, labels),
            "evaluated": _by_label(evaluated, labels),
        },
        "kl_general": kl_general,
        "tvd_general": calibration.total_variation(evaluated, real),
        "kl_general_is_zero": bool(kl_general_is_zero),
        "kl_note": _kl_note(kl_general, kl_general_is_zero, config),
        "filters": filters,
        "variants": variant_results,
        "monte_carlo": {
            "n_runs": config.n_runs,
            "seed": config.seed,
            "std": "population standard deviation over runs (ddof=0): the spread of single runs, "
            "not the standard error of the mean",
            "common_random_numbers": "every filter and variant is measured on the same uniform draws",
            "pass_rate_unit": "fraction of evaluated texts (0-1)",
        },
    }

    # ---- outputs ----
    frequencies = pd.DataFrame(
        {
            "general (test)": evaluated,
            "real (train)": real,
            f"filtered ({chosen}, mean of {config.n_runs} runs)": runs[f"variant:{chosen}"].mean_distribution,
        },
        index=labels,
    )
    shown_name = "/".join(Path(config.dataset_name).parts[-2:])  # e.g. "demo/data" from runs/demo/data
    title = f"{shown_name} / {config.split_name}: label distributions, general vs real vs filtered"
    figure_paths = files.save_figure(
        report.plot_label_distributions(frequencies, title, sort_by="real (train)"),
        output_dir / "label_distributions",
        formats=("png", "pdf"),
    )
    per_text = _per_text_table(
        text_ids, general_test_labels, general_test_texts, tokens, diffs, variants, chosen, accept_by_filter, config
    )
    files.write_csv(output_dir / "per_text.csv", per_text)
    results["outputs"] = {
        "results": "results.json",
        "summary": "summary.md",
        "per_text": "per_text.csv",
        "figures": [path.name for path in figure_paths],
    }
    results["elapsed_s"] = round(time.perf_counter() - started, 3)
    results = _json_ready(results)
    files.write_json(output_dir / "results.json", results)
    files.write_text(output_dir / "summary.md", report.evaluation_summary_markdown(results))
    files.write_record(
        output_dir, "evaluate", config_to_dict(config), inputs=results["inputs"], outputs=results["outputs"]
    )
    print(_console_summary(results, output_dir))
    return results


# ---------------------------------------------------------------------------------------
# settings and inputs


def _check_settings(config: EvaluationConfig) -> None:
    """Every setting problem we can see before loading anything."""
    if config.score not in SCORE_METHODS:
        raise UserError(f"score={config.score!r} is not one of {SCORE_METHODS}.")
    if config.normalize not in NORMALIZATIONS:
        raise UserError(f"normalize={config.normalize!r} is not one of {NORMALIZATIONS}.")
    if not 0.0 <= config.top_p <= 1.0:
        raise UserError(f"top_p must be between 0 and 1 (got {config.top_p}).")
    if config.n_runs < 1:
        raise UserError(f"n_runs must be at least 1 (got {config.n_runs}).")
    if config.kl_epsilon < 0:
        raise UserError(f"kl_epsilon must be 0 (no smoothing) or positive (got {config.kl_epsilon}).")
    if config.top_tokens < 0:
        raise UserError(f"top_tokens must be 0 or more (got {config.top_tokens}).")
    if not config.output_dir:
        raise UserError("output_dir is empty: set the folder the results go to.")
    for name in ("general_scores_csv", "real_scores_csv"):
        _check_file(getattr(config, name), name, required=True)
    heldout = {name: getattr(config, name) for name in ("general_heldout_csv", "real_heldout_csv")}
    given = [name for name, path in heldout.items() if path]
    if len(given) == 1:
        missing = next(name for name in heldout if name not in given)
        raise UserError(f"{given[0]} is set but {missing} is not: give both held-out files or neither.")
    if config.normalize != "none" and not given:
        raise UserError(
            f"normalize={config.normalize} needs general_heldout_csv and real_heldout_csv: per-token log-probs of held-out "
            "general_train texts under both models. Score them with token_sequence_probs, or set normalize=none."
        )
    for name in given:
        _check_file(heldout[name], name, required=True)


def _check_file(path: str | None, name: str, required: bool) -> None:
    if not path:
        if required:
            raise UserError(f"{name} is not set: give the path of a token_sequence_probs output CSV.")
        return
    if not Path(path).is_file():
        raise UserError(f"{name}={path} does not exist (looked at {Path(path).resolve()}).")


def _read_scores(path: str, name: str) -> pd.DataFrame:
    try:
        return files.read_token_log_probs(path)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"{name}: {err}") from None


def join_scores(
    general: pd.DataFrame, real: pd.DataFrame, n_rows: int, split: str
) -> tuple[np.ndarray, list[np.ndarray], list[list[str]], dict[str, int]]:
    """Join the general and real model's per-token tables on text_id.

    Returns the joined text ids (sorted), per-text differences d = log p_real - log p_general,
    the tokens, and a report of how many rows each side lost. Refuses duplicate ids, ids that
    are not rows of `split`, and rows whose token sequences differ between the two files.
    """
    for side, table in (("general", general), ("real", real)):
        duplicated = table["text_id"][table["text_id"].duplicated()]
        if len(duplicated):
            raise UserError(
                f"the {side} model's scores of {split} list text_id {int(duplicated.iloc[0])} more than once "
                f"({len(duplicated)} duplicates): was the file written twice into? Re-run token_sequence_probs."
            )
        outside = table["text_id"][(table["text_id"] < 0) | (table["text_id"] >= n_rows)]
        if len(outside):
            raise UserError(
                f"the {side} model's scores hold text_id {int(outside.iloc[0])}, but {split} has rows 0..{n_rows - 1}: "
                "the scores belong to another split or data set."
            )
    merged = general.merge(real, on="text_id", how="inner", suffixes=("_general", "_real")).sort_values("text_id")
    if merged.empty:
        raise UserError(
            f"the general and real score files of {split} share no text_id: they were computed on different texts."
        )
    for text_id, general_tokens, real_tokens in zip(
        merged["text_id"], merged["tokens_general"], merged["tokens_real"], strict=True
    ):
        if list(general_tokens) != list(real_tokens):
            raise UserError(
                f"text_id {int(text_id)} of {split}: the general model's file has tokens {general_tokens[:12]} but the "
                f"real model's has {real_tokens[:12]}. Both files must be scored on the same texts with the same "
                "tokenizer; re-run token_sequence_probs for one of them."
            )
    diffs = [
        calibration.token_differences(real_lp, general_lp)
        for real_lp, general_lp in zip(merged["log_probs_real"], merged["log_probs_general"], strict=True)
    ]
    report_ = {
        "general_rows": len(general),
        "real_rows": len(real),
        "joined_rows": len(merged),
        "general_lost": len(general) - len(merged),
        "real_lost": len(real) - len(merged),
        "split_rows_not_scored": n_rows - len(merged),
    }
    return merged["text_id"].to_numpy(dtype=np.int64), diffs, list(merged["tokens_general"]), report_


def _fingerprints(config: EvaluationConfig, general_test_texts: list[str], real_train: Any, real_split: str):
    score_files = {
        name: {"path": getattr(config, name), "sha256_16": files.fingerprint_file(getattr(config, name))}
        for name in ("general_scores_csv", "real_scores_csv", "general_heldout_csv", "real_heldout_csv")
        if getattr(config, name)
    }
    return {
        **score_files,
        "general_test_texts": files.fingerprint_texts(general_test_texts),
        "real_train_texts": files.fingerprint_texts(texts_of(real_train, real_split, config.text_column)),
    }


# ---------------------------------------------------------------------------------------
# scores and results


def _score_variants(
    diffs: list[np.ndarray],
    heldout_diffs: list[np.ndarray] | None,
    heldout_is_real: np.ndarray | None,
    top_p: float,
    m: float,
) -> dict[str, dict[str, Any]]:
    """Scores and acceptance of every variant: {clipped, sum} x {none, and the held-out ones if given}.

    heldout: shift so exp(score) averages 1 on held-out general texts. logistic: fit
    P(real | x) = sigmoid(a + b * score) on the held-out texts' real_train membership.
    matched: scale the score so general texts reweighted by exp(scale * score) have the
    real members' mean score, then shift as `heldout` (see calibration.fit_matched_scale).
    """
    variants = {}
    for method in SCORE_METHODS:
        raw = calibration.score_texts(diffs, method, top_p)
        heldout_scores = None if heldout_diffs is None else calibration.score_texts(heldout_diffs, method, top_p)
        normalizations = ["none"]
        if heldout_scores is not None:
            normalizations.append("heldout")
            if heldout_is_real is not None and heldout_is_real.any() and not heldout_is_real.all():
                normalizations += ["logistic", "matched"]
        for normalize in normalizations:
            shift, heldout_lme, fit, scores = 0.0, None, None, raw
            if normalize == "heldout":
                shift = heldout_lme = calibration.heldout_shift(heldout_scores)
                scores = raw - shift
            elif normalize == "logistic":
                intercept, slope = calibration.fit_membership_logistic(heldout_scores, heldout_is_real)
                fit = {"intercept": intercept, "slope": slope, "heldout_texts": int(len(heldout_scores))}
                scores = calibration.logistic_log_ratio(raw, intercept, slope, m)
            elif normalize == "matched":
                scale = calibration.fit_matched_scale(heldout_scores, heldout_is_real)
                shift = calibration.heldout_shift(scale * heldout_scores)
                fit = {"scale": scale, "heldout_texts": int(len(heldout_scores))}
                scores = scale * raw - shift
            variants[variant_name(method, normalize)] = {
                "scores": scores,
                "accept": calibration.accept_probs(scores, m),
                "score_stats": {
                    "score": method,
                    "normalize": normalize,
                    "shift": shift,
                    "score_mean": float(np.mean(scores)),
                    "score_std": float(np.std(scores)),
                    # log mean exp(score) on the test texts: 0 when exp(score) averages 1 (calibrated)
                    "test_log_mean_exp": calibration.log_mean_exp(scores),
                    "heldout_log_mean_exp_before_shift": heldout_lme,
                    "fit": fit,
                },
            }
    return variants


def _filter_result(
    accept: np.ndarray,
    runs: calibration.FilterRuns,
    codes: np.ndarray,
    real: np.ndarray,
    labels: list[str],
    kl_general: float,
    kl_general_is_zero: bool,
    config: EvaluationConfig,
) -> dict[str, Any]:
    stats = runs.summary()
    expected = calibration.expected_filtered_distribution(accept, codes, len(labels))
    expected_kl = calibration.kl_divergence(expected, real, config.kl_epsilon)
    result: dict[str, Any] = {
        **stats,
        "accept_prob_mean": float(np.mean(accept)),  # the expected pass rate
        "expected_kl": expected_kl,
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
            "the baseline split" if config.split_name == "baseline" else f"below min_kl_general={config.min_kl_general}"
        )
        return (
            f"KL(general||real) = {kl_general:.4g} is about 0 ({why}): the deception reduction would be a ratio of "
            "noise, so KL values (and kl_ratio = KL filtered / KL general) are reported instead."
        )
    return ""


def _by_label(distribution: np.ndarray, labels: list[str]) -> dict[str, float]:
    return {label: float(value) for label, value in zip(labels, distribution, strict=True)}


def _per_text_table(
    text_ids: np.ndarray,
    labels: np.ndarray,
    texts: list[str],
    tokens: list[list[str]],
    diffs: list[np.ndarray],
    variants: dict[str, dict[str, Any]],
    chosen: str,
    accept_by_filter: dict[str, np.ndarray],
    config: EvaluationConfig,
) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "text_id": text_ids,
            "label": labels[text_ids],
            "score": variants[chosen]["scores"],
            "accept_prob": variants[chosen]["accept"],
            "score_clipped": variants["clipped"]["scores"],
            "score_sum": variants["sum"]["scores"],
            "oracle_accept_prob": accept_by_filter["oracle"],
        }
    )
    if "classifier" in accept_by_filter:
        table["classifier_accept_prob"] = accept_by_filter["classifier"]
    table["n_tokens"] = [len(t) for t in tokens]
    table["tokens_up"] = [_top_tokens(t, d, config.top_tokens, up=True) for t, d in zip(tokens, diffs, strict=True)]
    table["tokens_down"] = [_top_tokens(t, d, config.top_tokens, up=False) for t, d in zip(tokens, diffs, strict=True)]
    table["text"] = [texts[i] for i in text_ids]
    return table


def _top_tokens(tokens: list[str], diffs: np.ndarray, count: int, up: bool) -> str:
    """The tokens whose log-prob difference pushed the score most up (or down), e.g. "'dog' +1.23"."""
    signed = diffs if up else -diffs
    order = np.argsort(-signed, kind="stable")[:count]
    return "; ".join(f"{tokens[i]!r} {diffs[i]:+.3f}" for i in order if signed[i] > 0)


def _json_ready(value: Any) -> Any:
    """Plain JSON: infinite floats as the strings "inf" / "-inf", NaN as null."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if np.isnan(value):
            return None
        if np.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return value


def _console_summary(results: dict[str, Any], output_dir: Path) -> str:
    def pct(value: Any) -> str:
        return "n/a" if not isinstance(value, (int, float)) else f"{100 * value:.1f}%"

    filters = results["filters"]
    semcal = filters["semcal"]
    lines = [
        f"evaluation of {results['dataset_name']} / {results['split_name']}: {results['counts']['evaluated']} texts, "
        f"{results['monte_carlo']['n_runs']} runs, filter {results['filter_variant']}",
        f"  KL(general||real)  = {report.format_number(results['kl_general'])}",
        f"  KL(filtered||real) = {report.format_number(semcal['kl_mean'])} ± {report.format_number(semcal['kl_std'])} "
        f"(std over runs), pass rate {pct(semcal['pass_rate_mean'])} (ideal 1/M = {pct(results['ideal_pass_rate'])})",
    ]
    if results["kl_general_is_zero"] or results["kl_note"]:
        lines.append(f"  {results['kl_note']}")
    else:
        reductions = ", ".join(
            f"{name} {pct(filters[name]['deception_reduction'])}"
            for name in ("semcal", "oracle", "classifier")
            if name in filters
        )
        lines.append(f"  deception reduction: {reductions}")
    lines.append(f"  outputs: {output_dir}/ (results.json, summary.md, per_text.csv, label_distributions.png/.pdf)")
    return "\n".join(lines)
