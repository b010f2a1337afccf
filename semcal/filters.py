"""Every filter the evaluation measures, in one registry: references, score variants and
density-ratio estimators.

A filter turns the evaluation's inputs (`EvaluationInputs`: the evaluated general_test
texts, their per-token log-prob differences and labels, the training texts, the held-out
texts' scores and real_train membership, M) into an acceptance probability per text. The
evaluation runs every registered filter whose needs are met on the same Monte Carlo
draws; results.json, summary.md, per_text.csv and the results table (semcal.report) list
them from this registry, so a new filter is one function here:

    @register("ngram_ratio", kind="estimator", label="hashed n-gram ratio")
    def ngram_ratio(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
        log_ratio = ...  # fitted on inputs.general_train_texts vs inputs.real_train_texts
        return Acceptance(calibration.accept_probs(log_ratio, inputs.m), scores=log_ratio)

Kinds: "reference" (no filter, the oracle, the label-posterior plug-in: bounds and
yardsticks, not methods), "variant" (the two language models' score, clipped or summed,
normalised one way or another; under `variants`), "estimator" (another way to estimate the
density ratio, e.g. the TF-IDF classifier; under `filters`), "calibrated" (a log-ratio
estimate whose temperature and shift are fitted on the run's own data; semcal.estimators;
under `filters`). THE filter, `filters.semcal` in results.json, is the one the `filter`
setting names (DEFAULT_FILTER), or with filter=variant the `score` / `normalize` variant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from semcal import calibration

if TYPE_CHECKING:
    from semcal.evaluation import EvaluationConfig

log = logging.getLogger(__name__)

KINDS = ("reference", "variant", "estimator", "calibrated")
SCORE_METHODS = ("clipped", "sum")
# Each normalisation of the score and what it needs: held-out texts' scores, and which of them are in real_train.
NORMALIZATIONS = {"none": (), "heldout": ("heldout",), "logistic": ("membership",), "matched": ("membership",)}
PAPER_VARIANT = "clipped"  # score=clipped, normalize=none: the paper's exact method
# THE filter unless the `filter` setting names another; "variant" means the score / normalize variant.
DEFAULT_FILTER = "tfidf_labmom"
VARIANT_CHOICE = "variant"
# What to give for each need when the chosen filter lacks it (EvaluationInputs.has).
NEEDS_HELP = {
    "heldout": "general_heldout_csv and real_heldout_csv (per-token log-probs of held-out general_train texts "
    "under both models)",
    "membership": "held-out texts both in and out of the real split: its general_train_row column (written by "
    "distort) and held-out score files",
    "heldout_rows": "the real split's general_train_row column (written by distort), with held-out and training "
    "rows both in and out of it",
    "control": "control_scores_csv and control_heldout_csv (a matched control model's scores: the pipeline's "
    "control=matched)",
    "embedding": "embedding_model (a sentence-encoder folder, e.g. MiniLM's)",
}


@dataclass
class EvaluationInputs:
    """What every filter sees. Per-text arrays follow the evaluated general_test texts (sorted
    by text_id); label codes index `labels`; `real` and `general` are real_train's and
    general_train's label distributions. Held-out rows: the general_train rows the held-out
    score files list, else data.heldout_mask's; the other general_train rows train the text
    estimators. General_test labels (`test_codes`) are for the oracle and the measurement only."""

    labels: list[str]
    text_ids: np.ndarray
    test_codes: np.ndarray
    test_texts: list[str]
    tokens: list[list[str]]
    diffs: list[np.ndarray]  # per token: log p_real - log p_general
    real: np.ndarray
    general: np.ndarray
    m: float
    general_train_texts: list[str]
    real_train_texts: list[str]
    real_general_rows: np.ndarray | None = None  # the general_train row of each real_train row (distort's column)
    heldout_ids: np.ndarray | None = None  # held-out general_train rows (scored by both models when files are given)
    heldout_diffs: list[np.ndarray] | None = None  # None without held-out score files
    heldout_is_real: np.ndarray | None = None  # which held-out rows are in real_train
    general_train_codes: np.ndarray | None = None  # label code of every general_train row
    real_train_codes: np.ndarray | None = None
    control_diffs: list[np.ndarray] | None = None  # per token: log p_real - log p_control (matched control)
    control_heldout_diffs: list[np.ndarray] | None = None  # the same for the held-out rows
    embedding_model: str | None = None  # sentence-encoder folder of the embedding estimator
    _scores: dict[tuple[str, float], tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict, repr=False)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # fitted estimates shared by filters

    def has(self, need: str) -> bool:
        """Whether an input a filter needs is there (NEEDS_HELP says what gives it)."""
        if need == "heldout":
            return self.heldout_diffs is not None and len(self.heldout_diffs) > 0
        if need == "membership":
            return self.has("heldout") and _both_classes(self.heldout_is_real)
        if need == "heldout_rows":
            return _both_classes(self.heldout_is_real) and _both_classes(self.train_is_real)
        if need == "control":
            return self.control_diffs is not None and self.control_heldout_diffs is not None
        if need == "embedding":
            return self.embedding_model is not None
        raise ValueError(f"unknown need {need!r}")

    @property
    def train_ids(self) -> np.ndarray:
        """The general_train rows that are not held out: the text estimators train on them."""
        held_out = np.array([], dtype=np.int64) if self.heldout_ids is None else self.heldout_ids
        return np.setdiff1d(np.arange(len(self.general_train_texts)), held_out)

    @property
    def train_is_real(self) -> np.ndarray | None:
        if self.real_general_rows is None:
            return None
        return np.isin(self.train_ids, self.real_general_rows)

    def scores(self, method: str, top_p: float) -> tuple[np.ndarray, np.ndarray | None]:
        """The language models' scores of the test texts and of the held-out texts (None without them)."""
        key = (method, top_p)
        if key not in self._scores:
            heldout = self.heldout_diffs
            self._scores[key] = (
                calibration.log_ratio_scores(self.diffs, method, top_p),
                None if heldout is None else calibration.log_ratio_scores(heldout, method, top_p),
            )
        return self._scores[key]


