"""The sources of a saved filter: each computes the log-ratio l(x) of new texts as the
evaluation computed it for general_test, from what `save_source` wrote into the filter folder.

    tfidf         tfidf.safetensors (idf, logistic coef and intercept), vocabulary.json
    ngram         ngram.safetensors (the log-ratio of each hashed n-gram bucket); filter.json:
                  the HashingVectorizer settings (buckets, n-gram range, ...) and the offset
    embedding     embedding.safetensors (the scaler's mean and scale, the logistic coef and
                  intercept); filter.json: the sentence-encoder folder with its weights and
                  tokenizer fingerprints
    clipped, sum  the general and real models (filter.json `models`: folders, fingerprints,
                  framing, max_length, from the score records)
    control_sum   the real and control models (the general one is recorded too)
    stack         the stacked logistic weights (filter.json `stacked`), the TF-IDF arrays and
                  the general and real models

Each source has `log_ratio(texts, top_tokens) -> (l(x), [(tokens up, tokens down)] or [])`.
A model folder is refused when it is gone or its weights or tokenizer changed since the fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from semcal import calibration, files, ratio_calibration, ratio_estimators
from semcal.config import UserError

TFIDF_ARRAYS = "tfidf.safetensors"
VOCABULARY_NAME = "vocabulary.json"
NGRAM_ARRAYS = "ngram.safetensors"
EMBEDDING_ARRAYS = "embedding.safetensors"
# Which models each language-model source compares: log p_real - log p_<second>.
LM_ROLES = {"clipped": "general", "sum": "general", "control_sum": "control", "stack": "general"}
LABEL_ARRAYS = "label_posterior.safetensors"
LABEL_VOCABULARY_NAME = "label_vocabulary.json"
SOURCES = ("tfidf", "ngram", "embedding", "label_posterior", *LM_ROLES)


# ---- saving (semcal.filtering.save_filter, inside the evaluation) --------------------------------


def save_source(folder: Path, spec: dict[str, Any], config: Any, inputs: Any, stats: dict[str, Any]) -> str | None:
    """Write what the source of `spec` needs into `folder` and `spec`; None, or why it cannot be saved."""
    source = spec["source"]
    if source in LM_ROLES:
        models = score_models(config, source)
        if models is None:
            return "its score files carry no model record (score them with semcal score)"
        spec["models"] = models
    if source in ("tfidf", "ngram", "embedding", "stack"):  # a classifier's P(real | x) / prior is the ratio
        spec["prior"] = float(stats["estimator"]["prior"])
    if source in ("tfidf", "stack"):
        vectorizer, classifier = inputs.cache["estimate:tfidf"].model
        vocabulary = {ngram: int(column) for ngram, column in vectorizer.vocabulary_.items()}
        files.write_json(folder / VOCABULARY_NAME, vocabulary)
        arrays = {"idf": vectorizer.idf_, "coef": classifier.coef_[0], "intercept": classifier.intercept_}
        files.write_safetensors(folder / TFIDF_ARRAYS, {key: np.asarray(a, np.float64) for key, a in arrays.items()})
    if source == "stack":
        spec["stacked"] = stats["stacked"]
    if source == "ngram":
        hashing = ratio_estimators.hashing_vectorizer(int(stats["estimator"]["n_buckets"])).get_params()
        plain = {
            name: value for name, value in hashing.items() if value is None or isinstance(value, (str, int, tuple))
        }
        spec["ngram"] = {"hashing": plain, "offset": stats["estimator"]["offset"]}  # dtype: the default float64
        bucket_log_ratio = np.asarray(inputs.cache["estimate:ngram"].model, np.float64)
        files.write_safetensors(folder / NGRAM_ARRAYS, {"bucket_log_ratio": bucket_log_ratio})
    if source == "label_posterior":
        vectorizer, classifier, label_ratio = inputs.cache["estimate:label_posterior"].model
        vocabulary = {ngram: int(column) for ngram, column in vectorizer.vocabulary_.items()}
        files.write_json(folder / LABEL_VOCABULARY_NAME, vocabulary)
        spec["labels"] = [str(label) for label in classifier.classes_]
        arrays = {"idf": vectorizer.idf_, "coef": classifier.coef_, "intercept": classifier.intercept_}
        arrays["label_ratio"] = label_ratio
        files.write_safetensors(folder / LABEL_ARRAYS, {key: np.asarray(a, np.float64) for key, a in arrays.items()})
    if source == "embedding":
        spec["encoder"] = encoder_record(config.embedding_model)
        scaler, classifier = (step for _, step in inputs.cache["estimate:embedding"].model.steps)
        arrays = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": classifier.coef_[0]}
        arrays["intercept"] = classifier.intercept_  # in their fitted dtypes: the same float32 arithmetic
        files.write_safetensors(folder / EMBEDDING_ARRAYS, {key: np.asarray(a) for key, a in arrays.items()})
    return None


def score_models(config: Any, source: str) -> dict[str, Any] | None:
    """The model folders the evaluation's score files were made with (their records): general
    and real, and control for the control source."""
    score_files = {"general": config.general_scores_csv, "real": config.real_scores_csv}
    if LM_ROLES[source] == "control":
        score_files["control"] = config.control_scores_csv
    models = {}
    for role, scores in score_files.items():
        record = files.read_record(Path(scores).parent)
        if not record or "model" not in record.get("config", {}):
            return None
        model = record["config"]["model"]
        models[role] = {
            "path": str(Path(model).resolve()) if Path(model).exists() else model,
            "gguf_file": record["config"].get("gguf_file"),
            "weights_fingerprint": record.get("weights_fingerprint"),
            "tokenizer_fingerprint": record.get("tokenizer_fingerprint"),
            "framing": record.get("framing"),
            "max_length": record.get("max_length"),
        }
    return models


def encoder_record(folder: str) -> dict[str, Any]:
    """The sentence encoder's folder with its weights and tokenizer fingerprints."""
    from semcal.models import tokenizer_fingerprint, weights_fingerprint

    tokenizer, _ = ratio_estimators.load_encoder(folder)
    return {
        "path": str(Path(folder).resolve()),
        "weights_fingerprint": weights_fingerprint(folder),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }


# ---- loading ------------------------------------------------------------------------------------


def load_source(folder: Path, spec: dict[str, Any]) -> Any:
    source = spec["source"]
    if source == "tfidf":
        return TfidfSource(folder, spec)
    if source == "ngram":
        return NgramSource(folder, spec)
    if source == "embedding":
        return EmbeddingSource(folder, spec)
    if source == "stack":
        return StackSource(folder, spec)
    if source == "label_posterior":
        return LabelPosteriorSource(folder)
    return LanguageModelSource(spec)


def _explain(pieces: list[str], weights: np.ndarray, count: int) -> tuple[str, str]:
    from semcal.report import pushing_tokens

    return pushing_tokens(pieces, weights, count, up=True), pushing_tokens(pieces, weights, count, up=False)


def _log_ratio_of(p_real: np.ndarray, prior: float) -> np.ndarray:
    """log(P(real | x) / prior), with the estimators' floor on P(real | x)."""
    return ratio_estimators._from_probability("saved", p_real, prior, {}).log_ratio


def _saved_tfidf(folder: Path, vocabulary_name: str, idf: np.ndarray) -> Any:
    """A fitted TF-IDF vectorizer (semcal.baselines' features) from its saved vocabulary and idf."""
    from semcal.baselines import tfidf_vectorizer

    vectorizer = tfidf_vectorizer(vocabulary=files.read_json(folder / vocabulary_name))
    vectorizer.idf_ = idf
    return vectorizer


def _explain_ngrams(features: Any, ngrams: np.ndarray, count: int, weights_of: Any) -> list[tuple[str, str]]:
    """Per row of a sparse feature matrix: the n-grams that pushed its score most, each weighted
    by its feature value times `weights_of(row, columns)`."""
    explained = []
    for row in range(features.shape[0]) if count else ():
        start, end = features.indptr[row], features.indptr[row + 1]
        columns = features.indices[start:end]
        weights = features.data[start:end] * weights_of(row, columns)
        explained.append(_explain([str(ngrams[c]) for c in columns], weights, count))
    return explained


class TfidfSource:
    """The TF-IDF + logistic regression log-ratio, rebuilt from its arrays."""

    def __init__(self, folder: Path, spec: dict[str, Any]):
        arrays = files.read_safetensors(folder / TFIDF_ARRAYS)
        self.vectorizer = _saved_tfidf(folder, VOCABULARY_NAME, arrays["idf"])
        self.coef, self.intercept = arrays["coef"], float(arrays["intercept"][0])
        self.prior = float(spec["prior"])
        self.ngrams = self.vectorizer.get_feature_names_out()

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        from scipy.special import expit

        features = self.vectorizer.transform(texts).tocsr()
        p_real = expit(features @ self.coef + self.intercept)
        explained = _explain_ngrams(features, self.ngrams, top_tokens, lambda row, columns: self.coef[columns])
        return _log_ratio_of(p_real, self.prior), explained


