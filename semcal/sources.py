"""The sources of a filter: estimates of log r(x) = log p_real(x) / p_general(x).

A source is fitted on the training rows of a `FitData` (semcal.fit_data), computes the
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

and one line in SOURCES at the bottom. A classifier of real vs general rows gives the ratio
from its P(real | x) and the training rows' real share `prior`: r = P / prior when the real
rows are a marked subset of the general ones (members vs all), r = odds * (1 - prior) /
prior when they are two corpora (`form`, semcal.fit_data).

Sources: `tfidf` (TF-IDF + logistic regression), `ngram` (DSIR-style hashed n-gram
ratio), `embedding` (logistic regression on sentence embeddings), `label_posterior`
(sum_y P(y | x) q(y) / p(y), needs labels), `clipped` and `sum` (the two language models'
per-token differences, the paper's clipped score or the plain sum), `control_sum` (log
p_real - log p_control, a matched control model) and `stack` (logistic regression of
held-out membership on the LM ratio's sum, mean and length and the TF-IDF log-ratio).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from semcal import calibration, files, ratio_calibration, text_features
from semcal.config import UserError
from semcal.fit_data import FitData, Items

# A classifier's P(real | x) is kept within [floor, 1 - floor] before its log is taken.
_MIN_PROBABILITY = 1e-12
_STACK_FOLDS = 5  # cross-fitting folds of the stacked source on the held-out rows
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
    p_real = np.clip(np.asarray(p_real, dtype=np.float64), _MIN_PROBABILITY, 1.0 - _MIN_PROBABILITY)
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


def _explain_rows(features: Any, vectorizer: Any, count: int, weights_of: Any) -> list[tuple[str, str]]:
    """Per row of a sparse feature matrix: its features weighted by value times weights_of(rows, columns),
    for the whole batch at once (semcal.contributions)."""
    from semcal.contributions import explain_rows

    return explain_rows(features, vectorizer, count, weights_of)


def _write_arrays(folder: Path, file_name: str, arrays: dict[str, np.ndarray]) -> str:
    files.write_safetensors(folder / file_name, {key: np.asarray(value) for key, value in arrays.items()})
    return file_name


def read_arrays(folder: Path, file_name: str, shapes: dict[str, tuple[int | None, ...]]) -> dict[str, np.ndarray]:
    """A source's arrays, checked: every named array there, of the given rank and sizes (None:
    any), finite. Anything else is refused naming the file and the array."""
    path = folder / str(file_name)
    try:
        arrays = files.read_safetensors(path)
    except FileNotFoundError:
        raise UserError(f"the filter in {folder} lacks {file_name}: copy the whole filter folder again.") from None
    except Exception as err:  # safetensors raises its own errors for truncated or foreign files
        raise UserError(f"{path} is not a readable safetensors file ({err}): copy the filter folder again.") from None
    for key, shape in shapes.items():
        array = arrays.get(key)
        if array is None:
            raise UserError(f"{path} lacks the array {key!r}: the filter folder is damaged; copy it again.")
        if array.ndim != len(shape) or any(
            want not in (None, got) for want, got in zip(shape, array.shape, strict=True)
        ):
            raise UserError(f"{path}: array {key!r} has shape {array.shape}, expected {shape}: the filter is damaged.")
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise UserError(f"{path}: array {key!r} holds non-finite or non-float values: the filter is damaged.")
    return arrays


def read_vocabulary(folder: Path, file_name: str, n_columns: int) -> dict[str, int]:
    """An n-gram -> column map, checked against the arrays' width."""
    path = folder / str(file_name)
    if not path.is_file():
        raise UserError(f"the filter in {folder} lacks {file_name}: copy the whole filter folder again.")
    vocabulary = files.read_json(path)
    if not isinstance(vocabulary, dict) or not all(
        isinstance(column, int) and 0 <= column < n_columns for column in vocabulary.values()
    ):
        raise UserError(f"{path} is not a map of n-grams to columns 0..{n_columns - 1}: the filter is damaged.")
    if sorted(vocabulary.values()) != list(range(n_columns)):
        raise UserError(f"{path} does not name every one of the {n_columns} columns once: the filter is damaged.")
    return vocabulary


