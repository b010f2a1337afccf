"""semcal fit: a filter from two corpora, for a trusted corpus and a sample of a stream.

    semcal fit --real=trusted.csv --general=stream.jsonl --output=my_filter
    semcal filter --filter=my_filter --input=new.jsonl --output=decisions.csv

`real` is the trusted corpus, `general` a sample of the stream to filter; labels are
optional and the real corpus need not be drawn from the stream. Both are read as every
stage reads data (a CSV / Parquet / JSONL file in `encoding`, a saved data set, a Hub id,
`PATH:SPLIT`). `heldout_fraction` of the texts are held out, chosen by the text itself: a
text found in both corpora is held out on both sides. The source is fitted on the rest and
never sees a held-out row; its calibration is fitted on the held-out rows. The default
source needs no language model to train: `joint` (TF-IDF membership and the label
posterior, the evaluation's default) with labels, `tfidf` without. A language-model source
(`clipped`, `sum`, `stack`) first fine-tunes a general model on the stream sample and a
real model on the trusted corpus (both from `base_model`, with `finetune_settings`) and
scores the held-out rows of both with both, the way the pipeline does (semcal.fit.fit_models,
in OUTPUT.models beside the filter). Calibrations:

- without labels, `mom`: the held-out stream rows weighted by their acceptance must have the
  held-out trusted rows' means of another estimate (the hashed n-gram ratio);
- with labels (`label_column` in both corpora), `labmom`: they must have the trusted rows'
  label distribution;
- the shift by stream self-normalisation: the held-out stream passes exactly `pass_rate`.

`pass_rate` (= 1/M) is the share of the stream to pass. Left out, it is derived from the
data. With labels it is 1 / max_y q(y)/p(y), q and p the trusted and stream label
distributions (labels with at least 5 stream rows): the most a filter can pass whose
accepted labels match the trusted ones. Without labels (or with no label of 5 stream rows),
it is the estimated TRUSTED SHARE of the stream (semcal.fit.fit_check.trusted_share: a
mixture-proportion estimate on out-of-fold classifier scores, with an interval), which the
report gives in every case.

Every number the report gives is computed on rows no part of the fit learned from
(semcal.fit.fit_check): the held-out rows, each accepted by the filter calibrated on the other
held-out folds. Writes into `output` (built beside and swapped in whole): the filter
(filter.json and its arrays, semcal.filter.filtering), fit_report.md and fit_results.json (the
trusted share and the overlap of the corpora, pass rate, effective sample size, the
classifier two-sample test of trusted vs stream before and after weighting the stream by
acceptance, with labels the label distributions and KL before and after, and the advice),
log_ratio.png (the log-ratio of trusted vs stream texts), reliability.png and, with labels,
label_distributions.png. Per-item calibration (semcal.protocol.item_metrics): the acceptance of the
held-out rows of both corpora as a forecast of which corpus a row is from, converted to the
pooled probability n_r r / (n_r r + n_g) with r = M a(x) (the corpora are not a subset),
against the constant forecast n_r / (n_r + n_g).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core import distributed
from semcal.core.config import config_to_dict
from semcal.core.errors import UserError
from semcal.filter import calibration
from semcal.filter.calibrations import CALIBRATIONS
from semcal.filter.filtering import FORMAT_VERSION, Filter
from semcal.filter.filters import NEEDS_HELP, filter_name, missing_needs
from semcal.filter.fit_data import FitData, Items, text_position
from semcal.filter.ratio_calibration import effective_sample_share, two_sample_auc
from semcal.filter.sources import SOURCES, tfidf_vectorizer
from semcal.fit import fit_check, fit_report, fit_results
from semcal.fit.fit_models import models_folder, train_and_score
from semcal.fit.fit_results import FitResults
from semcal.reports import item_report, report
from semcal.store import files, runstate
from semcal.store.data import load_corpus
from semcal.store.runstate import StageOutput

log = logging.getLogger(__name__)

# Every source but the control one, which needs a third, matched control model.
FIT_SOURCES = tuple(name for name in SOURCES if name != "control_sum")
MIN_ROWS = 20  # per corpus: fewer leave too few held-out rows to calibrate on
LABEL_MIN_ROWS = 5  # a label needs this many stream rows to set the pass rate


@dataclass
class FitConfig:
    real: str = "trusted.csv"  # the trusted corpus: a file, a saved data set, a Hub id, or PATH:SPLIT
    general: str = "stream.jsonl"  # a sample of the stream to filter, read the same way
    output: str = "runs/fit/filter"  # the filter folder to write (semcal filter --filter=this)
    text_column: str = "text"  # column holding the texts, in both corpora
    label_column: str | None = None  # optional labels in both corpora: calibrate on the label distribution
    label_map: str | None = None  # fine-to-coarse label map (label_maps/ name or JSON path)
    encoding: str = "utf-8"  # of CSV and JSONL corpora
    source: str | None = None  # none: joint with labels, tfidf without; also ngram, embedding, label_posterior, LMs
    calibration: str | None = None  # none: mom without labels, labmom with them; or any calibration
    pass_rate: float | None = None  # share of the stream to pass (1/M); none: derived from the data (module doc)
    heldout_fraction: float = 0.2  # share of the texts held out to calibrate and report on
    embedding_model: str | None = None  # a sentence-encoder folder, for source=embedding
    base_model: str = "scratch"  # language-model sources: the base of both models (scratch, a Hub id/folder, .gguf)
    finetune_settings: dict[str, str] = field(default_factory=dict)  # language-model sources: finetune settings
    seed: int = 0  # seed of the held-out split and the classifiers
    overwrite: bool = False  # discard an unfinished fit of other settings left beside output


@distributed.main_process_only
def fit(config: FitConfig) -> dict[str, Any]:
    """Fit, check and save a filter from two corpora; returns what fit_results.json holds (FitResults.to_dict)."""
    config = replace(config, source=config.source or ("joint" if config.label_column else "tfidf"))
    calibration_name = check_settings(config)
    output = StageOutput("fit", config.output, what="fit", overwrite=config.overwrite, resumable=False)
    corpora = {
        what: load_corpus(
            getattr(config, what), what, config.text_column, config.label_column, config.label_map, config.encoding
        )
        for what in ("real", "general")
    }
    (real_texts, real_labels), (general_texts, general_labels) = corpora["real"], corpora["general"]
    for what, (texts, _) in corpora.items():
        if len(texts) < MIN_ROWS:
            raise UserError(f"{what}={getattr(config, what)} has {len(texts)} texts; give at least {MIN_ROWS}.")
    fingerprints = {
        "real": files.fingerprint_texts(_rows(real_texts, real_labels)),
        "general": files.fingerprint_texts(_rows(general_texts, general_labels)),
        "filter_format": FORMAT_VERSION,
        "results_schema": fit_results.SCHEMA_VERSION,  # an older fit_results.json: the fit runs again
    }
    identity = runstate.identity("fit", config, inputs=fingerprints, ignore=("real", "general", "output", "overwrite"))
    if output.up_to_date(identity):
        return fit_results.read(output.path / fit_results.NAME).to_dict()
    data = fit_data(config, general_texts, real_texts, general_labels, real_labels)
    if SOURCES[config.source].language_models:
        log.info("training and scoring the general and real language models in %s", models_folder(config.output))
        add_language_models(data, *train_and_score(config, general_texts, real_texts, data.heldout))
    missing = missing_needs(filter_name(config.source, calibration_name), data)
    if missing:
        raise UserError(
            f"source={config.source} calibration={calibration_name} needs {'; '.join(NEEDS_HELP[n] for n in missing)}."
        )
    with output.building(identity) as staging:
        log.info("estimating the trusted share of the stream (%d-fold classifier)", fit_check.SHARE_FOLDS)
        share, _ = fit_check.trusted_share(data)
        label_rate = label_pass_rate(data) if config.pass_rate is None and data.has("labels") else None
        if config.pass_rate is not None:
            data.m, rate_from = 1.0 / config.pass_rate, "the pass_rate setting"
        elif label_rate is not None:
            data.m = 1.0 / label_rate[0]
            rate_from = f"the label distributions: 1 / max q(y)/p(y), set by the label {label_rate[1]!r}"
        else:
            data.m, rate_from = 1.0 / fit_check.estimated_rate(share), "the estimated trusted share of the stream"
        log.info(
            "fitting %s with %s on %d trusted and %d stream texts (M %.3g)",
            config.source,
            calibration_name,
            len(real_texts),
            len(general_texts),
            data.m,
        )
        stream_filter = Filter.fit(config.source, calibration_name, data)
        measured, log_ratio = check_filter(stream_filter, data, config, calibration_name)
        trusted = {
            "estimate": share.estimate,
            "interval": [share.low, share.high],
            "level": share.level,
            "method": "best bin estimation on out-of-fold TF-IDF classifier scores",
        }
        overlap = fit_check.overlap_share(real_texts, general_texts)
        extra = {"pass_rate_from": rate_from, "trusted_share": trusted, "overlap_share": overlap}
        results = fit_results.from_dict(measured | extra | {"advice": [], "figures": []})
        results.advice = fit_check.advice(results)
        for warning in results.advice:
            log.warning("%s", warning)
        stream_filter.save(staging, fitted_on=fingerprints)
        results.figures = write_figures(staging, stream_filter, results, log_ratio)
        fit_results.write(staging / fit_results.NAME, results)
        files.write_text(staging / "fit_report.md", fit_report.fit_report_markdown(results))
        output.finish(config, summary=_summary(results), inputs=fingerprints, outputs={"filter": "filter.json"})
    log.info("fit report: %s", output.path / "fit_report.md")
    return results.to_dict()


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
    """The pooled corpus (general rows, then real rows), the held-out rows chosen by text, the
    held-out stream rows as the stream, and M from pass_rate or the data."""
    heldout = tuple(text_position(texts, config.seed) < config.heldout_fraction for texts in (general, real))
    labels = codes = None
    if general_labels is not None:
        labels = sorted(set(general_labels) | set(real_labels))
        code_of = {label: code for code, label in enumerate(labels)}
        codes = tuple(
            np.array([code_of[label] for label in side], dtype=np.int64) for side in (general_labels, real_labels)
        )
    for what, held in zip(("general", "real"), heldout, strict=True):
        if held.all() or not held.any():
            raise UserError(
                f"{what}={getattr(config, what)} has too few distinct texts to hold {config.heldout_fraction:.0%} "
                "out and still train on the rest: give more texts."
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
        sources_train_only=True,
    )


def add_language_models(data: FitData, heldout_items: Items, models: dict[str, Any]) -> None:
    """The held-out rows with their per-token differences, the held-out stream rows as the stream."""
    if heldout_items.texts != data.heldout_items.texts:
        raise UserError(
            "the language models scored other held-out rows than the fit holds out: fit again with overwrite=true."
        )
    data.heldout_items, data.models = heldout_items, models
    data.stream = heldout_items.select(np.arange(len(data.stream)))  # the held-out general rows come first


def label_pass_rate(data: FitData) -> tuple[float, str] | None:
    """1/M with M = max_y q(y)/p(y), q and p the real and general rows' label distributions, over
    the labels with at least LABEL_MIN_ROWS general rows (a rarer label's p is too noisy to divide
    by), and the label y that sets it; None when no label has that many (the label-free estimate
    decides then)."""
    k, general = len(data.labels), data.label_codes[data.in_general]
    kept = np.flatnonzero(np.bincount(general, minlength=k) >= LABEL_MIN_ROWS)
    if not len(kept):
        return None
    q, p = calibration.label_distribution(data.label_codes[data.is_real], k), calibration.label_distribution(general, k)
    ratios = q[kept] / p[kept]
    return float(1.0 / max(1.0, ratios.max())), str(data.labels[kept[int(np.argmax(ratios))]])


def heldout_features(data: FitData) -> Any:
    """TF-IDF features of the held-out rows for the two-sample test, fitted on the training rows."""
    # n-grams seen at least twice: the test needs no rare n-grams, and its fits get several times faster.
    vectorizer = tfidf_vectorizer(min_df=2).fit(data.texts_of(data.train_rows))
    return vectorizer.transform(data.heldout_items.texts)


def check_filter(
    stream_filter: Filter, data: FitData, config: FitConfig, calibration_name: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The report's numbers, on the held-out rows accepted by the cross-fitted calibration
    (semcal.fit.fit_check): the label-free check and, with labels, the label distributions; and the
    log-ratios of the held-out rows for the figure."""
    is_real = data.heldout_is_real
    log.info("checking the filter on %d held-out texts (%d-fold calibration)", len(is_real), fit_check.REPORT_FOLDS)
    accept = fit_check.crossfit_accept(stream_filter, data, config.source, calibration_name)
    log_ratio = stream_filter.source.log_ratio(data.heldout_items)
    stream_accept = accept[~is_real]
    features = heldout_features(data)
    fold = fit_check.folds_by_text(data.heldout_items.texts, fit_check.REPORT_FOLDS, data.seed)
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
        "two_sample_auc_before": two_sample_auc(features, is_real, None, seed=data.seed, fold=fold),
        "two_sample_auc_after": two_sample_auc(
            features, is_real, np.where(is_real, 1.0, accept), seed=data.seed, fold=fold
        ),
        "calibration": stream_filter.link.to_dict(),
        "stats": stream_filter.stats,
    }
    if data.label_codes is not None:
        results["labels"] = fit_check.label_check(data, accept)
    # Membership = which corpus; the pooled rows' P(real | x) is converted from a(x) (item_evaluation.CONVERSION).
    results["per_item"] = fit_check.per_item(stream_filter, data, accept)
    ratios = {"real": log_ratio[is_real], "general": log_ratio[~is_real], "general_accept": stream_accept}
    return results, ratios


