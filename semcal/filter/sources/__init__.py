"""The sources of a filter: estimates of log r(x) = log p_real(x) / p_general(x).

A source is fitted on the training rows of a `FitData` (semcal.filter.fit_data), computes the
log-ratio of any items, names the tokens or n-grams behind each score, and saves itself
into a filter folder (plain JSON and safetensors; never pickle) and loads back from it:

    class MySource(Source):
        name = "mine"
        needs = ("heldout_rows",)          # FitData.has: what it cannot fit without
        def fit(self, data) -> np.ndarray: ...      # returns the held-out rows' log-ratio
        def log_ratio(self, items) -> np.ndarray: ...
        def contributions(self, items, count) -> list[tuple[str, str]]: ...
        def save(self, folder) -> dict: ...         # its filter.json entry; arrays into folder
        @classmethod
        def load(cls, folder, saved) -> MySource: ...

and one line in SOURCES below (the module that defines it: text, labels or language_models). A classifier of real vs general rows gives the ratio
from its P(real | x) and the training rows' real share `prior`: r = P / prior when the real
rows are a marked subset of the general ones (members vs all), r = odds * (1 - prior) /
prior when they are two corpora (`form`, semcal.filter.fit_data).

Sources: `tfidf` (TF-IDF + logistic regression), `ngram` (DSIR-style hashed n-gram
ratio), `embedding` (logistic regression on sentence embeddings), `label_posterior`
(sum_y P(y | x) q(y) / p(y), needs labels), `clipped` and `sum` (the two language models'
per-token differences, the paper's clipped score or the plain sum), `control_sum` (log
p_real - log p_control, a matched control model) and `stack` (logistic regression of
held-out membership on the LM ratio's sum, mean and length and the TF-IDF log-ratio).
"""


from __future__ import annotations

import numpy as np

from semcal.filter.fit_data import FitData
from semcal.filter.sources.base import (
    OTHER_LABELS,
    STACK_FEATURES,
    Source,
    fit_cached,
    label_folds,
    pushing,
    ratio_from_probability,
    tfidf_vectorizer,
)
from semcal.filter.sources.labels import JointSource, LabelPosteriorSource
from semcal.filter.sources.language_models import ClippedSource, ControlSource, LanguageModelSource, StackSource
from semcal.filter.sources.saved import read_arrays, read_vocabulary, saved_number
from semcal.filter.sources.text import EmbeddingSource, NgramSource, TfidfSource

__all__ = [
    "OTHER_LABELS",
    "SOURCES",
    "STACK_FEATURES",
    "ClippedSource",
    "ControlSource",
    "EmbeddingSource",
    "JointSource",
    "LabelPosteriorSource",
    "LanguageModelSource",
    "NgramSource",
    "Source",
    "StackSource",
    "TfidfSource",
    "fit_source",
    "fitted",
    "label_folds",
    "pushing",
    "ratio_from_probability",
    "read_arrays",
    "read_vocabulary",
    "saved_number",
    "tfidf_vectorizer",
]

# ---- the registry ----------------------------------------------------------------------------------

SOURCES: dict[str, type[Source]] = {
    source.name: source
    for source in (
        TfidfSource,
        NgramSource,
        EmbeddingSource,
        LabelPosteriorSource,
        JointSource,
        ClippedSource,
        LanguageModelSource,
        ControlSource,
        StackSource,
    )
}


def fitted(data: FitData, name: str) -> Source:
    """The source `name` fitted on `data`, once per FitData (filters sharing a source share the fit)."""
    return fit_cached(data, SOURCES[name])[0]


def fit_source(data: FitData, name: str) -> tuple[Source, np.ndarray | None]:
    """The fitted source and its log-ratio of the held-out rows, cached in data.cache."""
    return fit_cached(data, SOURCES[name])
