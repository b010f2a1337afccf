"""What the captioning stages read: the data set, the splits and rows to caption, checked.

The input is a folder of image or audio files (with an optional labels CSV), or any data
set `semcal.store.data.load_dataset_dict` reads. Every check runs before a model is loaded:
splits, the media column and its type, the caption column, empty splits.
`fingerprints` stands for the data read in the run's identity (semcal.store.runstate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcal.core.errors import UserError
from semcal.store import data, media_folders
from semcal.store.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES


@dataclass
class CaptionInputs:
    dataset_dict: Any  # the DatasetDict as loaded (media columns as they were)
    splits: list[str]  # splits to caption, in order
    rows: dict[str, int]  # rows to caption per split (the first N rows)
    media_folder: bool  # read from a folder of media files: the media column holds absolute paths


def load_inputs(config: Any, kind: str, media_column: str) -> CaptionInputs:
    """Load the data set and check splits, media column, caption column and sizes."""
    path = Path(config.dataset_name).expanduser()
    suffixes = IMAGE_SUFFIXES if kind == "image" else AUDIO_SUFFIXES
    media_folder = path.is_dir() and (
        config.labels_csv is not None
        or (
            not (path / "dataset_dict.json").exists()
            and not any(p.suffix in data.DATA_FILE_SUFFIXES for p in path.iterdir())
            and any(p.suffix.lower() in suffixes for p in path.rglob("*"))
        )
    )
    if media_folder:
        dataset_dict = media_folders.load_media_folder(path, kind, config.labels_csv, media_column, config.split_column)
    elif config.labels_csv is not None:
        raise UserError(
            f"labels_csv is only for a folder of {kind} files, and {config.dataset_name} is not a folder. "
            "Put the labels in the data set itself, or clear labels_csv."
        )
    else:
        dataset_dict = data.load_dataset_dict(config.dataset_name, config.split_column)

    splits = list(dict.fromkeys(config.splits)) or list(dataset_dict)
    if not splits:
        raise UserError(f"{config.dataset_name} has no rows: nothing to caption.")
    unknown = [s for s in splits if s not in dataset_dict]
    if unknown:
        raise UserError(f"no split {', '.join(map(repr, unknown))}; the data set has splits {sorted(dataset_dict)}.")
    rows = {split: _rows_to_caption(config, dataset_dict[split], split, kind, media_column) for split in splits}
    return CaptionInputs(dataset_dict, splits, rows, media_folder)


def _rows_to_caption(config: Any, dataset: Any, split: str, kind: str, media_column: str) -> int:
    if media_column not in dataset.column_names:
        raise UserError(
            f"split {split!r} has no column {media_column!r}; its columns are {dataset.column_names}. "
            f"Set {kind}_column to the column that holds the {kind} items."
        )
    rows = len(dataset) if config.max_items is None else min(len(dataset), config.max_items)
    if rows == 0:
        raise UserError(
            f"split {split!r} of {config.dataset_name} is empty: nothing to caption. Leave it out with the splits setting."
        )
    _check_media_feature(dataset.features[media_column], split, media_column, kind)
    if config.caption_column in dataset.column_names:
        raise UserError(
            f"split {split!r} already has a column {config.caption_column!r}; set caption_column to a new name."
        )
    return rows


def _check_media_feature(feature: Any, split: str, column: str, kind: str) -> None:
    import datasets

    if isinstance(feature, datasets.Value) and feature.dtype not in (
        "string",
        "large_string",
        "binary",
        "large_binary",
    ):
        raise UserError(
            f"column {column!r} of split {split!r} holds {feature.dtype} values, not {kind} items (datasets "
            f"{kind.capitalize()} values, bytes or file paths). Set {kind}_column to the column with the {kind}s."
        )


def undecoded(dataset: Any, column: str) -> Any:
    """Read datasets Image/Audio columns as bytes/paths: semcal.store.media decodes them, one item at a time,
    so that one corrupt file is recorded instead of stopping the run (and no torchcodec is needed)."""
    import datasets

    feature = dataset.features[column]
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, datasets.Audio) and feature.decode:
        return dataset.cast_column(column, datasets.Audio(decode=False))
    return dataset


def fingerprints(inputs: CaptionInputs, media_column: str) -> dict[str, str]:
    """A fingerprint of the rows captioned, per split.

    Files of a media folder are known by their path relative to the folder and their size
    (their absolute path says where the folder is, not what it holds; reading every clip
    to hash it would take long): a moved folder continues, a replaced file re-runs.
    """
    prints = {}
    for split in inputs.splits:
        rows = inputs.dataset_dict[split]
        if inputs.rows[split] < len(rows):
            rows = rows.select(range(inputs.rows[split]))
        if inputs.media_folder:
            sizes = [os.path.getsize(path) for path in rows[media_column]]
            rows = rows.remove_columns([media_column]).add_column("file_size", sizes)
        prints[split] = data.fingerprint_dataset(rows)
    return prints
