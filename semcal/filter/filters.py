"""The names of the filters the evaluation measures: every filter is a source x calibration
pair (semcal.filter.filtering.Filter), named `<source>_<calibration>` (or the source alone for
calibration `none`), plus two references that read labels.

- references: `no_filter`, `oracle` (knows each text's label: the best any filter seeing
  only the text can do in expectation), `classifier` (the TF-IDF source uncalibrated: a
  classifier's P(real | x), the alias of `tfidf`), `label_posterior` (needs labels);
- variants: the language models' score, `clipped` (the paper's) or `sum`, with calibration
  none, heldout, logistic or matched (results.json's `variants` block);
- calibrated: any other pair, e.g. `joint_labmom` (THE default), `tfidf_labmom`, `sum_mom`, `clipped_stream`.

Any valid pair can be chosen with the `filter` setting; the evaluation measures THE filter,
the variants and references its inputs allow, and with `candidates` the CANDIDATES below.
To add a source or a calibration, write one class in semcal/sources.py or
semcal/calibrations.py and add it to SOURCES or CALIBRATIONS there.
"""

from __future__ import annotations

from dataclasses import dataclass

from semcal.filter.calibrations import CALIBRATIONS
from semcal.filter.fit_data import FitData
from semcal.filter.sources import SOURCES

DEFAULT_FILTER = "joint_labmom"
PAPER_FILTER = "clipped"  # the paper's exact method: the clipped score, no calibration
LABEL_REFERENCES = ("no_filter", "oracle")  # computed from general_test's labels, not a source
ALIASES = {"classifier": ("tfidf", "none")}
VARIANT_SOURCES, VARIANT_CALIBRATIONS = ("clipped", "sum"), ("none", "heldout", "logistic", "matched")
# Measured in every evaluation with candidates=true (inputs permitting), in this order.
CANDIDATES = (
    "label_posterior",
    "clipped_stream",
    "sum_stream",
    "sum_mom",
    "sum_labmom",
    "control_sum",
    "control_sum_stream",
    "control_sum_labmom",
    "tfidf_mom",
    "tfidf_labmom",
    "joint_labmom",
    "joint_stream",
    "tfidf_likelihood",  # per-item probability by membership log-likelihood, beside labmom (issue 17)
    "ngram_labmom",
    "embedding_labmom",
    "stack_labmom",
)
# Columns of the results table: always, or when measured.
TABLE_ALWAYS, TABLE_MEASURED = (
    ("oracle", "classifier"),
    ("clipped_stream", "tfidf_labmom", "joint_labmom", "joint_stream", "stack_labmom"),
)
# What to give for each need when the chosen filter lacks it (FitData.has).
NEEDS_HELP = {
    "lm": "general_scores_csv and real_scores_csv (per-token log-probs of general_test under both models)",
    "heldout": "general_heldout_csv and real_heldout_csv (per-token log-probs of held-out general_train texts "
    "under both models)",
    "membership": "held-out rows both in and out of the real split (its general_train_row column, written by "
    "distort, or a real split of its own)",
    "heldout_rows": "training and held-out rows both in and out of the real split",
    "control": "control_scores_csv and control_heldout_csv (a matched control model's scores: the pipeline's "
    "control=matched)",
    "embedding": "embedding_model (a sentence-encoder folder, e.g. MiniLM's)",
    "labels": "labels of at least two kinds in general_train",
}


@dataclass(frozen=True)
class FilterName:
    """What a filter name means: its pair, its kind and what tables call it."""

    name: str
    source: str | None  # None for the label references
    calibration: str | None
    kind: str  # reference, variant or calibrated
    label: str


def filter_name(source: str, calibration: str) -> str:
    """The name of a pair: `<source>_<calibration>`, or the source alone for calibration `none`."""
    return source if calibration == "none" else f"{source}_{calibration}"


def describe(name: str) -> FilterName:
    """The meaning of a filter name; ValueError for a name that is no pair."""
    if name in LABEL_REFERENCES:
        return FilterName(name, None, None, "reference", name.replace("_", " "))
    source, calibration = ALIASES.get(name) or _split(name)
    if name in ALIASES or source == "label_posterior":
        kind = "reference"
    elif source in VARIANT_SOURCES and calibration in VARIANT_CALIBRATIONS:
        kind = "variant"
    else:
        kind = "calibrated"
    source_label, calibration_label = SOURCES[source].label, CALIBRATIONS[calibration].label
    if kind == "variant" or name in ALIASES:
        label = name
    else:
        label = f"{source_label}, {calibration_label}" if calibration_label else source_label
    return FilterName(name, source, calibration, kind, label)


def _split(name: str) -> tuple[str, str]:
    if name in SOURCES:
        return name, "none"
    source, _, calibration = name.rpartition("_")
    if source in SOURCES and calibration in CALIBRATIONS:
        return source, calibration
    raise ValueError(f"{name!r} is not a filter name")


def choices() -> list[str]:
    """Names the `filter` setting accepts: every source x calibration pair and the aliases."""
    return [*(filter_name(source, cal) for source in SOURCES for cal in CALIBRATIONS), *ALIASES]


def is_filter(name: str) -> bool:
    try:
        return describe(name).source is not None
    except ValueError:
        return False


def needs(name: str) -> list[str]:
    """The inputs (FitData.has) the filter `name` cannot be fitted without: its source's and its
    calibration's, and held-out scores where the calibration reads the held-out log-ratio of a
    language-model source."""
    described = describe(name)
    source, calibration = SOURCES[described.source], CALIBRATIONS[described.calibration]
    wanted = list(source.needs) + list(calibration.needs)
    if calibration.uses_heldout and source.language_models:
        wanted.append("heldout")
    return list(dict.fromkeys(wanted))


def missing_needs(name: str, data: FitData) -> list[str]:
    """What `data` lacks for the filter `name` (NEEDS_HELP explains each)."""
    return [need for need in needs(name) if not data.has(need)]


def needs_language_models(name: str) -> bool:
    """Whether the filter `name` reads the language models' scores."""
    described = describe(name)
    return described.source is not None and SOURCES[described.source].language_models


def measured(chosen: str, data: FitData, candidates: bool, classifier: bool) -> list[str]:
    """The filters an evaluation measures: the references, THE filter, the variants and (with
    `candidates`) the candidates whose inputs are there, each once, in table order."""
    names = [*LABEL_REFERENCES, chosen]
    names += [filter_name(source, cal) for source in VARIANT_SOURCES for cal in VARIANT_CALIBRATIONS]
    names += ["classifier"] if classifier else []
    names += list(CANDIDATES) if candidates else []
    keep = [name for name in names if name in LABEL_REFERENCES or name == chosen or not missing_needs(name, data)]
    return list(dict.fromkeys(keep))


def table_columns(measured_names: list[str]) -> list[FilterName]:
    """The filters with a column in the results table."""
    return [describe(name) for name in TABLE_ALWAYS + tuple(n for n in TABLE_MEASURED if n in measured_names)]