def _both_classes(is_real: np.ndarray | None) -> bool:
    return is_real is not None and bool(is_real.any()) and not bool(is_real.all())


@dataclass
class Acceptance:
    """A filter's output: acceptance probability per text, its log density-ratio estimate when
    it has one (per_text.csv shows it), and statistics merged into its results block."""

    accept: np.ndarray
    scores: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)


FilterFunction = Callable[[EvaluationInputs, "EvaluationConfig"], Acceptance]


@dataclass(frozen=True)
class Filter:
    name: str  # key in results.json and per_text.csv
    kind: str  # reference, variant or estimator
    label: str  # what tables and summaries call it
    run: FilterFunction
    needs: tuple[str, ...] = ()  # inputs it cannot run without (EvaluationInputs.has)
    enabled: Callable[[EvaluationConfig], bool] = lambda config: True  # a setting that switches it off (unless chosen)
    in_table: bool | str = False  # a column of the results table (True), or one when measured ("measured")
    per_text: bool = True  # an accept_prob column in per_text.csv (variants: a score column)


FILTERS: dict[str, Filter] = {}


def register(name: str, kind: str, label: str | None = None, **options: Any) -> Callable[[FilterFunction], Any]:
    """Decorator adding a filter function to FILTERS (options: the fields of `Filter`)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    if name in FILTERS or name in ("semcal", VARIANT_CHOICE):  # "semcal" names THE filter in results.json
        raise ValueError(f"a filter named {name!r} is already registered")

    def add(function: FilterFunction) -> FilterFunction:
        FILTERS[name] = Filter(name, kind, label or name, function, **options)
        return function

    return add


def runnable(inputs: EvaluationInputs, config: EvaluationConfig) -> list[Filter]:
    """The filters this evaluation runs: THE filter, and every other one switched on with every
    input it needs."""
    chosen = chosen_name(config)
    return [
        f
        for f in FILTERS.values()
        if (f.enabled(config) or f.name == chosen) and all(inputs.has(need) for need in f.needs)
    ]


def variant_name(score: str, normalize: str) -> str:
    return score if normalize == "none" else f"{score}_{normalize}"


def chosen_name(config: EvaluationConfig) -> str:
    """THE filter's name: the `filter` setting, or with filter=variant the score / normalize variant."""
    return variant_name(config.score, config.normalize) if config.filter == VARIANT_CHOICE else config.filter


