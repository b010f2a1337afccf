"""The sources that read the language models' per-token differences: the plain sum, the
paper's clipped score, the control model's, and the stacked calibrator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from semcal.core.errors import UserError
from semcal.filter import calibration, ratio_calibration
from semcal.filter.fit_data import FitData, Items
from semcal.filter.sources.base import STACK_FEATURES, STACK_FOLDS, Source, fit_cached, pushing
from semcal.filter.sources.saved import model_path_entry, saved_number
from semcal.filter.sources.text import TfidfSource


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
        from semcal.lm.scoring import token_log_probs_of

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
        models = {role: {**self.models[role], **model_path_entry(self.models[role]["path"], folder)} for role in self.roles}
        return {"models": models, "top_p": self.top_p}

    @classmethod
    def load(cls, folder: Path, saved: dict[str, Any]) -> LanguageModelSource:
        from semcal.core import distributed
        from semcal.lm.models import check_model_record, load_model_and_tokenizer

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

        self.language_model, self.tfidf = fit_cached(data, LanguageModelSource)[0], fit_cached(data, TfidfSource)[0]
        features, is_real = self._features(data.heldout_items), data.heldout_is_real
        names = list(STACK_FEATURES)
        self.stacked = ratio_calibration.fit_stacked(features, is_real, names)
        folds = min(STACK_FOLDS, int(is_real.sum()), int((~is_real).sum()))
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


