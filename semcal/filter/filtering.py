"""THE filter object: a source (semcal.filter.sources) and a calibration (semcal.filter.calibrations) with M.
It is fitted, measured by the evaluation, saved, loaded and applied as one object, so the
saved filter is exactly the one the evaluation measured:

    from semcal.filter.filtering import Filter
    stream_filter = Filter.load("runs/demo/evaluation/mild/filter")
    stream_filter.accept_probs(["a dog barks"]), stream_filter.decide(["a dog barks"], seed=0)

The acceptance of an item is a(x) = min(1, exp(s(x)) / M), s = the calibration's link
applied to the source's log-ratio l(x). A filter's name is derived from its pair:
`<source>_<calibration>`, or the source alone for calibration `none` (semcal.filter.filters).

A filter folder holds filter.json (plain JSON: format version, semcal version, name,
source, calibration and its link, M, the source's saved state and what the fit read) and
the source's arrays (safetensors) and vocabularies (JSON). Nothing is pickled; everything
read is checked, and a damaged or tampered folder is refused in one sentence naming the
file and the field. Model folders are recorded relative to the filter folder (a moved run
still loads) with their weights fingerprints (a changed model is refused).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core.errors import UserError
from semcal.filter import calibration, drift, ratio_calibration
from semcal.filter.calibrations import CALIBRATIONS, CalibrationInput, Link
from semcal.filter.contributions import log_ratio_and_explanations
from semcal.filter.decisions import Thresholds, decision_keys, draw, keyed_draw  # noqa: F401 (draw: re-exported)
from semcal.filter.filters import filter_name
from semcal.filter.fit_data import FitData, Items, Scored
from semcal.filter.sources import SOURCES, Source, fit_source, saved_number
from semcal.store import files

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
FOLDER_NAME = "filter"
SPEC_NAME = "filter.json"
FALLBACK_SOURCE = "label_posterior"  # what labmom falls back to when the labels show no shift


class Filter:
    """A source, a calibration link and M: fit, score, save, load."""

    def __init__(
        self,
        source: Source,
        calibration_name: str,
        link: Link,
        m: float,
        stats: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        self.source, self.calibration, self.link, self.m = source, calibration_name, link, float(m)
        self.stats = stats or {}
        # The pair's name; a label-moment filter that fell back to the label posterior keeps the name it was fitted as.
        self.name = name or filter_name(source.name, calibration_name)
        self.fitted_stream: np.ndarray | None = None  # the source's log-ratio of the fit's stream
        # Acceptance quantiles of the fit's stream and held-out real rows: decision=threshold (semcal.filter.decisions).
        self.thresholds: Thresholds | None = None
        # Drift (semcal.stream.adapt): the fit's data until saved; once loaded, the reference of its stream and,
        # for a filter fitted with labels, its label posterior P(y | x).
        self.fit_data: FitData | None = None
        self.drift: Any = None
        self.label_posterior: Source | None = None

    # ---- fitting ----------------------------------------------------------------------------------

    @classmethod
    def fit(cls, source_name: str, calibration_name: str, data: FitData, name: str | None = None) -> Filter:
        """Fit the source (shared through data.cache) and the calibration on `data`. A label-moment
        calibration that finds no label shift falls back to the label-posterior source with the stream
        shift (the one estimate that still moves the stream's label mix toward the real one)."""
        source, heldout = fit_source(data, source_name)
        stream = source.log_ratio(data.stream)
        fit = CalibrationInput(data, source_name, heldout, stream)
        link = CALIBRATIONS[calibration_name]().fit(fit)
        stats = {"log_ratio": source_name, "calibration_method": calibration_name, **fit.stats}
        if source.params():
            stats["estimator"] = source.params()
        if fit.no_shift and source_name != FALLBACK_SOURCE and data.has("labels"):
            plug_in, heldout = fit_source(data, FALLBACK_SOURCE)
            stream = plug_in.log_ratio(data.stream)
            fitted = ratio_calibration.calibrate_stream(stream, data.m, "fixed")
            no_shift_in = stats
            stats = {"log_ratio": FALLBACK_SOURCE, "calibration_method": "stream", "calibration": fitted.to_dict()}
            stats.update(estimator=plug_in.params(), no_shift_in=no_shift_in)
            source, link = plug_in, Link(temperature=fitted.temperature, shift=fitted.shift)
        fitted_filter = cls(
            source, calibration_name, link, data.m, stats, name or filter_name(source_name, calibration_name)
        )
        fitted_filter.fitted_stream, fitted_filter.fit_data = stream, data
        fitted_filter.thresholds = _thresholds(fitted_filter, stream, heldout, data)
        return fitted_filter

    # ---- applying ---------------------------------------------------------------------------------

    def scores(self, items: Items) -> np.ndarray:
        return self.link.apply(self.source.log_ratio(items), self.m)

    def accept_probs(self, texts: list[str] | Items) -> np.ndarray:
        return self.accept_of(self.source.log_ratio(_items(texts)))

    def accept_of(self, log_ratio: np.ndarray) -> np.ndarray:
        """The acceptance of items whose source log-ratio is already computed."""
        return calibration.accept_probs(self.link.apply(log_ratio, self.m), self.m)

    def decide(self, texts: list[str] | Items, seed: int = 0, ids: list[Any] | None = None) -> np.ndarray:
        """Accept (True) or reject each text, as `semcal filter --decision=sample` does: a uniform draw
        below its acceptance that depends on the seed and the item's id (without ids, its text) alone."""
        items = _items(texts)
        return keyed_draw(self.accept_probs(items), decision_keys(items.texts, ids), seed)

    def score(self, texts: list[str] | Items, top_tokens: int = 0) -> Scored:
        """Score, acceptance and (top_tokens > 0) the strongest tokens of each text."""
        items = _items(texts)
        if top_tokens and hasattr(self.source, "_diffs"):  # a language model: run the models once, not twice
            tokens, diffs = self.source._diffs(items)
            items = Items(items.texts, tokens, **{self.source.diffs_field: diffs})
        log_ratio, explained = log_ratio_and_explanations(self.source, items, top_tokens)
        scores = self.link.apply(log_ratio, self.m)
        up, down = ([pair[i] for pair in explained] for i in (0, 1))
        return Scored(scores, calibration.accept_probs(scores, self.m), up, down)

    # ---- saving and loading ----------------------------------------------------------------------

    def save(self, folder: str | Path, fitted_on: dict[str, Any] | None = None) -> Path:
        """Write the filter into `folder` (the caller builds it beside and swaps it in)."""
        from semcal import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {
            "format_version": FORMAT_VERSION,
            "semcal_version": __version__,
            "filter": self.name,
            "source": self.source.name,
            "calibration": {"name": self.calibration, **self.link.to_dict()},
            "m": self.m,
            "pass_rate": 1.0 / self.m,
            **({"decision_thresholds": self.thresholds.to_dict()} if self.thresholds else {}),
            "source_state": self.source.save(folder),
            "fitted_on": fitted_on or {},
            "stats": files.plain_json(self.stats),
        }
        drift_entry = drift.save(self, folder)
        if drift_entry is not None:
            spec["drift"] = drift_entry
        files.write_json(folder / SPEC_NAME, spec, strict=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Filter:
        """Read and check a filter folder: one sentence naming the file and the field for anything wrong."""
        folder = Path(folder)
        path = folder / SPEC_NAME
        if not path.is_file():
            raise UserError(
                f"{folder} holds no saved filter ({SPEC_NAME}): give a folder written by `semcal fit`, or an "
                "evaluation's RUN_DIR/evaluation/<split>/filter written by `semcal run` or `semcal evaluate`."
            )
        try:
            spec = files.read_json(path)
        except (ValueError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not valid JSON ({err}): the filter is damaged; copy or fit it again.") from None
        if not isinstance(spec, dict):
            raise UserError(f"{path} must hold a JSON object: the filter is damaged; copy or fit it again.")
        version = spec.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            raise UserError(
                f"{path} has format_version {version!r}; this semcal reads the integer {FORMAT_VERSION}: fit the "
                "filter again with this semcal (semcal fit, or re-run the evaluation)."
            )
        m = saved_number(spec, "m", str(path), low=1)
        source_name = spec.get("source")
        source_class = SOURCES.get(source_name) if isinstance(source_name, str) else None
        if source_class is None:
            raise UserError(
                f"{path}: 'source' {spec.get('source')!r} is not one of {sorted(SOURCES)}: the filter is damaged."
            )
        saved_calibration = spec.get("calibration")
        name = saved_calibration.get("name") if isinstance(saved_calibration, dict) else None
        if not isinstance(name, str) or name not in CALIBRATIONS:
            raise UserError(
                f"{path}: the calibration name {name!r} is not one of {sorted(CALIBRATIONS)}: the filter is damaged."
            )
        link = Link.from_dict({k: v for k, v in saved_calibration.items() if k != "name"}, str(path))
        state = spec.get("source_state")
        if not isinstance(state, dict):
            raise UserError(f"{path}: 'source_state' must be a JSON object: the filter is damaged.")
        source = source_class.load(folder, state)
        stats = spec.get("stats") if isinstance(spec.get("stats"), dict) else {}
        loaded = cls(source, name, link, float(m), stats, str(spec.get("filter") or filter_name(source.name, name)))
        if "decision_thresholds" in spec:  # filters saved before decision modes have none
            loaded.thresholds = Thresholds.from_dict(spec["decision_thresholds"], str(path))
        loaded.drift, loaded.label_posterior = drift.load(folder, spec.get("drift"), str(path))
        log.info("loaded filter %s (M %.3g) from %s", loaded.name, loaded.m, folder)
        return loaded


def _items(texts: list[str] | Items) -> Items:
    return texts if isinstance(texts, Items) else Items(list(texts))


def _thresholds(fitted: Filter, stream: np.ndarray, heldout: np.ndarray | None, data: FitData) -> Thresholds:
    """The fitted filter's acceptance quantiles of the stream and of the held-out real rows."""
    accept = calibration.accept_probs(fitted.link.apply(stream, fitted.m), fitted.m)
    real = None
    if heldout is not None and len(heldout) == int(data.heldout.sum()):
        real = calibration.accept_probs(fitted.link.apply(heldout[data.heldout_is_real], fitted.m), fitted.m)
    return Thresholds.of(accept, real)
