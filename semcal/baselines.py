"""Reference filters a user would try instead of two language models.

CLASSIFIER: a TF-IDF + logistic regression density-ratio estimator. Trained unweighted to
tell real_train texts (1) from the rest of general_train (0), its probability is

    P(real | x) = N_real p_real(x) / (N_real p_real(x) + N_rest p_rest(x))
                = N_real p_real(x) / (N_general p_general(x)) = p_real(x) / (M p_general(x)),

because real_train and the rest together are general_train. That is exactly the acceptance
probability of rejection sampling, so the classifier's P(real | x) is used as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classifier_accept_probs(
    general_train_texts: Sequence[str],
    real_train_texts: Sequence[str],
    real_general_rows: Sequence[int] | None,
    test_texts: Sequence[str],
    seed: int = 0,
) -> np.ndarray:
    """Acceptance probability of each test text under the classifier filter.

    `real_general_rows` are the general_train rows that real_train was drawn from (the
    `general_train_row` column distort writes); the negatives are the other general_train
    rows, and the acceptance is P(real | x). Without them (a real set that is not a marked
    subset) the negatives are all of general_train, so P(real | x) / P(general | x) =
    N_real p_real / (N_general p_general) = p_real / (M p_general), and the acceptance is
    min(1, that odds ratio).
    """
    general_train_texts = list(general_train_texts)
    if real_general_rows is not None:
        in_real = np.zeros(len(general_train_texts), dtype=bool)
        in_real[np.asarray(real_general_rows, dtype=np.int64)] = True
        negatives = [text for text, real in zip(general_train_texts, in_real, strict=True) if not real]
    else:
        negatives = general_train_texts
    vectorizer, model = fit_classifier(list(real_train_texts), negatives, seed)
    p_real = model.predict_proba(vectorizer.transform(list(test_texts)))[:, 1]
    if real_general_rows is not None:
        return p_real
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, p_real / (1.0 - p_real))


def tfidf_vectorizer(**options: Any) -> Any:
    """The classifier's TF-IDF features (options: e.g. a saved `vocabulary`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, **options)


def fit_classifier(positives: Sequence[str], negatives: Sequence[str], seed: int = 0) -> tuple[Any, Any]:
    """The fitted TF-IDF vectorizer and logistic regression telling `positives` (1) from `negatives` (0)."""
    from sklearn.linear_model import LogisticRegression

    positives, negatives = list(positives), list(negatives)
    if not negatives or not positives:
        raise ValueError(
            f"the classifier needs texts of both classes (real {len(positives)}, rest of general {len(negatives)})"
        )
    targets = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    vectorizer = tfidf_vectorizer()
    features = vectorizer.fit_transform(positives + negatives)
    # Unweighted on purpose: the class prior N_real / N_rest is what makes P(real|x) the ratio.
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    model.fit(features, targets)
    return vectorizer, model