def saved_number(saved: dict[str, Any], key: str, where: str, low: float = -np.inf, what: str | None = None) -> float:
    """A number read from a filter folder's JSON: finite, at least `low`, else refused naming `where` and
    the field (`what`, default the key)."""
    value = saved.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < low:
        bound = f" >= {low}" if low > -np.inf else ""
        raise UserError(
            f"{where}: {what or repr(key)} must be a finite number{bound} (got {value!r}): the filter is damaged."
        )
    return float(value)


# ---- text sources ---------------------------------------------------------------------------------


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
        return _explain_rows(self._features(items), self.vectorizer, count, lambda rows, columns: self.coef[columns])

    def params(self) -> dict[str, float]:
        return {"prior": self.prior, "n_train": float(self.n_train)}

    def save(self, folder: Path) -> dict[str, Any]:
        vocabulary = {ngram: int(column) for ngram, column in self.vectorizer.vocabulary_.items()}
        files.write_json(folder / self.vocabulary_name, vocabulary)
        arrays = {"idf": self.vectorizer.idf_, "coef": self.coef, "intercept": np.array([self.intercept])}
        file_name = _write_arrays(folder, self.arrays_name, {k: np.asarray(v, np.float64) for k, v in arrays.items()})
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
        source.prior = saved_number(saved, "prior", f"{folder} source", low=_MIN_PROBABILITY)
        if source.prior >= 1.0:
            raise UserError(f"{folder} source: 'prior' must be below 1 (got {source.prior}): the filter is damaged.")
        source.form, source.n_train = _form(saved, folder), 0
        return source


def _form(saved: dict[str, Any], folder: Path) -> str:
    form = saved.get("form")
    if form not in ("subset", "pooled"):
        raise UserError(f"{folder} source: 'form' must be 'subset' or 'pooled' (got {form!r}): the filter is damaged.")
    return form


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
        file_name = _write_arrays(folder, self.arrays_name, {"bucket_log_ratio": self.bucket_log_ratio})
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
        from semcal.models import tokenizer_fingerprint, weights_fingerprint

        arrays = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept}
        encoder = {
            **_model_path(self.encoder_path, folder),
            "weights_fingerprint": weights_fingerprint(self.encoder_path),
            "tokenizer_fingerprint": tokenizer_fingerprint(self.encoder[0]),
        }
        return {
            "arrays": _write_arrays(folder, self.arrays_name, arrays),
            "encoder": encoder,
            "prior": self.prior,
            "form": self.form,
        }

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> EmbeddingSource:
        from semcal.models import check_model_record

        source = cls()
        encoder = saved.get("encoder") or {}
        source.encoder_path = check_model_record("sentence-encoder", encoder, folder)
        source.encoder = text_features.load_encoder(source.encoder_path)
        check_model_record("sentence-encoder", encoder, folder, tokenizer=source.encoder[0])
        shapes = {"mean": (None,), "scale": (None,), "coef": (None,), "intercept": (1,)}
        arrays = read_arrays(folder, saved.get("arrays", cls.arrays_name), shapes)
        source.mean, source.scale, source.coef, source.intercept = (arrays[k] for k in shapes)
        source.prior, source.form = (
            saved_number(saved, "prior", f"{folder} source", _MIN_PROBABILITY),
            _form(saved, folder),
        )
        return source


