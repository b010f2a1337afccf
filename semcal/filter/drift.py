"""What a saved filter carries for adaptation and drift alarms (semcal.stream.adapt), saved and loaded.

The filter folder's `drift/` holds `reference.safetensors` (the source's log-ratio of a seeded
sample of at most REFERENCE_SIZE texts of the stream the filter was fitted on and, for a filter
fitted with labels, their label posterior and the stream's prior) and, for such a filter, its
label posterior P(y | x) (a label-posterior source, semcal.filter.sources). filter.json's `drift` entry
names them; a filter without the entry (saved before) loads as before, without adaptation by
prior or alarms. Everything read is checked as the rest of the filter is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core.errors import UserError
from semcal.filter.drift_alarms import DriftReference, reference_of
from semcal.filter.sources import LabelPosteriorSource, Source, fit_source, read_arrays
from semcal.store import files

log = logging.getLogger(__name__)

FOLDER = "drift"
REFERENCE_NAME = "reference.safetensors"
REFERENCE_SIZE = 5000  # reference texts kept at most: enough for 1,000 bootstrap windows of 500
LABEL_POSTERIOR = "label_posterior"


def reference_for(model: Any) -> tuple[DriftReference | None, Source | None]:
    """The drift reference and label posterior of a filter fitted in this process (None: nothing to keep)."""
    data = getattr(model, "fit_data", None)
    if data is None or model.fitted_stream is None:
        return None, None
    label_posterior = None
    if model.source.name == LABEL_POSTERIOR:
        label_posterior = model.source
    elif data.has("labels"):
        label_posterior = fit_source(data, LABEL_POSTERIOR)[0]  # shared with the evaluation's own reference
    return reference_of(model.fitted_stream, label_posterior, data, REFERENCE_SIZE, data.seed), label_posterior


def save(model: Any, folder: Path) -> dict[str, Any] | None:
    """Write the filter's drift reference into folder/drift; its filter.json entry (None: none to write)."""
    reference, label_posterior = reference_for(model)
    if reference is None:
        return None
    where = Path(folder) / FOLDER
    where.mkdir(parents=True, exist_ok=True)
    arrays = {"log_ratio": reference.log_ratio}
    entry: dict[str, Any] = {"reference": f"{FOLDER}/{REFERENCE_NAME}", "texts": len(reference.log_ratio)}
    if label_posterior is not None:
        arrays.update(posterior=reference.posterior, stream_prior=reference.stream_prior)
        entry["label_posterior"] = {"folder": FOLDER, **label_posterior.save(where)}
    files.write_safetensors(where / REFERENCE_NAME, {k: np.asarray(v, np.float64) for k, v in arrays.items()})
    return entry


def load(folder: Path, entry: Any, where: str) -> tuple[DriftReference | None, Source | None]:
    """The drift reference and label posterior of a saved filter's `drift` entry (None when absent)."""
    if entry is None:
        return None, None
    if not isinstance(entry, dict) or entry.get("reference") != f"{FOLDER}/{REFERENCE_NAME}":
        raise UserError(f"{where}: 'drift' must name {FOLDER}/{REFERENCE_NAME}: the filter is damaged.")
    saved_posterior = entry.get("label_posterior")
    if saved_posterior is not None and (
        not isinstance(saved_posterior, dict) or saved_posterior.get("folder") != FOLDER
    ):
        raise UserError(f"{where}: 'drift' 'label_posterior' must be saved in {FOLDER}/: the filter is damaged.")
    label_posterior = None if saved_posterior is None else LabelPosteriorSource.load(folder / FOLDER, saved_posterior)
    k = None if label_posterior is None else len(label_posterior.classes)
    shapes: dict[str, tuple[int | None, ...]] = {"log_ratio": (None,)}
    if k is not None:
        shapes.update(posterior=(None, k), stream_prior=(k,))
    arrays = read_arrays(folder / FOLDER, REFERENCE_NAME, shapes)
    n = len(arrays["log_ratio"])
    if n < 10 or (k is not None and len(arrays["posterior"]) != n):
        raise UserError(
            f"{folder / FOLDER / REFERENCE_NAME}: the reference needs at least 10 texts, as many posteriors as "
            "log-ratios: the filter is damaged."
        )
    if k is None:
        return DriftReference(arrays["log_ratio"]), None
    prior = arrays["stream_prior"]
    if np.any(prior < 0) or not np.isclose(prior.sum(), 1.0, atol=1e-6):
        raise UserError(
            f"{folder / FOLDER / REFERENCE_NAME}: 'stream_prior' is not a distribution: the filter is damaged."
        )
    reference = DriftReference(arrays["log_ratio"], arrays["posterior"], list(label_posterior.classes), prior)
    return reference, label_posterior