def filter_choices() -> list[str]:
    """What the `filter` setting accepts: every filter but the references (bounds, not methods)."""
    return [VARIANT_CHOICE, *(name for name, f in FILTERS.items() if f.kind != "reference")]


# ---- references ---------------------------------------------------------------------------


@register("no_filter", kind="reference", label="no filter", per_text=False)
def no_filter(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    return Acceptance(np.ones(len(inputs.text_ids)))


@register("oracle", kind="reference", in_table=True)
def oracle(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    """Knows each text's label: the best any filter seeing only the text can do in expectation."""
    return Acceptance(calibration.oracle_accept_probs(inputs.test_codes, inputs.real, inputs.general, inputs.m))


# ---- estimators ---------------------------------------------------------------------------


@register("classifier", kind="estimator", in_table=True, enabled=lambda config: config.classifier)
def classifier(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    """TF-IDF + logistic regression telling real_train from the rest of general_train (baselines.py)."""
    from semcal.baselines import classifier_accept_probs

    log.info("training the classifier reference on %d general_train texts", len(inputs.general_train_texts))
    accept = classifier_accept_probs(
        inputs.general_train_texts, inputs.real_train_texts, inputs.real_general_rows, inputs.test_texts, config.seed
    )
    return Acceptance(accept)


# ---- the language models' score, every variant ----------------------------------------------


def score_variant(method: str, normalize: str, inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    """The clipped or summed score, normalised on the held-out general texts:

    heldout: shift so exp(score) averages 1 on them. logistic: fit P(real | x) =
    sigmoid(a + b * score) on their real_train membership. matched: scale the score so
    general texts reweighted by exp(scale * score) have the real members' mean score, then
    shift as `heldout` (see calibration.fit_matched_scale).
    """
    raw, heldout = inputs.scores(method, config.top_p)
    shift, heldout_lme, fit, scores = 0.0, None, None, raw
    if normalize == "heldout":
        shift = heldout_lme = calibration.heldout_shift(heldout)
        scores = raw - shift
    elif normalize == "logistic":
        intercept, slope = calibration.fit_membership_logistic(heldout, inputs.heldout_is_real)
        fit = {"intercept": intercept, "slope": slope, "heldout_texts": len(heldout)}
        scores = calibration.logistic_log_ratio(raw, intercept, slope, inputs.m)
    elif normalize == "matched":
        scale = calibration.fit_matched_scale(heldout, inputs.heldout_is_real)
        shift = calibration.heldout_shift(scale * heldout)
        fit = {"scale": scale, "heldout_texts": len(heldout)}
        scores = scale * raw - shift
    stats = {
        "score": method,
        "normalize": normalize,
        "shift": shift,
        "score_mean": float(np.mean(scores)),
        "score_std": float(np.std(scores)),
        # log mean exp(score) on the test texts: 0 when exp(score) averages 1 (calibrated)
        "test_log_mean_exp": calibration.log_mean_exp(scores),
        "heldout_log_mean_exp_before_shift": heldout_lme,
        "fit": fit,
    }
    return Acceptance(calibration.accept_probs(scores, inputs.m), scores=scores, stats=stats)


for _method in SCORE_METHODS:
    for _normalize, _needs in NORMALIZATIONS.items():
        _name = variant_name(_method, _normalize)
        register(_name, kind="variant", needs=_needs)(partial(score_variant, _method, _normalize))


# The calibrated filters and their estimators register themselves (semcal.estimators imports this module).
from semcal import estimators  # noqa: E402, F401
