"""The text sources that tell trusted from general texts: TF-IDF + logistic regression, the
hashed n-gram ratio (DSIR-style) and sentence embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semcal.core.errors import UserError
from semcal.filter import text_features
from semcal.filter.fit_data import FitData, Items
from semcal.filter.sources.base import (
    MIN_PROBABILITY,
    Source,
    explain_features,
    pushing,
    ratio_from_probability,
    tfidf_vectorizer,
)
from semcal.filter.sources.saved import (
    model_path_entry,
    read_arrays,
    read_vocabulary,
    saved_form,
    saved_number,
    write_arrays,
)
from semcal.store import files


class TfidfSource(Source):
    """TF-IDF + logistic regression telling real rows from general rows."""

    name, label, needs = "tfidf", "TF-IDF", ("heldout_rows",)
    arrays_name, vocabulary_name = "tfidf.safetensors", "tfidf_vocabulary.json"

    def fit(self, data: FitData) -> np.ndarray:
        rows = data.train_rows
        self.vectorizer = tfidf_vectorizer()
        self._fit_model(self.vectorizer.fit_transform(data.texts_of(rows)), data.is_real[rows], data)
        return self.log_ratio(data.heldout_items)

    def _fit_model(self, features: Any, is_real: np.ndarray, data: FitData) -> None:
        from sklearn.linear_model import LogisticRegression

        # Unweighted on purpose: the class prior is what turns P(real | x) into the ratio.
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=data.seed).fit(features, is_real)
        self.coef, self.intercept = model.coef_[0].astype(np.float64), float(model.intercept_[0])
        self.prior, self.form, self.n_train = float(is_real.mean()), data.form, len(is_real)

    @classmethod
    def cross_fit(cls, data: FitData, fold: np.ndarray) -> tuple[TfidfSource, np.ndarray]:
        """Fitted fold by fold on every row: each row's log-ratio from the fit that did not see it,
        and one source, the folds' mean coefficients, for new items (one vectorizer for all)."""
        source, out_of_fold, fits = cls(), np.empty(len(data.texts)), []
        source.vectorizer = tfidf_vectorizer()
        features = source.vectorizer.fit_transform(data.texts).tocsr()
        for k in np.unique(fold):
            fit = cls()
            fit._fit_model(features[fold != k], data.is_real[fold != k], data)
            out_of_fold[fold == k] = fit._log_ratio_of(features[fold == k])
            fits.append(fit)
        source.coef = np.mean([fit.coef for fit in fits], axis=0)
        source.intercept = float(np.mean([fit.intercept for fit in fits]))
        source.prior, source.form, source.n_train = float(data.is_real.mean()), data.form, len(data.texts)
        return source, out_of_fold

    def _features(self, items: Items) -> Any:
        return self.vectorizer.transform(items.texts).tocsr()

    def _log_ratio_of(self, features: Any) -> np.ndarray:
        from scipy.special import expit

        return ratio_from_probability(expit(features @ self.coef + self.intercept), self.prior, self.form)

    def log_ratio(self, items: Items) -> np.ndarray:
        return self._log_ratio_of(self._features(items))

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        return explain_features(self._features(items), self.vectorizer, count, lambda rows, columns: self.coef[columns])

    def params(self) -> dict[str, float]:
        return {"prior": self.prior, "n_train": float(self.n_train)}

    def save(self, folder: Path) -> dict[str, Any]:
        vocabulary = {ngram: int(column) for ngram, column in self.vectorizer.vocabulary_.items()}
        files.write_json(folder / self.vocabulary_name, vocabulary)
        arrays = {"idf": self.vectorizer.idf_, "coef": self.coef, "intercept": np.array([self.intercept])}
        file_name = write_arrays(folder, self.arrays_name, {k: np.asarray(v, np.float64) for k, v in arrays.items()})
        return {"arrays": file_name, "vocabulary": self.vocabulary_name, "prior": self.prior, "form": self.form}

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> TfidfSource:
        source = cls()
        arrays = read_arrays(
            folder, saved.get("arrays", cls.arrays_name), {"idf": (None,), "coef": (None,), "intercept": (1,)}
        )
        width = len(arrays["idf"])
        if len(arrays["coef"]) != width:
            raise UserError(
                f"{folder}: the TF-IDF coefficients ({len(arrays['coef'])}) and idf ({width}) differ in length."
            )
        source.vectorizer = tfidf_vectorizer(
            vocabulary=read_vocabulary(folder, saved.get("vocabulary", cls.vocabulary_name), width)
        )
        source.vectorizer.idf_ = arrays["idf"]
        source.coef, source.intercept = arrays["coef"], float(arrays["intercept"][0])
        source.prior = saved_number(saved, "prior", f"{folder} source", low=MIN_PROBABILITY)
        if source.prior >= 1.0:
            raise UserError(f"{folder} source: 'prior' must be below 1 (got {source.prior}): the filter is damaged.")
        source.form, source.n_train = saved_form(saved, folder), 0
        return source


