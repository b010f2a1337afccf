"""The label sources: the label posterior plug-in and the joint source (TF-IDF membership and
the label posterior, beta fitted on the label distribution)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semcal.core.errors import UserError
from semcal.filter import calibration, ratio_calibration
from semcal.filter.fit_data import FitData, Items
from semcal.filter.sources.base import (
    MIN_PROBABILITY,
    OTHER_LABELS,
    Source,
    explain_features,
    label_folds,
    tfidf_vectorizer,
)
from semcal.filter.sources.saved import read_arrays, read_vocabulary, saved_number, write_arrays
from semcal.filter.sources.text import TfidfSource
from semcal.store import files


class LabelPosteriorSource(Source):
    """r(x) = sum_y P(y | x) q(y) / p(y): TF-IDF + multinomial logistic regression on the general
    rows' labels, q and p the real and general rows' label distributions. Needs labels."""

    name, label, needs = "label_posterior", "label-posterior plug-in", ("labels",)
    arrays_name, vocabulary_name = "label_posterior.safetensors", "label_vocabulary.json"
    _min_df_texts = 1000  # from this many texts on, n-grams seen once are left out (3x faster, no loss)
    inverse_ridge = 1.0  # the logistic regression's C (bench/bench_posterior_views.py measures others)

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

        model = LogisticRegression(C=self.inverse_ridge, max_iter=2000, random_state=seed).fit(features, train_labels)
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
            raise ValueError("cross_fit: the folds saw different labels; fold by label (semcal.filter.sources.label_folds)")
        out_of_fold = np.empty((len(data.texts), len(fits[0].classes)))
        for k, fit in zip(np.unique(fold), fits, strict=True):
            out_of_fold[fold == k] = np.log(np.maximum(fit._posterior_of(features[fold == k])[0], MIN_PROBABILITY))
        source.classes, source.label_ratio = fits[0].classes, np.mean([fit.label_ratio for fit in fits], axis=0)
        source.coef = np.mean([fit.coef for fit in fits], axis=0)
        source.intercept = np.mean([fit.intercept for fit in fits], axis=0)
        return source, out_of_fold

    def log_posterior(self, items: Items) -> np.ndarray:
        """log P(y | x) per item and label (columns: self.classes), floored."""
        return np.log(np.maximum(self._posterior(items)[1], MIN_PROBABILITY))

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
        return np.log(np.maximum(self._posterior(items)[1] @ self.label_ratio, MIN_PROBABILITY))

    def contributions(self, items: Items, count: int) -> list[tuple[str, str]]:
        features, posterior, coef = self._posterior(items)
        ratio = np.maximum(posterior @ self.label_ratio, MIN_PROBABILITY)
        # d log r / d (a label's logit): the labels an n-gram favours, weighted by how they move r.
        tilt = posterior * (self.label_ratio[None, :] / ratio[:, None] - 1.0)
        return explain_features(
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
        file_name = write_arrays(folder, self.arrays_name, {k: np.asarray(v, np.float64) for k, v in arrays.items()})
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
            "arrays": write_arrays(folder, "joint.safetensors", arrays),
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


