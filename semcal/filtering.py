"""The saved filter: what the evaluation fitted, written to a folder, loaded back to filter new texts.

The evaluation (semcal.evaluation) writes THE filter of each split into `<output_dir>/filter/`:

    filter.json          plain JSON: format version, semcal version, filter name and kind, its
                         source (tfidf / ngram / embedding / clipped / sum / control_sum / stack),
                         M, top_p, the map from the source's log-ratio l(x) to the score
                         (temperature t and shift c: s = t * l + c, or the logistic variant's
                         intercept and slope), every calibration parameter, the fingerprints of
                         the evaluation's inputs, and what the source needs: the model folders
                         with their weights and tokenizer fingerprints, framing and max_length
                         (from the score records), the hashing settings, the stacked weights
    *.safetensors        the source's learned arrays (TF-IDF, n-gram buckets, embedding classifier)
    vocabulary.json      the TF-IDF n-gram vocabulary (n-gram -> column)

semcal.filter_sources lists what each source saves and computes l(x) of new texts with it.
Nothing is pickled: a filter folder from someone else is safe to load. The acceptance of a
text is a(x) = min(1, exp(s(x)) / M), as in the evaluation:

    from semcal.filtering import Filter
    model = Filter.load("runs/demo/evaluation/mild/filter")
    model.accept_probs(["a dog barks"]), model.decide(["a dog barks"], seed=0)

Saved: every calibrated filter (tfidf_labmom, the default, tfidf_mom, ngram_labmom,
embedding_labmom, stack_labmom, clipped_stream, sum_stream, sum_mom, sum_labmom,
control_sum, control_sum_stream, control_sum_labmom) and every score variant (clipped /
sum, normalize none, heldout, matched or logistic). Not the classifier (filter=classifier,
a baseline): the evaluation says so in one line and writes no folder. A filter over
language models needs score files with their models' records (semcal score writes them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semcal import calibration, files
from semcal.config import UserError
from semcal.filter_sources import SOURCES, load_source, save_source

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FOLDER_NAME = "filter"
SPEC_NAME = "filter.json"
SAVED_NORMALIZATIONS = ("none", "heldout", "matched", "logistic")


# ---- saving (called by the evaluation) --------------------------------------------------------


def save_filter(folder: Path, config: Any, inputs: Any, facts: dict[str, Any], name: str, acceptance: Any) -> bool:
    """Write THE filter `name` into `folder` (inside the evaluation's staging folder); False
    with one log line when this kind of filter cannot be saved."""
    spec = _filter_spec(config, name, acceptance.stats)
    if spec is None:
        log.info("filter %s cannot be saved (saved: every filter but classifier); no filter folder", name)
        return False
    spec.update(m=float(inputs.m), top_p=float(config.top_p), inputs=facts["fingerprints"])
    problem = save_source(folder, spec, config, inputs, acceptance.stats)
    if problem:
        log.info("filter %s not saved: %s", name, problem)
        return False
    files.write_json(folder / SPEC_NAME, spec, strict=True)
    return True


def _filter_spec(config: Any, name: str, stats: dict[str, Any]) -> dict[str, Any] | None:
    """filter.json without what the source needs: the source and its map to the score; None if not saveable."""
    from semcal import __version__
    from semcal.filters import FILTERS

    source = stats.get("log_ratio") or stats.get("score")
    spec: dict[str, Any] = {"format_version": FORMAT_VERSION, "semcal_version": __version__, "filter": name}
    spec.update(kind=FILTERS[name].kind, source=source, stats=stats)
    if "calibration" in stats and source in SOURCES:
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
                "RUN_DIR/evaluation/<split>/filter, written by `semcal run` or `semcal evaluate` for its filter "
                "(the evaluation's filter setting: any but classifier)."
            )
        spec = files.read_json(folder / SPEC_NAME)
        if spec.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{folder / SPEC_NAME} has format version {spec.get('format_version')!r}, this semcal reads "
                f"{FORMAT_VERSION}: re-run the evaluation with this semcal version to save the filter again."
            )
        source = load_source(folder, spec)
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
