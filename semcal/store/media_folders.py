"""A data set from a folder of image or audio files: one split per split-named subfolder (or
every file in general_train), labels from an optional CSV. The files are listed, not decoded
(semcal.store.media decodes them when they are captioned)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from semcal.core.errors import UserError
from semcal.store.data import GENERAL_TEST, GENERAL_TRAIN, alias_splits, dataset_of, read_table
from semcal.store.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES

MEDIA_SPLIT_FOLDERS = ("train", "test", "validation", GENERAL_TRAIN, GENERAL_TEST)


def load_media_folder(
    folder: str | Path,
    kind: str,
    labels_csv: str | Path | None = None,
    media_column: str | None = None,
    split_column: str = "split",
):
    """A `DatasetDict` of the image or audio files under `folder` (kind "image" or "audio").

    Splits: when every file is in a subfolder named after a split (`train/`, `test/`,
    `validation/`, `general_train/`, `general_test/`, `real_train_<d>/`), each subfolder is
    one split; otherwise every file is in `general_train`.
    A labels CSV (optional) has a `file_name` column with paths relative to `folder` and
    any other columns (labels); a `split_column` in it decides the splits instead. Every
    file needs a row and every row a file. Each split has the columns `file_name`, the
    media column (`media_column`, default `kind`) holding the absolute file path, and the
    labels CSV's columns; rows are in file-name order.
    """
    import datasets

    suffixes = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}.get(kind)
    if suffixes is None:
        raise ValueError(f"kind must be 'image' or 'audio', not {kind!r}")
    media_column = media_column or kind
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"media folder {root} does not exist.")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(root).parts)  # hidden files and folders
    )
    if not files:
        raise UserError(f"{root} holds no {kind} files (looked for {', '.join(suffixes)} in it and its subfolders).")
    table = pd.DataFrame({"file_name": files}) if labels_csv is None else _labels_table(labels_csv, root, files)
    if media_column in table.columns:
        raise UserError(f"labels CSV {labels_csv} has a column {media_column!r}, the name given to the file paths.")
    table.insert(1, media_column, [str(root / name) for name in table["file_name"]])

    if split_column in table.columns:
        splits = table.pop(split_column).astype(str)
    else:
        top = [name.split("/", 1)[0] if "/" in name else "" for name in table["file_name"]]
        is_split = [t in MEDIA_SPLIT_FOLDERS or t.startswith("real_train_") for t in top]
        splits = pd.Series(top if all(is_split) else [GENERAL_TRAIN] * len(table))
    dataset_dict = datasets.DatasetDict(
        {str(split): dataset_of(table[splits.values == split]) for split in dict.fromkeys(splits)}
    )
    return alias_splits(dataset_dict)


def _labels_table(labels_csv: str | Path, root: Path, files: list[str]) -> pd.DataFrame:
    """The labels CSV, one row per file of the folder, in file-name order."""
    table = read_table(Path(labels_csv).expanduser())
    if "file_name" not in table.columns:
        raise UserError(
            f"labels CSV {labels_csv} has no file_name column (columns: {list(table.columns)}); add one with "
            f"each file's path relative to {root}."
        )
    table["file_name"] = [Path(str(name)).as_posix() for name in table["file_name"]]
    listed = set(table["file_name"])
    missing = sorted(listed - set(files))
    unlisted = [f for f in files if f not in listed]
    if missing or unlisted:
        raise UserError(
            f"labels CSV {labels_csv} and folder {root} disagree: "
            + (f"{len(missing)} listed files are not in the folder (first: {missing[:5]}); " if missing else "")
            + (f"{len(unlisted)} files have no row in the CSV (first: {unlisted[:5]}); " if unlisted else "")
            + "give every file exactly one row, with its path relative to the folder."
        )
    if table["file_name"].duplicated().any():
        duplicated = sorted(set(table["file_name"][table["file_name"].duplicated()]))
        raise UserError(f"labels CSV {labels_csv} lists files more than once: {duplicated[:5]}.")
    return table.sort_values("file_name", kind="stable").reset_index(drop=True)
