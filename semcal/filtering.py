"""The saved filter: what the evaluation fitted, written to a folder, loaded back to filter new texts.

The evaluation (semcal.evaluation) writes THE filter of each split into `<output_dir>/filter/`:

    filter.json          plain JSON: format version, semcal version, filter name and kind, its
                         source (tfidf / clipped / sum), M, top_p, the map from the source's
                         log-ratio l(x) to the score (temperature t and shift c: s = t * l + c, or
                         the logistic variant's intercept and slope), every calibration parameter,
                         the fingerprints of the evaluation's inputs, and for the language-model
                         filters the general and real model folders with their weights and
                         tokenizer fingerprints, framing and max_length (from the score records)
    tfidf.safetensors    the TF-IDF filter's idf vector and logistic coefficients and intercept
    vocabulary.json      its n-gram vocabulary (n-gram -> column)

Nothing is pickled: a filter folder from someone else is safe to load. The acceptance of a
text is a(x) = min(1, exp(s(x)) / M), as in the evaluation:

    from semcal.filtering import Filter
    model = Filter.load("runs/demo/evaluation/mild/filter")
    model.accept_probs(["a dog barks"]), model.decide(["a dog barks"], seed=0)

Saved: tfidf_labmom (the default) and tfidf_mom, the score variants clipped / sum (with
normalize none, heldout, matched or logistic) and their calibrations clipped_stream,
sum_stream, sum_mom and sum_labmom. Others (the control, n-gram, embedding and stacked
filters) are not yet: the evaluation says so in one line and writes no folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semcal import calibration, files
from semcal.config import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FOLDER_NAME = "filter"
SPEC_NAME = "filter.json"
TFIDF_ARRAYS = "tfidf.safetensors"
VOCABULARY_NAME = "vocabulary.json"
LM_SOURCES = ("clipped", "sum")
SAVED_NORMALIZATIONS = ("none", "heldout", "matched", "logistic")


# ---- saving (called by the evaluation) --------------------------------------------------------


def save_filter(folder: Path, config: Any, inputs: Any, facts: dict[str, Any], name: str, acceptance: Any) -> bool:
    """Write THE filter `name` into `folder` (inside the evaluation's staging folder); False
    with one log line when this kind of filter cannot be saved."""
    spec = _filter_spec(config, name, acceptance.stats)
    if spec is None:
        log.info("filter %s cannot be saved yet (saved: tfidf and language-model filters); no filter folder", name)
        return False
    if spec["source"] in LM_SOURCES:
        models = _score_models(config)
        if models is None:
            log.info("filter %s not saved: its score files carry no model record (score them with semcal score)", name)
            return False
        spec["models"] = models
    spec.update(m=float(inputs.m), top_p=float(config.top_p), inputs=facts["fingerprints"])
    if spec["source"] == "tfidf":
        vectorizer, classifier = inputs.cache["estimate:tfidf"].model
        spec["prior"] = float(acceptance.stats["estimator"]["prior"])
        vocabulary = {ngram: int(column) for ngram, column in vectorizer.vocabulary_.items()}
        files.write_json(folder / VOCABULARY_NAME, vocabulary)
        arrays = {"idf": vectorizer.idf_, "coef": classifier.coef_[0], "intercept": classifier.intercept_}
        files.write_safetensors(folder / TFIDF_ARRAYS, {key: np.asarray(a, np.float64) for key, a in arrays.items()})
    files.write_json(folder / SPEC_NAME, spec, strict=True)
    return True


def _filter_spec(config: Any, name: str, stats: dict[str, Any]) -> dict[str, Any] | None:
    """filter.json without the models and inputs: the source and its map to the score; None if not saveable."""
    from semcal import __version__
    from semcal.filters import FILTERS

    source = stats.get("log_ratio") or stats.get("score")
    spec: dict[str, Any] = {"format_version": FORMAT_VERSION, "semcal_version": __version__, "filter": name}
    spec.update(kind=FILTERS[name].kind, source=source, stats=stats)
    if "calibration" in stats and source in ("tfidf", *LM_SOURCES):
        fit = stats["calibration"]
        spec["map"] = {"link": "linear", "temperature": fit["temperature"], "shift": fit["shift"]}
        return spec
    if FILTERS[name].kind == "variant" and stats.get("normalize") in SAVED_NORMALIZATIONS:
        fit = stats.get("fit") or {}
        if stats["normalize"] == "logistic":
            spec["map"] = {"link": "logistic", "intercept": fit["intercept"], "slope": fit["slope"]}
        else:
            spec["map"] = {"link": "linear", "temperature": fit.get("scale", 1.0), "shift": -stats["shift"]}
        return spec
    return None


def _score_models(config: Any) -> dict[str, Any] | None:
    """The general and real model folders the evaluation's score files were made with (their records)."""
    models = {}
    for role, scores in (("general", config.general_scores_csv), ("real", config.real_scores_csv)):
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


# ---- loading and applying ---------------------------------------------------------------------


@dataclass
class Scored:
    """Per text: the score s(x) (the calibrated log-ratio), the acceptance, and the tokens (or
    n-grams) that pushed the score up and down most, e.g. "'dog' +1.230; 'barks' +0.410"."""

    scores: np.ndarray
    accept: np.ndarray
    tokens_up: list[str]
    tokens_down: list[str]


class Filter:
    """A saved filter: `Filter.load(folder)`, then `accept_probs(texts)` and `decide(texts, seed)`."""

    def __init__(self, folder: Path, spec: dict[str, Any], source: Any):
        self.folder, self.spec, self.source = folder, spec, source

    @classmethod
    def load(cls, folder: str | Path) -> Filter:
        """Read a filter folder; refuses a missing folder, an unknown format and changed models."""
        folder = Path(folder)
        if not (folder / SPEC_NAME).is_file():
            raise UserError(
                f"{folder} holds no saved filter ({SPEC_NAME}): give the filter folder of an evaluation, "
                "RUN_DIR/evaluation/<split>/filter, written by `semcal run` or `semcal evaluate` for the filters "
                "tfidf_labmom, tfidf_mom and the language-model score ones (the evaluation's filter setting)."
            )
        spec = files.read_json(folder / SPEC_NAME)
        if spec.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{folder / SPEC_NAME} has format version {spec.get('format_version')!r}, this semcal reads "
                f"{FORMAT_VERSION}: re-run the evaluation with this semcal version to save the filter again."
            )
        if spec["source"] == "tfidf":
            source: Any = TfidfSource(folder, spec)
        else:
            source = LanguageModelSource(spec)
        log.info("loaded filter %s (%s, M %.3g) from %s", spec["filter"], spec["source"], spec["m"], folder)
        return cls(folder, spec, source)

    @property
    def name(self) -> str:
        return self.spec["filter"]

    @property
    def m(self) -> float:
        return float(self.spec["m"])

    def score(self, texts: list[str], top_tokens: int = 0) -> Scored:
        """Score, acceptance and (top_tokens > 0) the strongest tokens of each text."""
        log_ratio, explained = self.source.log_ratio(list(texts), top_tokens)
        scores = self._map(log_ratio)
        up = [item[0] for item in explained] if explained else [""] * len(scores)
        down = [item[1] for item in explained] if explained else [""] * len(scores)
        return Scored(scores, calibration.accept_probs(scores, self.m), up, down)

    def accept_probs(self, texts: list[str]) -> np.ndarray:
        return self.score(texts).accept

    def decide(self, texts: list[str], seed: int = 0) -> np.ndarray:
        """Accept (True) or reject each text: a seeded uniform draw below its acceptance probability."""
        return draw(self.accept_probs(texts), np.random.default_rng(seed))

    def _map(self, log_ratio: np.ndarray) -> np.ndarray:
        link = self.spec["map"]
        if link["link"] == "logistic":
            return calibration.logistic_log_ratio(log_ratio, link["intercept"], link["slope"], self.m)
        return link["temperature"] * np.asarray(log_ratio, dtype=np.float64) + link["shift"]


