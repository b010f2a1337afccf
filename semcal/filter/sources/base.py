"""The base class of a source and the pieces the sources share (the ratio from a classifier,
the folds, the TF-IDF vectorizer, explanations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from semcal.filter.fit_data import FitData, Items

MIN_PROBABILITY = 1e-12
STACK_FOLDS = 5  # cross-fitting folds of the stacked source on the held-out rows
OTHER_LABELS = "(other labels)"  # the posterior column of the labels past the joint source's max_labels
STACK_FEATURES = ("lm_sum", "lm_mean", "n_tokens", "tfidf")



class Source:
    """Base class: see the module docstring."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # what tables call it
    needs: ClassVar[tuple[str, ...]] = ()
    language_models: ClassVar[bool] = False  # its scores come from the language models' score files

    def fit(self, data: FitData) -> np.ndarray:
        raise NotImplementedError

    def log_ratio(self, items: Items) -> np.ndarray:
        raise NotImplementedError

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        """Per item: the tokens or n-grams that pushed its score up and down most ("'dog' +1.230; ...")."""
        return [("", "")] * len(items)

    def save(self, folder: Path) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> Source:
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        """Plain numbers for results.json."""
        return {}


# ---- pieces shared by the sources ---------------------------------------------------------------


def ratio_from_probability(p_real: np.ndarray, prior: float, form: str) -> np.ndarray:
    """log r(x) from a classifier's P(real | x) (see the module docstring)."""
    p_real = np.clip(np.asarray(p_real, dtype=np.float64), MIN_PROBABILITY, 1.0 - MIN_PROBABILITY)
    if form == "subset":
        return np.log(p_real) - np.log(prior)
    return np.log(p_real) - np.log1p(-p_real) + np.log((1.0 - prior) / prior)


def pushing(pieces: list[str], weights: np.ndarray, count: int) -> tuple[str, str]:
    """The pieces whose weights pushed most up and most down, e.g. ("'dog' +1.230", "'rain' -0.500")."""
    weights = np.asarray(weights, dtype=np.float64)

    def side(signed: np.ndarray) -> str:
        order = np.argsort(-signed, kind="stable")[:count]
        return "; ".join(f"{pieces[i]!r} {weights[i]:+.3f}" for i in order if signed[i] > 0)

    return side(weights), side(-weights)


def label_folds(data: FitData, folds: int) -> np.ndarray:
    """A cross-fitting fold per row, stratified by label and membership (seeded): each label's rows
    spread over the folds, so a fit without one fold still sees every label with 2 rows or more."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    keys = data.label_codes * 2 + data.is_real
    folds = max(2, min(folds, int(np.bincount(keys).max())))  # StratifiedKFold's limit
    fold = np.empty(len(keys), dtype=np.int64)
    with warnings.catch_warnings():  # a label with fewer rows than folds: spread as far as it goes
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = StratifiedKFold(folds, shuffle=True, random_state=data.seed).split(keys, keys)
        for k, (_, rows) in enumerate(splits):
            fold[rows] = k
    return fold


def tfidf_vectorizer(**options: Any) -> Any:
    """TF-IDF of unigrams and bigrams (options: e.g. a saved `vocabulary`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, **options)


def explain_features(features: Any, vectorizer: Any, count: int, weights_of: Any) -> list[tuple[str, str]]:
    """Per row of a sparse feature matrix: its features weighted by value times weights_of(rows, columns),
    for the whole batch at once (semcal.filter.contributions)."""
    from semcal.filter.contributions import explain_rows

    return explain_rows(features, vectorizer, count, weights_of)




def fit_cached(data: FitData, source_class: type[Source]) -> tuple[Source, np.ndarray | None]:
    """The source fitted on `data` and its log-ratio of the held-out rows, once per FitData
    (data.cache): filters, calibrations and other sources sharing a source share its fit."""
    key = f"source:{source_class.name}"
    if key not in data.cache:
        source = source_class()
        data.cache[key] = (source, source.fit(data))
    return data.cache[key]