class LabelPosteriorSource(Source):
    """r(x) = sum_y P(y | x) q(y) / p(y): TF-IDF + multinomial logistic regression on the general
    rows' labels, q and p the real and general rows' label distributions. Needs labels."""

    name, label, needs = "label_posterior", "label-posterior plug-in", ("labels",)
    arrays_name, vocabulary_name = "label_posterior.safetensors", "label_vocabulary.json"
    _min_df_texts = 1000  # from this many texts on, n-grams seen once are left out (3x faster, no loss)

    def fit(self, data: FitData) -> np.ndarray:
        seen = ~data.heldout if data.sources_train_only else np.ones(len(data.texts), dtype=bool)
        general = np.flatnonzero(data.in_general & seen)
        self.vectorizer = self._vectorizer(len(general))
        names = np.asarray(data.labels, dtype=object)[data.label_codes].astype(str)
        features = self.vectorizer.fit_transform(data.texts_of(general))
        self._fit_model(features, names[general], names[data.is_real & seen], data.seed)
        return self.log_ratio(data.heldout_items)

    def _vectorizer(self, n_texts: int) -> Any:
        return tfidf_vectorizer(min_df=2 if n_texts >= self._min_df_texts else 1)

    def _fit_model(self, features: Any, train_labels: np.ndarray, real_labels: np.ndarray, seed: int) -> None:
        """P(y | x) on `features` (rows labelled `train_labels`); p on those rows, q on the real rows' labels."""
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(features, train_labels)
        self.classes = [str(label) for label in model.classes_]
        p = np.array([np.mean(train_labels == label) for label in self.classes])
        q = np.array([np.mean(real_labels == label) for label in self.classes])
        self.label_ratio, self.coef, self.intercept = q / p, model.coef_, model.intercept_

    @classmethod
    def cross_fit(
        cls, data: FitData, fold: np.ndarray, min_rows: int, max_labels: int
    ) -> tuple[LabelPosteriorSource, np.ndarray]:
        """Fitted fold by fold on the general rows: every row's log P(y | x) from the fit that did
        not see it, and one source, the folds' mean coefficients, for new items. Fold by label
        (`fold`) so every fit sees every label. Columns: the labels with at least `min_rows`
        general rows (a posterior of a handful of rows is noise), at most `max_labels` of them, the
        largest; the rest are one column, OTHER_LABELS, when it has `min_rows` rows itself."""
        names = np.array([str(label) for label in data.labels], dtype=object)[data.label_codes]  # room for OTHER
        general = data.in_general.copy()
        counts = np.bincount(data.label_codes[general], minlength=len(data.labels))
        min_rows = min(min_rows, int(np.sort(counts)[-2]))  # at least the two largest labels
        ranked = [code for code in np.argsort(-counts, kind="stable") if counts[code] >= min_rows]
        if len(ranked) > max_labels:
            others = ~np.isin(data.label_codes, ranked[: max_labels - 1])
            names[others] = OTHER_LABELS
            general &= ~others | (int((others & general).sum()) >= min_rows)
        else:
            general &= counts[data.label_codes] >= min_rows
        source, fits = cls(), []
        source.vectorizer = source._vectorizer(int(general.sum()))
        source.vectorizer.fit(data.texts_of(np.flatnonzero(general)))
        features = source.vectorizer.transform(data.texts).tocsr()
        for k in np.unique(fold):
            rows = np.flatnonzero(general & (fold != k))
            fit = cls()
            fit._fit_model(features[rows], names[rows], names[data.is_real], data.seed)
            fits.append(fit)
        if any(fit.classes != fits[0].classes for fit in fits):
            raise ValueError("cross_fit: the folds saw different labels; fold by label (semcal.sources.label_folds)")
        out_of_fold = np.empty((len(data.texts), len(fits[0].classes)))
        for k, fit in zip(np.unique(fold), fits, strict=True):
            out_of_fold[fold == k] = np.log(np.maximum(fit._posterior_of(features[fold == k])[0], _MIN_PROBABILITY))
        source.classes, source.label_ratio = fits[0].classes, np.mean([fit.label_ratio for fit in fits], axis=0)
        source.coef = np.mean([fit.coef for fit in fits], axis=0)
        source.intercept = np.mean([fit.intercept for fit in fits], axis=0)
        return source, out_of_fold

    def log_posterior(self, items: Items) -> np.ndarray:
        """log P(y | x) per item and label (columns: self.classes), floored."""
        return np.log(np.maximum(self._posterior(items)[1], _MIN_PROBABILITY))

    def _posterior(self, items: Items) -> tuple[Any, np.ndarray, np.ndarray]:
        features = self.vectorizer.transform(items.texts).tocsr()
        return (features, *self._posterior_of(features))

    def _posterior_of(self, features: Any) -> tuple[np.ndarray, np.ndarray]:
        """P(y | x) of the feature rows, and the coefficients per label (rows: self.classes)."""
        from scipy.special import expit, softmax

        logits = np.asarray(features @ self.coef.T) + self.intercept
        if self.coef.shape[0] == 1:  # two labels: scikit-learn's binary form, P(second label | x)
            second = expit(logits[:, 0])
            return np.column_stack([1 - second, second]), np.vstack([np.zeros_like(self.coef[0]), self.coef[0]])
        return softmax(logits, axis=1), self.coef

    def log_ratio(self, items: Items) -> np.ndarray:
        return np.log(np.maximum(self._posterior(items)[1] @ self.label_ratio, _MIN_PROBABILITY))

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        features, posterior, coef = self._posterior(items)
        ratio = np.maximum(posterior @ self.label_ratio, _MIN_PROBABILITY)
        # d log r / d (a label's logit): the labels an n-gram favours, weighted by how they move r.
        tilt = posterior * (self.label_ratio[None, :] / ratio[:, None] - 1.0)
        return _explain_rows(
            features, self.vectorizer, count, lambda rows, columns: np.einsum("ij,ji->i", tilt[rows], coef[:, columns])
        )

    def params(self) -> dict[str, float]:
        return {f"ratio[{label}]": float(value) for label, value in zip(self.classes, self.label_ratio, strict=True)}

    def save(self, folder: Path) -> dict[str, Any]:
        vocabulary = {ngram: int(column) for ngram, column in self.vectorizer.vocabulary_.items()}
        files.write_json(folder / self.vocabulary_name, vocabulary)
        arrays = {
            "idf": self.vectorizer.idf_,
            "coef": self.coef,
            "intercept": self.intercept,
            "label_ratio": self.label_ratio,
        }
        file_name = _write_arrays(folder, self.arrays_name, {k: np.asarray(v, np.float64) for k, v in arrays.items()})
        return {"arrays": file_name, "vocabulary": self.vocabulary_name, "labels": self.classes}

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> LabelPosteriorSource:
        source = cls()
        source.classes = saved.get("labels")
        if not isinstance(source.classes, list) or len(source.classes) < 2:
            raise UserError(f"{folder} source: 'labels' must list at least 2 labels: the filter is damaged.")
        k = len(source.classes)
        rows = 1 if k == 2 else k
        shapes = {"idf": (None,), "coef": (rows, None), "intercept": (rows,), "label_ratio": (k,)}
        arrays = read_arrays(folder, saved.get("arrays", cls.arrays_name), shapes)
        width = len(arrays["idf"])
        if arrays["coef"].shape[1] != width:
            raise UserError(
                f"{folder}: the label posterior's coefficients and idf differ in width: the filter is damaged."
            )
        source.vectorizer = tfidf_vectorizer(
            vocabulary=read_vocabulary(folder, saved.get("vocabulary", cls.vocabulary_name), width)
        )
        source.vectorizer.idf_ = arrays["idf"]
        source.coef, source.intercept, source.label_ratio = arrays["coef"], arrays["intercept"], arrays["label_ratio"]
        return source