class LabelPosteriorSource:
    """log sum_y P(y | x) q(y) / p(y): TF-IDF + multinomial logistic regression on general_train's
    labels (the labmom filters' form on a split without shift), rebuilt from its arrays."""

    def __init__(self, folder: Path):
        arrays = files.read_safetensors(folder / LABEL_ARRAYS)
        self.vectorizer = _saved_tfidf(folder, LABEL_VOCABULARY_NAME, arrays["idf"])
        self.coef, self.intercept, self.label_ratio = arrays["coef"], arrays["intercept"], arrays["label_ratio"]
        self.ngrams = self.vectorizer.get_feature_names_out()

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        from scipy.special import expit, softmax

        features = self.vectorizer.transform(texts).tocsr()
        logits = np.asarray(features @ self.coef.T) + self.intercept
        if self.coef.shape[0] == 1:  # two labels: scikit-learn's binary form, P(second label | x)
            second = expit(logits[:, 0])
            posterior = np.column_stack([1 - second, second])
            coef = np.vstack([np.zeros_like(self.coef[0]), self.coef[0]])
        else:
            posterior, coef = softmax(logits, axis=1), self.coef
        log_ratio = ratio_estimators.label_posterior_log_ratio(posterior, self.label_ratio)
        # d log r / d (a label's logit): the labels an n-gram favours, weighted by how they move r.
        tilt = posterior * (self.label_ratio[None, :] / np.exp(log_ratio)[:, None] - 1.0)
        explained = _explain_ngrams(
            features, self.ngrams, top_tokens, lambda row, columns: tilt[row] @ coef[:, columns]
        )
        return log_ratio, explained


class NgramSource:
    """The hashed n-gram log-ratio: the sum of the bucket log-ratios of a text's n-grams, centred."""

    def __init__(self, folder: Path, spec: dict[str, Any]):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.bucket_log_ratio = files.read_safetensors(folder / NGRAM_ARRAYS)["bucket_log_ratio"]
        hashing = {name: tuple(v) if isinstance(v, list) else v for name, v in spec["ngram"]["hashing"].items()}
        self.vectorizer, self.offset = HashingVectorizer(**hashing), float(spec["ngram"]["offset"])

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        log_ratio = self.vectorizer.transform(texts) @ self.bucket_log_ratio - self.offset
        explained = [self._explain(text, top_tokens) for text in texts] if top_tokens else []
        return np.asarray(log_ratio, dtype=np.float64), explained

    def _explain(self, text: str, count: int) -> tuple[str, str]:
        """Each distinct n-gram of the text with its bucket's log-ratio times its count."""
        from sklearn.feature_extraction import FeatureHasher

        ngrams, counts = np.unique(self.vectorizer.build_analyzer()(text), return_counts=True)
        if not len(ngrams):
            return "", ""
        # The hasher HashingVectorizer uses: one n-gram per row gives that n-gram's bucket.
        hasher = FeatureHasher(self.vectorizer.n_features, input_type="string", alternate_sign=False)
        buckets = hasher.transform([[str(ngram)] for ngram in ngrams]).tocsr().indices
        return _explain([str(ngram) for ngram in ngrams], counts * self.bucket_log_ratio[buckets], count)


class EmbeddingSource:
    """Logistic regression on standardised sentence embeddings of the recorded encoder."""

    def __init__(self, folder: Path, spec: dict[str, Any]):
        saved = spec["encoder"]
        check_model("sentence-encoder", saved)
        self.path, self.encoder = saved["path"], ratio_estimators.load_encoder(saved["path"])
        check_tokenizer("sentence-encoder", saved, self.encoder[0])
        self.arrays = files.read_safetensors(folder / EMBEDDING_ARRAYS)
        self.prior = float(spec["prior"])

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        from scipy.special import expit

        embedded = ratio_estimators.embed_texts(texts, self.path, encoder=self.encoder)
        # As StandardScaler and LogisticRegression compute it: in the embeddings' float32.
        mean, scale = (self.arrays[key].astype(embedded.dtype) for key in ("mean", "scale"))
        logits = ((embedded - mean) / scale) @ self.arrays["coef"] + self.arrays["intercept"][0]
        return _log_ratio_of(expit(logits), self.prior), []  # an embedding names no tokens


