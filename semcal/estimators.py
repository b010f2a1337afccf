"""The calibrated filters: log density-ratio estimates whose temperature and shift are fitted
on the run's own data (semcal.ratio_calibration), registered in semcal.filters.

Every one is a source l(x) of log p_real(x) / p_general(x) and a calibration

    a(x) = min(1, exp(t * l(x) + c) / M),

with c chosen by STREAM SELF-NORMALISATION (the mean of a over the evaluated general_test
texts is exactly 1/M) and the temperature t by one of:

- `stream`: t = 1, flat (t = 0) when the held-out rows' TF-IDF ratio shows no shift at all
  (ratio_calibration.shift_test; a baseline split);
- `mom`: label-free moments: t makes the held-out rows, weighted by a, match the held-out
  real_train members' means of INSTRUMENTS, other estimates whose errors are not l's;
- `labmom`: label-aware moments: the instruments are the held-out rows' general_train
  LABELS (one-hot). General_test labels are never read. When those labels show no shift
  (a baseline split), the filter is the label-posterior plug-in, normalised on the stream.

Sources: the language models' score (`clipped`, `sum`), the same against a matched CONTROL
model (`control_sum`: log p_real - log p_control, from control_scores_csv and
control_heldout_csv), and text estimators (semcal.ratio_estimators) fitted on the
general_train rows that are not held out, with their real_train membership: `tfidf`,
`ngram` (hashed n-grams), `embedding` (a sentence encoder, the `embedding_model` setting)
and `stack` (logistic regression on held-out membership over the LM ratio's sum, mean and
token count and the TF-IDF log-ratio). Each text estimator is fitted once per evaluation
and shared by every filter that uses it (`EvaluationInputs.cache`).

Registered names (results.json keys): clipped_stream, sum_stream, sum_mom, sum_labmom,
control_sum (t = 1, no shift), control_sum_stream, control_sum_labmom, tfidf_mom,
tfidf_labmom, ngram_labmom, stack_labmom, embedding_labmom, and the reference
label_posterior (a plug-in with general_train labels). Each results block holds its
calibration (`calibration`: temperature, shift, criterion, shift-test statistic and
threshold), its estimator's parameters (`estimator`), the stacked weights (`stacked`) and
the instruments' names, as plain numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from semcal import calibration, ratio_calibration, ratio_estimators
from semcal.filters import Acceptance, EvaluationInputs, register

if TYPE_CHECKING:
    from semcal.evaluation import EvaluationConfig

log = logging.getLogger(__name__)

STACK_FEATURES = ("lm_sum", "lm_mean", "n_tokens", "tfidf")
_STACK_FOLDS = 5  # cross-fitting folds of the stacked calibrator on the held-out rows


def _candidates(config: EvaluationConfig) -> bool:
    return config.candidates


# ---- shared pieces: fitted estimates, instruments, the calibration ----------------------------


@dataclass
class SplitEstimate:
    """A text estimator's log-ratio of the held-out rows and of the evaluated general_test texts."""

    heldout: np.ndarray
    stream: np.ndarray
    params: dict[str, float]
    model: Any = None  # the fitted model when the estimator keeps it (tfidf: the saved filter's)


def text_estimate(inputs: EvaluationInputs, name: str, config: EvaluationConfig) -> SplitEstimate:
    """The `name` estimator (tfidf, ngram, embedding), fitted once per evaluation on the training rows."""
    key = f"estimate:{name}"
    if key not in inputs.cache:
        started = time.perf_counter()
        inputs.cache[key] = _fit_text_estimate(inputs, name, config)
        log.debug(
            "fitted the %s ratio on %d general_train rows in %.1fs",
            name,
            len(inputs.train_ids),
            time.perf_counter() - started,
        )
    return inputs.cache[key]