def draw(accept: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform draw per text from `rng`: drawing batch after batch gives the same decisions as all at once."""
    return rng.random(len(accept)) < accept


def _explain(pieces: list[str], weights: np.ndarray, count: int) -> tuple[str, str]:
    from semcal.report import pushing_tokens

    return pushing_tokens(pieces, weights, count, up=True), pushing_tokens(pieces, weights, count, up=False)


class TfidfSource:
    """The TF-IDF + logistic regression log-ratio, rebuilt from its arrays (semcal.baselines' features)."""

    def __init__(self, folder: Path, spec: dict[str, Any]):
        from semcal.baselines import tfidf_vectorizer

        arrays = files.read_safetensors(folder / TFIDF_ARRAYS)
        self.vectorizer = tfidf_vectorizer(vocabulary=files.read_json(folder / VOCABULARY_NAME))
        self.vectorizer.idf_ = arrays["idf"]
        self.coef, self.intercept = arrays["coef"], float(arrays["intercept"][0])
        self.prior = float(spec["prior"])
        self.ngrams = self.vectorizer.get_feature_names_out()

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        from scipy.special import expit

        from semcal.ratio_estimators import _from_probability

        features = self.vectorizer.transform(texts).tocsr()
        p_real = expit(features @ self.coef + self.intercept)
        explained = []
        for row in range(features.shape[0]) if top_tokens else ():
            start, end = features.indptr[row], features.indptr[row + 1]
            columns = features.indices[start:end]
            weights = features.data[start:end] * self.coef[columns]
            explained.append(_explain([str(self.ngrams[c]) for c in columns], weights, top_tokens))
        return _from_probability("tfidf", p_real, self.prior, {}).log_ratio, explained


class LanguageModelSource:
    """The two language models' score: per-token log p_real - log p_general, clipped or summed."""

    def __init__(self, spec: dict[str, Any]):
        from semcal import distributed
        from semcal.models import load_model_and_tokenizer

        self.spec, self.loaded = spec, {}
        device = distributed.device()
        for role, saved in spec["models"].items():
            check_model(role, saved)
            model, tokenizer = load_model_and_tokenizer(saved["path"], saved.get("gguf_file"), setting=f"{role} model")
            check_tokenizer(role, saved, tokenizer)
            self.loaded[role] = (model.to(device).eval(), tokenizer)
        self.batch_size, self.max_batch_tokens = 32, 4096  # the score stage's defaults: the same batches

    def log_ratio(self, texts: list[str], top_tokens: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        from semcal.scoring import token_log_probs_of

        scored = {}
        for role, (model, tokenizer) in self.loaded.items():
            saved = self.spec["models"][role]
            scored[role] = token_log_probs_of(
                model, tokenizer, texts, saved["framing"], saved["max_length"], self.batch_size, self.max_batch_tokens
            )
        diffs = [
            calibration.token_differences(real[1], general[1])
            for real, general in zip(scored["real"], scored["general"], strict=True)
        ]
        log_ratio = calibration.log_ratio_scores(diffs, self.spec["source"], self.spec["top_p"])
        explained = (
            [_explain(tokens, d, top_tokens) for (tokens, _), d in zip(scored["real"], diffs, strict=True)]
            if top_tokens
            else []
        )
        return log_ratio, explained


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