class JointSource(Source):
    """The TF-IDF log-ratio and the label posterior's log-probabilities together:
    l(x) = beta . [l_tfidf(x), log P(y | x) for each label], beta chosen so the general rows,
    weighted by min(1, exp(l + c) / M) with c the stream shift, show the real rows' label
    distribution (KL(accepted || real), with a ridge on the posterior's weights chosen by
    2-fold cross-validation). Both views are cross-fitted (5 folds, by label and membership):
    beta is fitted on every row's out-of-fold features, five times the rows a held-out split
    gives, and new items are scored with the folds' mean coefficients. K + 1 numbers: a
    label-aware calibration of two views, one that knows membership and one that knows labels."""

    name, label, needs = "joint", "TF-IDF + label posterior", ("heldout_rows", "labels", "membership")
    ridges = (1e-3, 1e-2, 1e-1, 1.0)
    folds = 5  # cross-fitting folds; a label with fewer general rows gets no posterior column
    max_labels = 16  # posterior columns at most (the largest labels; the rest one column): beta's search stays fast
    _kl_floor = 1e-3  # added to each label share before the KL: labels with few rows stay finite

    def fit(self, data: FitData) -> np.ndarray:
        # With sources_train_only the held-out rows are scored like new items, by the folds' mean.
        fitted_on = data.training_part() if data.sources_train_only else data
        fold = label_folds(fitted_on, self.folds)
        self.tfidf, tfidf_out_of_fold = TfidfSource.cross_fit(fitted_on, fold)
        self.posterior, posterior_out_of_fold = LabelPosteriorSource.cross_fit(
            fitted_on, fold, self.folds, self.max_labels
        )
        self.posterior.arrays_name, self.posterior.vocabulary_name = (
            "joint_posterior.safetensors",
            "joint_vocabulary.json",
        )
        rows, stream = np.column_stack([tfidf_out_of_fold, posterior_out_of_fold]), self._features(data.stream)
        self.center, self.scale = stream.mean(axis=0), stream.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        rows, stream = (rows - self.center) / self.scale, (stream - self.center) / self.scale
        codes = fitted_on.label_codes
        real = calibration.label_distribution(codes[fitted_on.is_real], len(data.labels))
        problem = (stream, codes, fitted_on.in_general.astype(np.float64), real, data.m)
        self.ridge = self._choose_ridge(rows, fold % 2, *problem)
        self.beta = self._fit_beta(rows, *problem, self.ridge)
        return rows[data.heldout] @ self.beta if fitted_on is data else self.log_ratio(data.heldout_items)

    def _features(self, items: Items) -> np.ndarray:
        return np.column_stack([self.tfidf.log_ratio(items), self.posterior.log_posterior(items)])

    def _loss(self, beta, rows, stream, codes, weighted, target, m, ridge) -> float:
        from scipy.special import rel_entr

        shift = ratio_calibration.stream_shift(stream @ beta, m)
        accept = ratio_calibration.calibrated_accept(rows @ beta, m, 1.0, shift) * weighted
        if accept.sum() <= 0:
            return float("inf")
        mix = np.bincount(codes, weights=accept, minlength=len(target)) / accept.sum()
        # KL(accepted || real), the direction deception reduction measures.
        kl = float(np.sum(rel_entr(mix + self._kl_floor, target + self._kl_floor)))
        return kl + ridge * float(np.sum(beta[1:] ** 2))

    def _fit_beta(self, rows, stream, codes, weighted, target, m, ridge) -> np.ndarray:
        from scipy.optimize import minimize

        start = np.zeros(rows.shape[1])
        start[0] = 1.0  # the TF-IDF ratio as it is
        found = minimize(self._loss, start, args=(rows, stream, codes, weighted, target, m, ridge), method="Powell")
        return np.asarray(found.x, dtype=np.float64)

    def _choose_ridge(self, rows, halves, stream, codes, weighted, target, m) -> float:
        """The ridge whose beta, fitted on one half of the rows, best matches labels on the other."""
        scores = []
        for ridge in self.ridges:
            total = 0.0
            for half in (0, 1):
                fit, check = halves == half, halves != half
                beta = self._fit_beta(rows[fit], stream, codes[fit], weighted[fit], target, m, ridge)
                total += self._loss(beta, rows[check], stream, codes[check], weighted[check], target, m, 0.0)
            scores.append(total)
        return float(self.ridges[int(np.argmin(scores))])

    def log_ratio(self, items: Items) -> np.ndarray:
        return ((self._features(items) - self.center) / self.scale) @ self.beta

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        return self.tfidf.contributions(items, count)  # the membership view's n-grams

    def params(self) -> dict[str, Any]:
        labels = [f"log P({label})" for label in self.posterior.classes]
        weights = dict(zip(["tfidf", *labels], (self.beta / self.scale).tolist(), strict=True))
        return {"weights": weights, "ridge": self.ridge, **self.tfidf.params()}

    def save(self, folder: Path) -> dict[str, Any]:
        arrays = {"beta": self.beta, "center": self.center, "scale": self.scale}
        return {
            "arrays": _write_arrays(folder, "joint.safetensors", arrays),
            "ridge": self.ridge,
            "tfidf": self.tfidf.save(folder),
            "posterior": self.posterior.save(folder),
        }

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> JointSource:
        source = cls()
        source.tfidf = TfidfSource.load(folder, saved.get("tfidf") or {})
        source.posterior = LabelPosteriorSource.load(folder, saved.get("posterior") or {})
        width = 1 + len(source.posterior.classes)
        shapes = {"beta": (width,), "center": (width,), "scale": (width,)}
        arrays = read_arrays(folder, saved.get("arrays", "joint.safetensors"), shapes)
        source.beta, source.center, source.scale = arrays["beta"], arrays["center"], arrays["scale"]
        if not (source.scale > 0).all():
            raise UserError(f"{folder}: the joint source's scales must be positive: the filter is damaged.")
        source.ridge = saved_number(saved, "ridge", f"{folder} source", low=0.0)
        return source