def write_figures(folder: Path, stream_filter: Filter, results: FitResults, ratios: dict[str, np.ndarray]) -> list[str]:
    """log_ratio.png, reliability.png and, with labels, label_distributions.png."""
    import pandas as pd

    figure = report.plot_log_ratios(ratios["real"], ratios["general"], ratios["general_accept"], stream_filter.name)
    written = files.save_figure(figure, folder / "log_ratio")
    reliability = item_report.write_reliability(folder, results.per_item, "semcal fit", stream_filter.name)
    written += [folder / name for name in reliability]
    if results.labels is not None:
        distributions = results.labels.distributions
        frame = pd.DataFrame(
            {"real": distributions.real, "stream": distributions.stream, "accepted": distributions.accepted}
        )
        frame.columns = ["trusted (held out)", "stream (held out)", "accepted stream (expected)"]
        title = f"label distributions: trusted vs stream vs accepted ({stream_filter.name})"
        written += files.save_figure(
            report.plot_label_distributions(frame, title, sort_by="trusted (held out)"), folder / "label_distributions"
        )
    return [path.name for path in written]


def _summary(results: FitResults) -> str:
    line = (
        f"pass rate {results.pass_rate_target:.3f}, two-sample AUC {results.two_sample_auc_before:.3f} -> "
        f"{results.two_sample_auc_after:.3f} (0.5: indistinguishable)"
    )
    if results.labels is not None:
        line += f", KL {results.labels.kl_before:.3g} -> {results.labels.kl_after:.3g}"
    return line
