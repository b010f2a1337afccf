"""semcal fit: a filter from two corpora, for a trusted corpus and a sample of a stream.

    semcal fit --real=trusted.csv --general=stream.jsonl --output=my_filter
    semcal filter --filter=my_filter --input=new.jsonl --output=decisions.csv

`real` is the trusted corpus, `general` a sample of the stream to filter; labels are
optional and the real corpus need not be drawn from the stream. Both are read as every
stage reads data (a CSV / Parquet / JSONL file, a saved data set, a Hub id, `PATH:SPLIT`).
`heldout_fraction` of each corpus is held out: the source is fitted on the rest, its
calibration on the held-out rows. The default source needs no language model to train:
`joint` (TF-IDF membership and the label posterior, the evaluation's default) with labels,
`tfidf` without. A language-model source (`clipped`, `sum`, `stack`) first fine-tunes a
general model on the stream sample and a real model on the trusted corpus (both from
`base_model`, with `finetune_settings`) and scores the held-out rows of both with both, the
way the pipeline does (semcal.fit_models, in OUTPUT.models beside the filter). Calibrations:

- without labels, `mom`: the held-out stream rows weighted by their acceptance must have the
  held-out trusted rows' means of another estimate (the hashed n-gram ratio);
- with labels (`label_column` in both corpora), `labmom`: they must have the trusted rows'
  label distribution;
- the shift by stream self-normalisation: the held-out stream passes exactly `pass_rate`.

`pass_rate` (= 1/M) is the share of the stream to pass. Left out, it is derived from the
data. With labels it is 1 / max_y q(y)/p(y), q and p the trusted and stream label
distributions (labels with at least 5 stream rows): the most a filter can pass whose
accepted labels match the trusted ones. Without labels (or with no label of 5 stream rows),
of 10 rates from 2% to 80% (PASS_RATE_GRID), the one at which the accepted held-out stream is
hardest to tell from the held-out trusted texts (the lowest classifier two-sample AUC, the
stream weighted by acceptance). Passing more lets unlike texts through; passing less keeps
only the most extreme trusted-looking ones. For a trusted corpus drawn from the stream it
lands near the share it was drawn from.

Writes into `output` (built beside and swapped in whole): the filter (filter.json and its
arrays, semcal.filtering), fit_report.md and fit_results.json (pass rate, effective sample
size, the classifier two-sample test of trusted vs stream before and after weighting the
stream by acceptance, and with labels the label distributions and KL before and after),
log_ratio.png (the log-ratio of trusted vs stream texts), reliability.png and, with labels,
label_distributions.png. Per-item calibration (semcal.item_metrics): the filter's acceptance
of the held-out rows of both corpora as a forecast of which corpus a row is from, converted to
the pooled probability n_r r / (n_r r + n_g) with r = M a(x) (the corpora are not a subset),
against the constant forecast n_r / (n_r + n_g).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from semcal import calibration, distributed, files, item_evaluation, item_report, report, runstate
from semcal.calibrations import CALIBRATIONS
from semcal.config import UserError, config_to_dict
from semcal.data import heldout_mask, load_corpus
from semcal.filtering import FORMAT_VERSION, Filter
from semcal.filters import NEEDS_HELP, filter_name, missing_needs
from semcal.fit_data import FitData, Items
from semcal.fit_models import models_folder, train_and_score
from semcal.ratio_calibration import effective_sample_share, two_sample_auc
from semcal.runstate import StageOutput
from semcal.sources import SOURCES, tfidf_vectorizer

log = logging.getLogger(__name__)

# Every source but the control one, which needs a third, matched control model.
FIT_SOURCES = tuple(name for name in SOURCES if name != "control_sum")
MIN_ROWS = 20  # per corpus: fewer leave too few held-out rows to calibrate on
LABEL_MIN_ROWS = 5  # a label needs this many stream rows to set the pass rate
PASS_RATE_GRID = tuple(float(rate) for rate in np.geomspace(0.02, 0.8, 10))  # searched when pass_rate is not set


@dataclass
class FitConfig:
    real: str = "trusted.csv"  # the trusted corpus: a file, a saved data set, a Hub id, or PATH:SPLIT
    general: str = "stream.jsonl"  # a sample of the stream to filter, read the same way
    output: str = "runs/fit/filter"  # the filter folder to write (semcal filter --filter=this)
    text_column: str = "text"  # column holding the texts, in both corpora
    label_column: str | None = None  # optional labels in both corpora: calibrate on the label distribution
    label_map: str | None = None  # fine-to-coarse label map (label_maps/ name or JSON path)
    source: str | None = None  # none: joint with labels, tfidf without; also ngram, embedding, label_posterior, LMs
    calibration: str | None = None  # none: mom without labels, labmom with them; or any calibration
    pass_rate: float | None = None  # share of the stream to pass (1/M); none: derived from the data (module doc)
    heldout_fraction: float = 0.2  # share of each corpus held out to calibrate on
    embedding_model: str | None = None  # a sentence-encoder folder, for source=embedding
    base_model: str = "scratch"  # language-model sources: the base of both models (scratch, a Hub id/folder, .gguf)
    finetune_settings: dict[str, str] = field(default_factory=dict)  # language-model sources: finetune settings
    seed: int = 0  # seed of the held-out split and the classifiers
    overwrite: bool = False  # discard an unfinished fit of other settings left beside output


@distributed.main_process_only
def fit(config: FitConfig) -> dict[str, Any]:
    """Fit, check and save a filter from two corpora; returns what fit_results.json holds."""
    config = replace(config, source=config.source or ("joint" if config.label_column else "tfidf"))
    calibration_name = check_settings(config)
    output = StageOutput("fit", config.output, what="fit", overwrite=config.overwrite, resumable=False)
    real_texts, real_labels = load_corpus(
        config.real, "real", config.text_column, config.label_column, config.label_map
    )
    general_texts, general_labels = load_corpus(
        config.general, "general", config.text_column, config.label_column, config.label_map
    )
    for what, texts in (("real", real_texts), ("general", general_texts)):
        if len(texts) < MIN_ROWS:
            raise UserError(f"{what}={getattr(config, what)} has {len(texts)} texts; give at least {MIN_ROWS}.")
    fingerprints = {
        "real": files.fingerprint_texts(_rows(real_texts, real_labels)),
        "general": files.fingerprint_texts(_rows(general_texts, general_labels)),
        "filter_format": FORMAT_VERSION,
    }
    identity = runstate.identity("fit", config, inputs=fingerprints, ignore=("real", "general", "output", "overwrite"))
    if output.up_to_date(identity):
        return files.read_json(output.path / "fit_results.json")
    data = fit_data(config, general_texts, real_texts, general_labels, real_labels)
    if SOURCES[config.source].language_models:
        log.info("training and scoring the general and real language models in %s", models_folder(config.output))
        add_language_models(data, *train_and_score(config, general_texts, real_texts))
    missing = missing_needs(filter_name(config.source, calibration_name), data)
    if missing:
        raise UserError(
            f"source={config.source} calibration={calibration_name} needs {'; '.join(NEEDS_HELP[n] for n in missing)}."
        )
    with output.building(identity) as staging:
        features = heldout_features(data)  # of the two-sample test: the pass-rate search and the check
        searched, rate_from = {}, "the pass_rate setting"
        label_rate = label_pass_rate(data) if config.pass_rate is None and data.has("labels") else None
        if label_rate is not None:
            data.m, rate_from = 1.0 / label_rate, "the label distributions: 1 / max q(y)/p(y)"
        elif config.pass_rate is None:
            log.info("choosing the pass rate: %d fits of %s_%s", len(PASS_RATE_GRID), config.source, calibration_name)
            rate, searched = choose_pass_rate(data, config.source, calibration_name, features)
            data.m, rate_from = 1.0 / rate, "lowest two-sample AUC over the grid"
        log.info(
            "fitting %s with %s on %d trusted and %d stream texts (M %.3g)",
            config.source,
            calibration_name,
            len(real_texts),
            len(general_texts),
            data.m,
        )
        stream_filter = Filter.fit(config.source, calibration_name, data)
        results = check_filter(stream_filter, data, config, features)
        results["pass_rate_search"], results["pass_rate_from"] = searched, rate_from
        stream_filter.save(staging, fitted_on=fingerprints)
        results["figures"] = write_figures(staging, stream_filter, data, results)
        files.write_json(staging / "fit_results.json", files.plain_json(results), strict=True)
        files.write_text(staging / "fit_report.md", report.fit_report_markdown(results))
        output.finish(config, summary=_summary(results), inputs=fingerprints, outputs={"filter": "filter.json"})
    return results


def check_settings(config: FitConfig) -> str:
    """Setting problems seen before reading anything; returns the calibration to use."""
    if config.source not in FIT_SOURCES:
        control = config.source == "control_sum"
        raise UserError(
            f"source={config.source!r} is not one of {', '.join(FIT_SOURCES)}"
            + (
                ": the control source needs a matched control model; use `semcal run --control=matched`."
                if control
                else "."
            )
        )
    calibration_name = config.calibration or ("labmom" if config.label_column else "mom")
    if calibration_name not in CALIBRATIONS:
        raise UserError(f"calibration={calibration_name!r} is not one of {', '.join(CALIBRATIONS)}.")
    if config.pass_rate is not None and not 0.0 < config.pass_rate < 1.0:
        raise UserError(f"pass_rate must be between 0 and 1, the share of the stream to pass (got {config.pass_rate}).")
    if not 0.05 <= config.heldout_fraction <= 0.5:
        raise UserError(f"heldout_fraction must be between 0.05 and 0.5 (got {config.heldout_fraction}).")
    if config.embedding_model and not Path(config.embedding_model).is_dir():
        raise UserError(f"embedding_model={config.embedding_model} is not a folder (a sentence encoder's).")
    return calibration_name


def _rows(texts: list[str], labels: np.ndarray | None) -> list[str]:
    return texts if labels is None else [f"{text}\t{label}" for text, label in zip(texts, labels, strict=True)]


def fit_data(config: FitConfig, general: list[str], real: list[str], general_labels: Any, real_labels: Any) -> FitData:
    """The pooled corpus (general rows, then real rows), each corpus's held-out rows, the held-out
    stream rows as the stream, and M from pass_rate or the data."""
    n_general, n_real = len(general), len(real)
    heldout = (
        heldout_mask(np.arange(n_general), n_general, config.heldout_fraction, config.seed),
        # The seed of the general rows too: the language models' fine-tuning holds out the same rows.
        heldout_mask(np.arange(n_real), n_real, config.heldout_fraction, config.seed),
    )
    labels = codes = None
    if general_labels is not None:
        labels = sorted(set(general_labels) | set(real_labels))
        code_of = {label: code for code, label in enumerate(labels)}
        codes = tuple(
            np.array([code_of[label] for label in side], dtype=np.int64) for side in (general_labels, real_labels)
        )
    stream = Items([text for text, held in zip(general, heldout[0], strict=True) if held])
    return FitData.pooled(
        general,
        real,
        heldout,
        codes,
        stream=stream,
        m=1.0 / (config.pass_rate or 0.5),
        labels=labels,
        embedding_model=config.embedding_model,
        seed=config.seed,
    )


def add_language_models(data: FitData, heldout_items: Items, models: dict[str, Any]) -> None:
    """The held-out rows with their per-token differences, the held-out stream rows as the stream."""
    if heldout_items.texts != data.heldout_items.texts:
        raise UserError(
            "the language models scored other held-out rows than the fit holds out: fit again with overwrite=true."
        )
    data.heldout_items, data.models = heldout_items, models
    data.stream = heldout_items.select(np.arange(len(data.stream)))  # the held-out general rows come first


def label_pass_rate(data: FitData) -> float | None:
    """1/M with M = max_y q(y)/p(y), q and p the real and general rows' label distributions, over
    the labels with at least LABEL_MIN_ROWS general rows (a rarer label's p is too noisy to divide
    by); None when no label has that many (the label-free search decides then)."""
    k, general = len(data.labels), data.label_codes[data.in_general]
    kept = np.bincount(general, minlength=k) >= LABEL_MIN_ROWS
    if not kept.any():
        return None
    q, p = calibration.label_distribution(data.label_codes[data.is_real], k), calibration.label_distribution(general, k)
    return float(1.0 / max(1.0, (q[kept] / p[kept]).max()))


def choose_pass_rate(
    data: FitData, source: str, calibration_name: str, features: Any
) -> tuple[float, dict[str, float]]:
    """The pass rate at which the accepted held-out stream is hardest to tell from the held-out
    trusted texts (the classifier two-sample AUC, weighted by acceptance, is lowest), over
    PASS_RATE_GRID; and the AUC at each rate. Too high a rate lets unlike texts through, too low
    a one keeps only the most extreme trusted-looking texts: both are told apart."""
    is_real = data.heldout_is_real
    aucs = {}
    for rate in PASS_RATE_GRID:
        data.m = 1.0 / rate
        accept = Filter.fit(source, calibration_name, data).accept_probs(data.heldout_items)
        aucs[f"{rate:.3g}"] = two_sample_auc(features, is_real, np.where(is_real, 1.0, accept), folds=3, seed=data.seed)
        log.debug("pass rate %.3g: two-sample AUC %.3f", rate, aucs[f"{rate:.3g}"])
    best = min(aucs, key=lambda rate: (aucs[rate], -float(rate)))
    return float(best), aucs


def heldout_features(data: FitData) -> Any:
    """TF-IDF features of the held-out rows, fitted on the training rows."""
    # n-grams seen at least twice: the test needs no rare n-grams, and its fits get several times faster.
    vectorizer = tfidf_vectorizer(min_df=2).fit(data.texts_of(data.train_rows))
    return vectorizer.transform(data.heldout_items.texts)


def check_filter(stream_filter: Filter, data: FitData, config: FitConfig, features: Any) -> dict[str, Any]:
    """The label-free check on held-out rows (`features`: heldout_features) and, with labels, the
    label distributions."""
    rows, is_real = data.heldout_rows, data.heldout_is_real
    log_ratio = stream_filter.source.log_ratio(data.heldout_items)
    accept = stream_filter.accept_of(log_ratio)
    stream_accept = accept[~is_real]
    results: dict[str, Any] = {
        "stage": "fit",
        "filter": stream_filter.name,
        "config": config_to_dict(config),
        "counts": {
            "real": int(data.is_real.sum()),
            "general": int((~data.is_real).sum()),
            "real_heldout": int(is_real.sum()),
            "general_heldout": int((~is_real).sum()),
        },
        "M": data.m,
        "pass_rate_target": 1.0 / data.m,
        "pass_rate_heldout_stream": float(np.mean(stream_accept)),
        "effective_sample_share": effective_sample_share(stream_accept),
        "two_sample_auc_before": two_sample_auc(features, is_real, None, seed=data.seed),
        "two_sample_auc_after": two_sample_auc(features, is_real, np.where(is_real, 1.0, accept), seed=data.seed),
        "calibration": stream_filter.link.to_dict(),
        "stats": stream_filter.stats,
        "log_ratio": {
            "real": log_ratio[is_real],
            "general": log_ratio[~is_real],
            "general_accept": stream_accept,
        },
    }
    if data.label_codes is not None:
        results["labels"] = label_check(data, rows, is_real, accept)
    # Membership = which corpus; the pooled rows' P(real | x) is converted from a(x) (item_evaluation.CONVERSION).
    results["per_item"] = item_evaluation.per_item({stream_filter.name: stream_filter}, data)
    return results


def label_check(data: FitData, rows: np.ndarray, is_real: np.ndarray, accept: np.ndarray) -> dict[str, Any]:
    """Label distributions of the held-out trusted rows, stream rows and accepted stream (expected), with KL."""
    codes, k = data.label_codes[rows], len(data.labels)
    real = calibration.label_distribution(codes[is_real], k)
    stream = calibration.label_distribution(codes[~is_real], k)
    accepted = calibration.expected_filtered_distribution(accept[~is_real], codes[~is_real], k)
    kl_before = calibration.kl_divergence(stream, real, 1e-6)
    kl_after = calibration.kl_divergence(accepted, real, 1e-6)
    by_label = {
        name: dict(zip(data.labels, values, strict=True))
        for name, values in (("real", real), ("stream", stream), ("accepted", accepted))
    }
    reduction = calibration.deception_reduction(kl_after, kl_before)
    return {
        "distributions": by_label,
        "kl_before": kl_before,
        "kl_after": kl_after,
        "deception_reduction": reduction,
        "kl_epsilon": 1e-6,
    }


def write_figures(folder: Path, stream_filter: Filter, data: FitData, results: dict[str, Any]) -> list[str]:
    """log_ratio.png and, with labels, label_distributions.png."""
    import pandas as pd

    ratios = results.pop("log_ratio")
    figure = report.plot_log_ratios(ratios["real"], ratios["general"], ratios["general_accept"], stream_filter.name)
    written = files.save_figure(figure, folder / "log_ratio")
    reliability = item_report.write_reliability(folder, results.get("per_item"), "semcal fit", stream_filter.name)
    written += [folder / name for name in reliability]
    if "labels" in results:
        frame = pd.DataFrame(results["labels"]["distributions"])
        frame.columns = ["trusted (held out)", "stream (held out)", "accepted stream (expected)"]
        title = f"label distributions: trusted vs stream vs accepted ({stream_filter.name})"
        written += files.save_figure(
            report.plot_label_distributions(frame, title, sort_by="trusted (held out)"), folder / "label_distributions"
        )
    return [path.name for path in written]


def _summary(results: dict[str, Any]) -> str:
    line = (
        f"pass rate {results['pass_rate_target']:.3f}, two-sample AUC {results['two_sample_auc_before']:.3f} -> "
        f"{results['two_sample_auc_after']:.3f} (0.5: indistinguishable)"
    )
    if "labels" in results:
        labels = results["labels"]
        line += f", KL {labels['kl_before']:.3g} -> {labels['kl_after']:.3g}"
    return line