def _fit_text_estimate(inputs: EvaluationInputs, name: str, config: EvaluationConfig) -> SplitEstimate:
    train_ids, heldout_ids = inputs.train_ids, inputs.heldout_ids
    if name == "embedding":
        train_rows, test = _embeddings(inputs)
        estimate = ratio_estimators.fit_embedding_classifier(
            train_rows[train_ids], inputs.train_is_real, np.vstack([train_rows[heldout_ids], test]), seed=config.seed
        )
    else:
        texts = inputs.general_train_texts
        estimate = ratio_estimators.ESTIMATORS[name](
            [texts[i] for i in train_ids],
            inputs.train_is_real,
            [texts[i] for i in heldout_ids] + list(inputs.test_texts),
            seed=config.seed,
        )
    n_heldout = len(heldout_ids)
    return SplitEstimate(
        estimate.log_ratio[:n_heldout], estimate.log_ratio[n_heldout:], dict(estimate.params), estimate.model
    )


def _embeddings(inputs: EvaluationInputs) -> tuple[np.ndarray, np.ndarray]:
    """Sentence embeddings of every general_train row and of the evaluated general_test texts."""
    started = time.perf_counter()
    texts = list(inputs.general_train_texts) + list(inputs.test_texts)
    embedded = ratio_estimators.embed_texts(texts, inputs.embedding_model)
    log.info("embedded %d texts with %s in %.1fs", len(texts), inputs.embedding_model, time.perf_counter() - started)
    n_train = len(inputs.general_train_texts)
    return embedded[:n_train], embedded[n_train:]


def control_scores(inputs: EvaluationInputs) -> tuple[np.ndarray, np.ndarray]:
    """log p_real - log p_control summed over tokens: of the evaluated texts and of the held-out rows."""
    if "control_sum" not in inputs.cache:
        inputs.cache["control_sum"] = (
            calibration.sum_scores(inputs.control_diffs),
            calibration.sum_scores(inputs.control_heldout_diffs),
        )
    return inputs.cache["control_sum"]


def label_instruments(inputs: EvaluationInputs) -> np.ndarray:
    """One-hot general_train labels of the held-out rows (never general_test's)."""
    codes = inputs.general_train_codes[inputs.heldout_ids]
    return (codes[:, None] == np.unique(codes)[None, :]).astype(np.float64)


def other_views(inputs: EvaluationInputs, config: EvaluationConfig, lm_source: bool) -> dict[str, np.ndarray]:
    """Instruments of the label-free moments: the held-out rows' estimates whose errors are not
    the source's. For an LM source the text estimators; for a text source the LM ratios (and the
    embedding estimator when given), else the hashed n-gram ratio."""
    views: dict[str, np.ndarray] = {}
    if lm_source:
        views["tfidf"] = text_estimate(inputs, "tfidf", config).heldout
    else:
        if inputs.has("heldout"):
            views["sum"] = inputs.scores("sum", config.top_p)[1]
        if inputs.has("control"):
            views["control_sum"] = control_scores(inputs)[1]
    if inputs.has("embedding"):
        views["embedding"] = text_estimate(inputs, "embedding", config).heldout
    if not views:
        views["ngram"] = text_estimate(inputs, "ngram", config).heldout
    return views


def calibrated(
    inputs: EvaluationInputs,
    source: str,
    stream: np.ndarray,
    criterion: str,
    heldout: np.ndarray | None = None,
    instruments: np.ndarray | None = None,
    **stats: Any,
) -> Acceptance:
    """Fit the temperature by `criterion` and the shift on the stream; the filter's acceptance,
    calibrated log-ratio t * l + c (per_text.csv's score) and parameters."""
    is_real = inputs.heldout_is_real if criterion != "fixed" or instruments is not None else None
    fit = ratio_calibration.calibrate_stream(stream, inputs.m, criterion, heldout, is_real, instruments)
    scores = fit.temperature * np.asarray(stream, dtype=np.float64) + fit.shift
    stats = {"log_ratio": source, "calibration": fit.to_dict(), **stats}
    return Acceptance(calibration.accept_probs(scores, inputs.m), scores=scores, stats=stats)


def stream_normalised(inputs: EvaluationInputs, config: EvaluationConfig, source: str, stream: np.ndarray):
    """t = 1 and the stream shift; flat when the held-out rows' TF-IDF ratio sees no shift."""
    if not inputs.has("heldout_rows"):
        return calibrated(inputs, source, stream, "fixed", detector=None)
    detector = text_estimate(inputs, "tfidf", config).heldout
    return calibrated(inputs, source, stream, "fixed", instruments=detector, detector="tfidf")


