"""The n-grams that pushed each text's score up and down most, for a whole batch at once.

A text's contributions are the entries of its sparse feature row times the weights of those
features, so its strongest n-grams are the largest entries of that product: one sort per batch
(rows padded to the batch's longest), not a Python loop per text. The result is the same as
`semcal.filter.sources.pushing` per row: the `count` largest positive (and most negative) entries,
ties in column order, each written `'dog' +1.230`, joined by "; ".
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

_MAX_PADDED = 256  # rows with more features than this (a very long text) are sorted one by one
_reprs: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()


def feature_reprs(vectorizer: Any) -> np.ndarray:
    """repr() of each feature name of a fitted vectorizer, by column; built once per vectorizer."""
    cached = _reprs.get(vectorizer)
    if cached is None:
        names = vectorizer.get_feature_names_out()
        cached = np.array([repr(str(name)) for name in names], dtype=object)
        _reprs[vectorizer] = cached
    return cached


def explain_rows(features: Any, vectorizer: Any, count: int, weights_of: Any) -> list[tuple[str, str]]:
    """(up, down) per row of a CSR feature matrix (sorted indices): its entries times
    `weights_of(rows, columns)` (arrays, one weight per stored entry)."""
    features = features.tocsr()
    features.sort_indices()  # ties go by column order, as `pushing` has them
    rows = np.repeat(np.arange(features.shape[0]), np.diff(features.indptr))
    weights = np.asarray(weights_of(rows, features.indices), dtype=np.float64)
    up, down = top_entries(features.indptr, features.indices, features.data * weights, feature_reprs(vectorizer), count)
    return list(zip(up, down, strict=True))


def top_entries(
    indptr: np.ndarray, columns: np.ndarray, values: np.ndarray, reprs: np.ndarray, count: int
) -> tuple[list[str], list[str]]:
    """The `count` largest positive and most negative entries of each row, formatted and joined."""
    n_rows = len(indptr) - 1
    up, down = np.full(n_rows, "", dtype=object), np.full(n_rows, "", dtype=object)
    if count <= 0 or n_rows == 0 or len(values) == 0:
        return up.tolist(), down.tolist()
    lengths = np.diff(indptr)
    short = lengths <= _MAX_PADDED
    for row in np.flatnonzero(~short):  # rare: sort a long row alone
        span = slice(indptr[row], indptr[row + 1])
        up[row], down[row] = _row(columns[span], values[span], reprs, count)
    entry_rows = np.repeat(np.arange(n_rows), lengths)
    keep = short[entry_rows]
    local = np.cumsum(short) - 1  # each short row's place among the short rows
    rows_of, positions = local[entry_rows[keep]], (np.arange(len(values)) - indptr[entry_rows])[keep]
    width = max(int(lengths[short].max(initial=0)), 1)
    padded = np.zeros((int(short.sum()), width))
    padded_columns = np.zeros((int(short.sum()), width), dtype=np.int64)
    padded[rows_of, positions], padded_columns[rows_of, positions] = values[keep], columns[keep]
    for side, signed in ((up, padded), (down, -padded)):
        order = np.argsort(-signed, axis=1, kind="stable")[:, :count]  # stable: ties by column order
        side[short] = _joined(
            np.take_along_axis(padded_columns, order, 1),
            np.take_along_axis(padded, order, 1),
            np.take_along_axis(signed, order, 1) > 0,
            reprs,
        )
    return up.tolist(), down.tolist()


def _joined(columns: np.ndarray, values: np.ndarray, valid: np.ndarray, reprs: np.ndarray) -> np.ndarray:
    """Per row, its valid entries as "'name' +1.230", joined by "; " (valid entries come first)."""
    picked = np.flatnonzero(valid.ravel())
    texts = np.full(valid.size, "", dtype=object)
    names, numbers = reprs[columns.ravel()[picked]], values.ravel()[picked]
    texts[picked] = [f"{name} {number:+.3f}" for name, number in zip(names, numbers, strict=True)]
    texts = texts.reshape(valid.shape)
    joined = texts[:, 0].copy()
    for k in range(1, valid.shape[1]):
        more = valid[:, k]
        joined[more] = joined[more] + "; " + texts[more, k]
    return joined


def _row(columns: np.ndarray, values: np.ndarray, reprs: np.ndarray, count: int) -> tuple[str, str]:
    def side(signed: np.ndarray) -> str:
        order = np.argsort(-signed, kind="stable")[:count]
        return "; ".join(f"{reprs[columns[i]]} {values[i]:+.3f}" for i in order if signed[i] > 0)

    return side(values), side(-values)


def log_ratio_and_explanations(source: Any, items: Any, count: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """A source's log-ratio and (count > 0) its explanations, with one TF-IDF transform serving both
    where the source's n-grams explain it (tfidf, and joint through its tfidf view); otherwise the
    source's own log_ratio and contributions. The tests check both paths give the same numbers."""
    if not count:
        return source.log_ratio(items), [("", "")] * len(items)
    tfidf = {"tfidf": source, "joint": getattr(source, "tfidf", None)}.get(source.name)
    if tfidf is None:
        return source.log_ratio(items), source.contributions(items, count)
    features = tfidf._features(items)
    log_ratio = tfidf._log_ratio_of(features)
    if source is not tfidf:  # joint: the TF-IDF log-ratio beside the label posterior's log-probabilities
        views = np.column_stack([log_ratio, source.posterior.log_posterior(items)])
        log_ratio = ((views - source.center) / source.scale) @ source.beta
    return log_ratio, explain_rows(features, tfidf.vectorizer, count, lambda rows, columns: tfidf.coef[columns])