class LanguageModelSource:
    """Two language models' score: per-token log p_real - log p_general (control_sum: p_control),
    clipped or summed."""

    def __init__(self, spec: dict[str, Any]):
        from semcal import distributed
        from semcal.models import load_model_and_tokenizer

        self.spec, self.loaded = spec, {}
        self.method = "clipped" if spec["source"] == "clipped" else "sum"
        device = distributed.device()
        for role in ("real", LM_ROLES[spec["source"]]):
            saved = spec["models"][role]
            check_model(role, saved)
            model, tokenizer = load_model_and_tokenizer(saved["path"], saved.get("gguf_file"), setting=f"{role} model")
            check_tokenizer(role, saved, tokenizer)
            self.loaded[role] = (model.to(device).eval(), tokenizer)
        self.batch_size, self.max_batch_tokens = 32, 4096  # the score stage's defaults: the same batches

    def token_diffs(self, texts: list[str]) -> tuple[list[list[str]], list[np.ndarray]]:
        """Each text's scored tokens and their log-prob differences, real minus the other model."""
        from semcal.scoring import token_log_probs_of

        scored = {}
        for role, (model, tokenizer) in self.loaded.items():
            saved = self.spec["models"][role]
            scored[role] = token_log_probs_of(
                model, tokenizer, texts, saved["framing"], saved["max_length"], self.batch_size, self.max_batch_tokens
            )
        other = scored[LM_ROLES[self.spec["source"]]]
        diffs = [
            calibration.token_differences(real[1], its[1]) for real, its in zip(scored["real"], other, strict=True)
        ]
        return [tokens for tokens, _ in scored["real"]], diffs

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        tokens, diffs = self.token_diffs(texts)
        log_ratio = calibration.log_ratio_scores(diffs, self.method, self.spec["top_p"])
        explained = [_explain(t, d, top_tokens) for t, d in zip(tokens, diffs, strict=True)] if top_tokens else []
        return log_ratio, explained


class StackSource:
    """The stacked log-ratio: logistic weights over the LM ratio's sum, mean and token count and
    the TF-IDF log-ratio (semcal.estimators.stack_labmom); the tokens are the language models'."""

    def __init__(self, folder: Path, spec: dict[str, Any]):
        self.language_models = LanguageModelSource(spec)
        self.tfidf = TfidfSource(folder, spec)
        self.stacked = ratio_calibration.StackedCalibrator(**spec["stacked"])

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        tokens, diffs = self.language_models.token_diffs(texts)
        features = {**ratio_calibration.lm_ratio_features(diffs), "tfidf": self.tfidf.log_ratio(texts, 0)[0]}
        stacked = np.column_stack([features[name] for name in self.stacked.feature_names])
        explained = [_explain(t, d, top_tokens) for t, d in zip(tokens, diffs, strict=True)] if top_tokens else []
        return ratio_calibration.stacked_log_ratio(self.stacked, stacked), explained


# ---- checks of the recorded model folders ---------------------------------------------------------


def check_model(role: str, saved: dict[str, Any]) -> None:
    """The model folder is there and holds the weights the filter was fitted with."""
    from semcal.models import weights_fingerprint

    path = Path(saved["path"])
    if saved.get("weights_fingerprint") is None:
        return  # a Hub model: nothing local to compare
    if not path.exists():
        raise UserError(
            f"the filter's {role} model {path} is gone: restore that folder (the run's models/), or re-run the "
            "evaluation with the models you have to save a new filter."
        )
    now = weights_fingerprint(str(path), saved.get("gguf_file"))
    if now != saved["weights_fingerprint"]:
        raise UserError(
            f"the {role} model in {path} changed since the filter was fitted (weights {now}, the filter's "
            f"{saved['weights_fingerprint']}): re-run scoring and the evaluation (semcal run) to save a filter "
            "for these weights, or restore the old ones."
        )


def check_tokenizer(role: str, saved: dict[str, Any], tokenizer: Any) -> None:
    from semcal.models import tokenizer_fingerprint

    now = tokenizer_fingerprint(tokenizer)
    if saved.get("tokenizer_fingerprint") not in (None, now):
        raise UserError(
            f"the {role} model's tokenizer in {saved['path']} changed since the filter was fitted: re-run scoring "
            "and the evaluation (semcal run) to save a filter for it, or restore the old tokenizer."
        )