def moments(inputs: EvaluationInputs, config: EvaluationConfig, source: str, heldout, stream, lm_source: bool):
    """Label-free moments with `other_views` as instruments."""
    views = other_views(inputs, config, lm_source)
    instruments = np.column_stack(list(views.values()))
    return calibrated(inputs, source, stream, "moments", heldout, instruments, instruments_used=list(views))


def label_moments(
    inputs: EvaluationInputs, config: EvaluationConfig, source: str, heldout, stream, **stats: Any
) -> Acceptance:
    """Label-aware moments: the instruments are the held-out rows' general_train labels.

    When those labels show no shift at all (the chi-square test: a baseline split), the
    source's tilt would only select its noise, and the filter is the label-posterior plug-in
    instead (t = 1, the stream shift): the one estimate that still moves the stream's label
    mix toward real_train's, where a flat filter would keep general_test's.
    """
    acceptance = calibrated(inputs, source, stream, "moments", heldout, label_instruments(inputs), **stats)
    fit = acceptance.stats["calibration"]
    if not fit["shift_statistic"] <= fit["shift_threshold"] or len(np.unique(inputs.general_train_codes)) < 2:
        return acceptance
    plug_in = label_posterior_estimate(inputs, config)
    return calibrated(
        inputs,
        "label_posterior",
        plug_in.log_ratio,
        "fixed",
        estimator=plug_in.params,
        no_shift_in={"log_ratio": source, "calibration": fit, **stats},
    )


# ---- the language models' score, calibrated ---------------------------------------------------