# ---- language-model sources -----------------------------------------------------------------------


def _model_path(path: str, folder: Path) -> dict[str, str]:
    """A local model's path relative to the filter folder (a run moved whole still loads) and
    absolute (a filter folder moved alone still loads); a Hub id as it is."""
    if not Path(path).exists():
        return {"path": path}
    absolute = Path(path).resolve()
    return {"path": os.path.relpath(absolute, Path(folder).resolve()), "absolute_path": str(absolute)}


class LanguageModelSource(Source):
    """log p_real - log p_general per token, from score files at fit time and from the models
    for new texts (the same function of the differences, so the two agree by construction)."""

    name, label, needs, language_models = "sum", "sum", ("lm",), True
    roles: ClassVar[tuple[str, str]] = ("real", "general")  # log p_<first> - log p_<second>
    diffs_field: ClassVar[str] = "diffs"  # the Items field that holds those differences when precomputed

    def __init__(self) -> None:
        self.top_p, self.models, self.loaded = 0.75, {}, {}

    def fit(self, data: FitData) -> np.ndarray | None:
        self.top_p, self.models = data.top_p, dict(data.models or {})
        precomputed = getattr(data.heldout_items, self.diffs_field) is not None
        return self.log_ratio(data.heldout_items) if precomputed and len(data.heldout_items) else None

    def _diffs(self, items: Items) -> tuple[list[list[str]], list[np.ndarray]]:
        diffs = getattr(items, self.diffs_field)
        if diffs is not None:
            return items.tokens or [[] for _ in diffs], diffs
        return self._model_diffs(items.texts)

    def score_of(self, diffs: list[np.ndarray]) -> np.ndarray:
        return calibration.sum_scores(diffs)

    def log_ratio(self, items: Items) -> np.ndarray:
        return self.score_of(self._diffs(items)[1])

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        tokens, diffs = self._diffs(items)
        return [pushing(t, d, count) if len(t) == len(d) else ("", "") for t, d in zip(tokens, diffs, strict=True)]

    def _model_diffs(self, texts: list[str]) -> tuple[list[list[str]], list[np.ndarray]]:
        """Each text's tokens and log p_first - log p_second, the models run as the score stage runs them."""
        from semcal.scoring import token_log_probs_of

        if not self.loaded:
            raise UserError(f"the {self.name} source has no language models loaded: load the filter from its folder.")
        scored = {}
        for number, (role, (model, tokenizer)) in enumerate(self.loaded.items()):
            saved = self.models[role]
            # Both models cut the same texts: say so once.
            scored[role] = token_log_probs_of(
                model, tokenizer, texts, saved["framing"], saved["max_length"], 32, 4096, warn_cuts=number == 0
            )
        first, second = (scored[role] for role in self.roles)
        diffs = [calibration.token_differences(a[1], b[1]) for a, b in zip(first, second, strict=True)]
        return [tokens for tokens, _ in first], diffs

    def save(self, folder: Path) -> dict[str, Any]:
        missing = [role for role in self.roles if role not in self.models]
        if missing:
            raise UserError(
                f"the {self.name} source cannot be saved: its score files carry no record of the {missing} model."
            )
        models = {role: {**self.models[role], **_model_path(self.models[role]["path"], folder)} for role in self.roles}
        return {"models": models, "top_p": self.top_p}

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> LanguageModelSource:
        from semcal import distributed
        from semcal.models import check_model_record, load_model_and_tokenizer

        source = cls()
        source.top_p = saved_number(saved, "top_p", f"{folder} source", low=0.0)
        models = saved.get("models")
        if not isinstance(models, dict) or any(not isinstance(models.get(role), dict) for role in cls.roles):
            raise UserError(
                f"{folder} source: 'models' must record the {' and '.join(cls.roles)} models: the filter is damaged."
            )
        for role in cls.roles:
            record = models[role]
            path = check_model_record(f"{role} model", record, folder)
            if (
                not isinstance(record.get("framing"), str)
                or not isinstance(record.get("max_length"), int)
                or record["max_length"] < 2
            ):
                raise UserError(
                    f"{folder} source: the {role} model's framing and max_length (>= 2) are missing or wrong."
                )
            model, tokenizer = load_model_and_tokenizer(path, record.get("gguf_file"), setting=f"{role} model")
            check_model_record(f"{role} model", record, folder, tokenizer=tokenizer)
            source.loaded[role] = (model.to(distributed.device()).eval(), tokenizer)
            source.models[role] = {**record, "path": path}
        return source