class NgramSource(Source):
    """DSIR-style ratio: add-one frequencies of hashed unigrams and bigrams of the real rows and of
    the general rows, log r(x) = sum over x's n-grams of their bucket log-ratio, centred to average
    0 over the general training rows. Cheap and overconfident (naive Bayes): a calibration fixes its scale."""

    name, label, needs = "ngram", "n-gram", ("heldout_rows",)
    arrays_name = "ngram.safetensors"
    n_buckets, smoothing = 2**16, 1.0

    def fit(self, data: FitData) -> np.ndarray:
        rows = data.train_rows
        self.vectorizer = text_features.hashing_vectorizer(self.n_buckets)
        counts = self.vectorizer.transform(data.texts_of(rows))
        real_counts = np.asarray(counts[data.is_real[rows]].sum(axis=0)).ravel() + self.smoothing
        in_general = data.in_general[rows]
        general_counts = np.asarray(counts[in_general].sum(axis=0)).ravel() + self.smoothing
        self.bucket_log_ratio = np.log(real_counts / real_counts.sum()) - np.log(general_counts / general_counts.sum())
        self.offset = float(np.mean(counts[in_general] @ self.bucket_log_ratio))
        return self.log_ratio(data.heldout_items)

    def log_ratio(self, items: Items) -> np.ndarray:
        return np.asarray(
            self.vectorizer.transform(items.texts) @ self.bucket_log_ratio - self.offset, dtype=np.float64
        )

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        from sklearn.feature_extraction import FeatureHasher

        # The hasher HashingVectorizer uses: one n-gram per row gives that n-gram's bucket.
        hasher = FeatureHasher(self.vectorizer.n_features, input_type="string", alternate_sign=False)
        analyse, explained = self.vectorizer.build_analyzer(), []
        for text in items.texts:
            ngrams, counts = np.unique(analyse(text), return_counts=True)
            if not len(ngrams):
                explained.append(("", ""))
                continue
            buckets = hasher.transform([[str(ngram)] for ngram in ngrams]).tocsr().indices
            explained.append(pushing([str(n) for n in ngrams], counts * self.bucket_log_ratio[buckets], count))
        return explained

    def params(self) -> dict[str, float]:
        return {"n_buckets": float(self.n_buckets), "smoothing": self.smoothing, "offset": self.offset}

    def save(self, folder: Path) -> dict[str, Any]:
        file_name = write_arrays(folder, self.arrays_name, {"bucket_log_ratio": self.bucket_log_ratio})
        return {"arrays": file_name, "offset": self.offset}

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> NgramSource:
        source = cls()
        arrays = read_arrays(folder, saved.get("arrays", cls.arrays_name), {"bucket_log_ratio": (None,)})
        source.bucket_log_ratio = arrays["bucket_log_ratio"]
        source.vectorizer = text_features.hashing_vectorizer(len(source.bucket_log_ratio))
        source.offset = saved_number(saved, "offset", f"{folder} source")
        return source


class EmbeddingSource(Source):
    """Logistic regression of real vs general on standardised sentence embeddings (a sentence-encoder folder)."""

    name, label, needs = "embedding", "embedding", ("heldout_rows", "embedding")
    arrays_name = "embedding.safetensors"

    def fit(self, data: FitData) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self.encoder_path = data.embedding_model
        self.encoder = text_features.load_encoder(self.encoder_path)
        rows = data.train_rows
        embedded = self._embed(data.texts_of(rows))
        scaler = StandardScaler().fit(embedded)
        model = LogisticRegression(max_iter=2000, random_state=data.seed).fit(
            scaler.transform(embedded), data.is_real[rows]
        )
        # In their fitted dtypes: applying them later does the same float32 arithmetic.
        self.mean, self.scale = scaler.mean_, scaler.scale_
        self.coef, self.intercept = model.coef_[0], model.intercept_
        self.prior, self.form = data.prior, data.form
        return self.log_ratio(data.heldout_items)

    def params(self) -> dict[str, float]:
        return {"prior": self.prior, "dimensions": float(len(self.mean))}

    def _embed(self, texts: list[str]) -> np.ndarray:
        return text_features.embed_texts(texts, self.encoder_path, encoder=self.encoder)

    def log_ratio(self, items: Items) -> np.ndarray:
        from scipy.special import expit

        embedded = self._embed(items.texts)
        mean, scale = (np.asarray(a).astype(embedded.dtype) for a in (self.mean, self.scale))
        logits = ((embedded - mean) / scale) @ self.coef + self.intercept[0]
        return ratio_from_probability(expit(logits), self.prior, self.form)

    def save(self, folder: Path) -> dict[str, Any]:
        from semcal.lm.models import tokenizer_fingerprint, weights_fingerprint

        arrays = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept}
        encoder = {
            **model_path_entry(self.encoder_path, folder),
            "weights_fingerprint": weights_fingerprint(self.encoder_path),
            "tokenizer_fingerprint": tokenizer_fingerprint(self.encoder[0]),
        }
        return {
            "arrays": write_arrays(folder, self.arrays_name, arrays),
            "encoder": encoder,
            "prior": self.prior,
            "form": self.form,
        }

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> EmbeddingSource:
        from semcal.lm.models import check_model_record

        source = cls()
        encoder = saved.get("encoder") or {}
        source.encoder_path = check_model_record("sentence-encoder", encoder, folder)
        source.encoder = text_features.load_encoder(source.encoder_path)
        check_model_record("sentence-encoder", encoder, folder, tokenizer=source.encoder[0])
        shapes = {"mean": (None,), "scale": (None,), "coef": (None,), "intercept": (1,)}
        arrays = read_arrays(folder, saved.get("arrays", cls.arrays_name), shapes)
        source.mean, source.scale, source.coef, source.intercept = (arrays[k] for k in shapes)
        source.prior, source.form = (
            saved_number(saved, "prior", f"{folder} source", MIN_PROBABILITY),
            saved_form(saved, folder),
        )
        return source