@register("clipped_stream", kind="calibrated", label="clipped, stream", in_table="measured", enabled=_candidates)
def clipped_stream(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    return stream_normalised(inputs, config, "clipped", inputs.scores("clipped", config.top_p)[0])


@register("sum_stream", kind="calibrated", label="sum, stream", enabled=_candidates)
def sum_stream(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    return stream_normalised(inputs, config, "sum", inputs.scores("sum", config.top_p)[0])


@register(
    "sum_mom",
    kind="calibrated",
    label="sum, moments",
    needs=("heldout", "membership", "heldout_rows"),
    enabled=_candidates,
)
def sum_mom(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    stream, heldout = inputs.scores("sum", config.top_p)
    return moments(inputs, config, "sum", heldout, stream, lm_source=True)


@register(
    "sum_labmom", kind="calibrated", label="sum, label moments", needs=("heldout", "membership"), enabled=_candidates
)
def sum_labmom(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    stream, heldout = inputs.scores("sum", config.top_p)
    return label_moments(inputs, config, "sum", heldout, stream)


@register("control_sum", kind="calibrated", label="control sum", needs=("control",), enabled=_candidates)
def control_sum(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    """log p_real - log p_control as it is: t = 1, no shift."""
    stream = control_scores(inputs)[0]
    stats = {"log_ratio": "control_sum", "calibration": {"temperature": 1.0, "shift": 0.0, "m": inputs.m}}
    return Acceptance(calibration.accept_probs(stream, inputs.m), scores=stream, stats=stats)


@register("control_sum_stream", kind="calibrated", label="control sum, stream", needs=("control",), enabled=_candidates)
def control_sum_stream(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    return stream_normalised(inputs, config, "control_sum", control_scores(inputs)[0])


@register(
    "control_sum_labmom",
    kind="calibrated",
    label="control sum, label moments",
    needs=("control", "heldout", "membership"),
    enabled=_candidates,
)
def control_sum_labmom(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    stream, heldout = control_scores(inputs)
    return label_moments(inputs, config, "control_sum", heldout, stream)


# ---- text estimators, calibrated ----------------------------------------------------------------


@register("tfidf_mom", kind="calibrated", label="TF-IDF, moments", needs=("heldout_rows",), enabled=_candidates)
def tfidf_mom(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    tfidf = text_estimate(inputs, "tfidf", config)
    acceptance = moments(inputs, config, "tfidf", tfidf.heldout, tfidf.stream, lm_source=False)
    acceptance.stats["estimator"] = tfidf.params
    return acceptance


def text_labmom(source: str, inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    """A text estimator's log-ratio, its temperature from held-out label moments, the stream shift."""
    estimate = text_estimate(inputs, source, config)
    return label_moments(inputs, config, source, estimate.heldout, estimate.stream, estimator=estimate.params)


# One filter per text estimator; TF-IDF (the default) also gets its column in the results table.
for _source, _label, _options in (
    ("tfidf", "TF-IDF, label moments", {"needs": ("heldout_rows",), "in_table": "measured"}),
    ("ngram", "n-gram, label moments", {"needs": ("heldout_rows",)}),
    ("embedding", "embedding, label moments", {"needs": ("heldout_rows", "embedding")}),
):
    register(f"{_source}_labmom", kind="calibrated", label=_label, enabled=_candidates, **_options)(
        partial(text_labmom, _source)
    )


@register(
    "stack_labmom",
    kind="calibrated",
    label="stacked, label moments",
    needs=("heldout", "membership", "heldout_rows"),
    in_table="measured",
    enabled=_candidates,
)
def stack_labmom(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    """Logistic regression of held-out membership on the LM ratio's sum, mean and token count
    and the TF-IDF log-ratio, then the label-moments temperature and the stream shift."""
    tfidf = text_estimate(inputs, "tfidf", config)
    heldout_lm = ratio_calibration.lm_ratio_features(inputs.heldout_diffs)
    stream_lm = ratio_calibration.lm_ratio_features(inputs.diffs)
    heldout = np.column_stack([*(heldout_lm[name] for name in STACK_FEATURES[:3]), tfidf.heldout])
    stream = np.column_stack([*(stream_lm[name] for name in STACK_FEATURES[:3]), tfidf.stream])
    heldout_log_ratio, stream_log_ratio, stacked = fit_stacked_ratio(
        heldout, stream, inputs.heldout_is_real, config.seed
    )
    return label_moments(
        inputs, config, "stack", heldout_log_ratio, stream_log_ratio, stacked=stacked.to_dict(), estimator=tfidf.params
    )


def fit_stacked_ratio(heldout: np.ndarray, stream: np.ndarray, is_real: np.ndarray, seed: int):
    """The stacked log-ratio of the held-out rows, cross-fitted (each row predicted by a fit
    without it), and of the stream, from a fit on every held-out row; and that fit."""
    from sklearn.model_selection import StratifiedKFold

    names = list(STACK_FEATURES)
    calibrator = ratio_calibration.fit_stacked(heldout, is_real, names)
    folds = min(_STACK_FOLDS, int(is_real.sum()), int((~is_real).sum()))
    if folds < 2:  # too few members to cross-fit: the in-sample fit
        return (
            ratio_calibration.stacked_log_ratio(calibrator, heldout),
            ratio_calibration.stacked_log_ratio(calibrator, stream),
            calibrator,
        )
    crossfit = np.zeros(len(heldout))
    for fit_rows, predict_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(heldout, is_real):
        fold = ratio_calibration.fit_stacked(heldout[fit_rows], is_real[fit_rows], names)
        crossfit[predict_rows] = ratio_calibration.stacked_log_ratio(fold, heldout[predict_rows])
    return crossfit, ratio_calibration.stacked_log_ratio(calibrator, stream), calibrator


# ---- reference ----------------------------------------------------------------------------------


@register("label_posterior", kind="reference", label="label-posterior plug-in", enabled=_candidates)
def label_posterior(inputs: EvaluationInputs, config: EvaluationConfig) -> Acceptance:
    """r(x) = sum_y P(y | x) q(y) / p(y), P(y | x) fitted on general_train's texts and labels."""
    estimate = label_posterior_estimate(inputs, config)
    return Acceptance(estimate.accept(), scores=estimate.log_ratio, stats={"estimator": estimate.params})


def label_posterior_estimate(inputs: EvaluationInputs, config: EvaluationConfig) -> Any:
    """The label-posterior plug-in of the evaluated texts (ratio_estimators.fit_label_posterior), fitted once."""
    if "estimate:label_posterior" not in inputs.cache:
        names = np.asarray(inputs.labels, dtype=object)
        inputs.cache["estimate:label_posterior"] = ratio_estimators.fit_label_posterior(
            inputs.general_train_texts,
            names[inputs.general_train_codes],
            names[inputs.real_train_codes],
            inputs.test_texts,
            inputs.m,
            seed=config.seed,
        )
    return inputs.cache["estimate:label_posterior"]
