"""How a source saves itself into a filter folder and reads it back, checked: arrays
(safetensors), vocabularies (JSON), numbers and model paths; a damaged folder is refused in
one sentence naming the file and the field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core.errors import UserError
from semcal.store import files


def write_arrays(folder: Path, file_name: str, arrays: dict[str, np.ndarray]) -> str:
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


def saved_form(saved: dict[str, Any], folder: Path) -> str:
    form = saved.get("form")
    if form not in ("subset", "pooled"):
        raise UserError(f"{folder} source: 'form' must be 'subset' or 'pooled' (got {form!r}): the filter is damaged.")
    return form


def model_path_entry(path: str, folder: Path) -> dict[str, str]:
    """A local model's path relative to the filter folder (a run moved whole still loads) and
    absolute (a filter folder moved alone still loads); a Hub id as it is."""
    if not Path(path).exists():
        return {"path": path}
    absolute = Path(path).resolve()
    return {"path": os.path.relpath(absolute, Path(folder).resolve()), "absolute_path": str(absolute)}