class ClippedSource(LanguageModelSource):
    """The paper's score: the largest per-token differences up to top_p of their total."""

    name, label = "clipped", "clipped"

    def score_of(self, diffs: list[np.ndarray]) -> np.ndarray:
        return calibration.clipped_scores(diffs, self.top_p)


class ControlSource(LanguageModelSource):
    """log p_real - log p_control summed over tokens: a control model trained like the real one on a
    uniform subset of general, so what real learned beyond the label shift cancels."""

    name, label, needs, roles = "control_sum", "control sum", ("control",), ("real", "control")
    diffs_field = "control_diffs"


class StackSource(Source):
    """Logistic regression of held-out membership on the LM ratio's sum, mean and token count and the
    TF-IDF log-ratio; its held-out log-ratio is cross-fitted (each row predicted by a fit without it)."""

    name, label, needs, language_models = "stack", "stacked", ("lm", "heldout", "membership", "heldout_rows"), True

    def fit(self, data: FitData) -> np.ndarray:
        from sklearn.model_selection import StratifiedKFold

        self.language_model, self.tfidf = fitted(data, "sum"), fitted(data, "tfidf")
        features, is_real = self._features(data.heldout_items), data.heldout_is_real
        names = list(STACK_FEATURES)
        self.stacked = ratio_calibration.fit_stacked(features, is_real, names)
        folds = min(_STACK_FOLDS, int(is_real.sum()), int((~is_real).sum()))
        if folds < 2:  # too few members to cross-fit: the in-sample fit
            return ratio_calibration.stacked_log_ratio(self.stacked, features)
        crossfit = np.zeros(len(features))
        for fit_rows, predict_rows in StratifiedKFold(folds, shuffle=True, random_state=data.seed).split(
            features, is_real
        ):
            fold = ratio_calibration.fit_stacked(features[fit_rows], is_real[fit_rows], names)
            crossfit[predict_rows] = ratio_calibration.stacked_log_ratio(fold, features[predict_rows])
        return crossfit

    def _features(self, items: Items) -> np.ndarray:
        _, diffs = self.language_model._diffs(items)
        features = {**ratio_calibration.lm_ratio_features(diffs), "tfidf": self.tfidf.log_ratio(items)}
        return np.column_stack([features[name] for name in STACK_FEATURES])

    def log_ratio(self, items: Items) -> np.ndarray:
        return ratio_calibration.stacked_log_ratio(self.stacked, self._features(items))

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        return self.language_model.contributions(items, count)

    def params(self) -> dict[str, Any]:
        return {"stacked": self.stacked.to_dict(), **self.tfidf.params()}

    def save(self, folder: Path) -> dict[str, Any]:
        return {
            "stacked": self.stacked.to_dict(),
            "sum": self.language_model.save(folder),
            "tfidf": self.tfidf.save(folder),
        }

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> StackSource:
        source = cls()
        stacked = saved.get("stacked")
        try:
            source.stacked = ratio_calibration.StackedCalibrator(**stacked)
            values = [*source.stacked.center, *source.stacked.scale, *source.stacked.weights, source.stacked.intercept]
            valid = list(source.stacked.feature_names) == list(STACK_FEATURES) and np.isfinite(values).all()
            valid = valid and all(
                len(v) == len(STACK_FEATURES)
                for v in (source.stacked.center, source.stacked.scale, source.stacked.weights)
            )
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise UserError(
                f"{folder} source: 'stacked' is not a stacked calibrator of {STACK_FEATURES}: the filter is damaged."
            )
        source.language_model = LanguageModelSource.load(folder, saved.get("sum") or {})
        source.tfidf = TfidfSource.load(folder, saved.get("tfidf") or {})
        return source


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
    fitted_source, _ = fit_source(data, name)
    return fitted_source


def fit_source(data: FitData, name: str) -> tuple[Source, np.ndarray | None]:
    """The fitted source and its log-ratio of the held-out rows, cached in data.cache."""
    key = f"source:{name}"
    if key not in data.cache:
        source = SOURCES[name]()
        data.cache[key] = (source, source.fit(data))
    return data.cache[key]
