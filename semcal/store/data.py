"""Data sets: load them from wherever they are, check them, and read their labels.

`dataset_name` may be
- a folder written by `DatasetDict.save_to_disk`,
- one CSV / Parquet / JSONL file with a split column (`split_column`),
- a folder of such files, one per split (the file name without extension is the split),
- `split=path,split=path` naming one file per split,
- a Hugging Face Hub id such as `BeyondDeepFakeDetection/CIFAR-100`.

A name is a local path when it cannot be a Hub id (`looks_like_local_path`); a name that
could be either is tried as a local path first, then on the Hub, and an error says both.

The pipeline's split names are those of the paper: `general_train`, `general_test`,
`real_train_<distortion>`. A data set whose splits are called `train` and `test` (and
that has no `general_*` splits) is read with train as general_train and test as
general_test.

Data files are read with pandas, not `datasets.load_dataset("csv", ...)`: that reads CSV
in 10,000-row chunks and fails on a column that is empty in the first chunk, refuses a
file with a header and no rows, and writes a copy of every file into the Hub cache.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal.core.errors import UserError
from semcal.store.labelmap import apply_label_map, load_label_map

GENERAL_TRAIN = "general_train"
GENERAL_TEST = "general_test"
SPLIT_ALIASES = {"train": GENERAL_TRAIN, "test": GENERAL_TEST}
DATA_FILE_SUFFIXES = (".csv", ".parquet", ".jsonl", ".json")


def real_split_name(distortion: str) -> str:
    return f"real_train_{distortion}"


def control_split_name(distortion: str) -> str:
    """A uniform random subset of general_train as large as real_train_<distortion> (matched control)."""
    return f"control_train_{distortion}"


def load_dataset_dict(dataset_name: str, split_column: str = "split"):
    """Load every split of `dataset_name` as a `datasets.DatasetDict`."""
    import datasets

    path = Path(dataset_name).expanduser()
    if "=" in dataset_name and not path.exists():
        files = {}
        for part in dataset_name.split(","):
            split, _, file = part.partition("=")
            files[split.strip()] = Path(file.strip()).expanduser()
        dataset_dict = datasets.DatasetDict({split: dataset_of(read_table(file)) for split, file in files.items()})
    elif path.is_dir() and (path / "dataset_dict.json").exists():
        dataset_dict = datasets.load_from_disk(str(path))
        if not isinstance(dataset_dict, datasets.DatasetDict):
            dataset_dict = datasets.DatasetDict({GENERAL_TRAIN: dataset_dict})
    elif path.is_dir() and (path / "state.json").exists():
        raise UserError(
            f"{path} holds a single Dataset, not a DatasetDict with named splits. Save it as "
            f"DatasetDict({{'general_train': ds, ...}}).save_to_disk(...) or give one file per split."
        )
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in DATA_FILE_SUFFIXES)
        if not files:
            raise UserError(
                f"{path} is a folder with neither a saved data set (dataset_dict.json) nor data files "
                f"({', '.join(DATA_FILE_SUFFIXES)}). Found: {sorted(p.name for p in path.iterdir())[:20]}"
            )
        dataset_dict = datasets.DatasetDict({file.stem: dataset_of(read_table(file)) for file in files})
    elif path.is_file():
        dataset_dict = _split_by_column(read_table(path), path, split_column)
    elif looks_like_local_path(dataset_name):
        raise UserError(f"{dataset_name} does not exist (looked for a file or folder at {path.resolve()}).")
    else:
        dataset_dict = _load_from_hub(dataset_name)
    return alias_splits(dataset_dict)


def dataset_of(table: pd.DataFrame):
    import datasets

    return datasets.Dataset.from_pandas(table.reset_index(drop=True), preserve_index=False)


def _split_by_column(table: pd.DataFrame, path: Path, split_column: str):
    """One split per value of the split column, in order of first appearance."""
    import datasets

    if split_column not in table.columns:
        raise UserError(
            f"{path} has no split column {split_column!r} (columns: {list(table.columns)}). "
            "Set split_column to the column that names each row's split, or give one file per split "
            "(dataset_name='general_train=train.csv,general_test=test.csv')."
        )
    groups = table.groupby(split_column, sort=False)
    return datasets.DatasetDict({str(split): dataset_of(rows.drop(columns=[split_column])) for split, rows in groups})


def looks_like_local_path(name: str) -> bool:
    """True when `name` can only be a local path: a data file's name, or no valid Hub id.

    Hub ids are "name" or "owner/name" (huggingface_hub's own rule); "./x", "/x", "~/x",
    "a/b/c" are paths. A name like "runs/data" could be either: look locally, then on the Hub.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.endswith(DATA_FILE_SUFFIXES):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def hub_or_path_error(name: str, err: BaseException, what: str, local: str, fix: str) -> UserError:
    """The error for a name found neither locally nor on the Hub: it says both, with the absolute path.

    `what` names the thing ("model " or ""), `local` what the path would be ("folder").
    """
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    absolute = Path(name).expanduser().resolve()
    return UserError(
        f"could not load {what}{name!r} from the Hugging Face Hub ({reason}), and it is no local {local} either "
        f"({absolute} does not exist). If it is a local path, correct it; {fix}"
    )


def _load_from_hub(dataset_id: str):
    import datasets

    try:
        return datasets.load_dataset(dataset_id)
    except Exception as err:  # the hub client raises many types for "no network"
        raise hub_or_path_error(
            dataset_id,
            err,
            what="",
            local="file or folder",
            fix="if this machine has no network, save a copy where there is one with "
            f"`datasets.load_dataset({dataset_id!r}).save_to_disk('FOLDER')`, copy FOLDER here and set "
            "dataset_name to its path. (HF_HUB_OFFLINE=1 skips the network retries.)",
        ) from None


def read_table(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"data file {path} does not exist.")
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path, encoding=encoding)
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl", encoding=encoding)
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not valid {encoding} text ({err.reason} at byte {err.start}): set encoding= to the file's "
            "encoding, e.g. encoding=latin-1."
        ) from None
    except LookupError:
        raise UserError(f"encoding={encoding!r} is not an encoding Python knows: e.g. utf-8 or latin-1.") from None
    except Exception as err:  # pandas raises parser-specific types
        raise UserError(f"could not parse {path} as {path.suffix[1:].upper()}: {err}") from None
    raise UserError(f"{path} is not a CSV, Parquet or JSONL file.")


def fingerprint_dataset(dataset) -> str:
    """Short sha256 of a Dataset's column names and values, as stored (media: bytes or paths, never decoded).

    The same rows give the same fingerprint however they were read (CSV or saved folder, any
    chunking), so it can stand for "the data this stage read" in a run's identity.
    """
    digest = hashlib.sha256(json.dumps(dataset.column_names).encode())
    for batch in dataset.with_format("arrow").iter(batch_size=1000):
        digest.update(json.dumps(batch.to_pydict(), default=_json_value).encode())
    return digest.hexdigest()[:16]


def _json_value(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def alias_splits(dataset_dict):
    names = set(dataset_dict)
    if names & {GENERAL_TRAIN, GENERAL_TEST}:
        return dataset_dict
    renames = {old: new for old, new in SPLIT_ALIASES.items() if old in names}
    for old, new in renames.items():
        dataset_dict[new] = dataset_dict.pop(old)
    return dataset_dict


def get_split(dataset_dict, split: str):
    if split not in dataset_dict:
        raise UserError(f"no split {split!r}; the data set has splits {sorted(dataset_dict)}.")
    return dataset_dict[split]


def require_columns(dataset, split: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"split {split!r} has no column {', '.join(map(repr, missing))}; its columns are "
            f"{dataset.column_names}. Set text_column / label_column to one of them."
        )


def _first_ids(mask: np.ndarray, n: int = 5) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)[:n]]


def texts_of(dataset, split: str, text_column: str) -> list[str]:
    """The texts of a split; an error names the empty ones (count and first row ids)."""
    require_columns(dataset, split, [text_column])
    texts = dataset[text_column]
    empty = np.array([not isinstance(t, str) or not t.strip() for t in texts], dtype=bool)
    if empty.any():
        raise UserError(
            f"split {split!r} has {int(empty.sum())} empty or missing texts in column {text_column!r} "
            f"(first row ids: {_first_ids(empty)}). Drop or fill those rows before running."
        )
    return list(texts)


def labels_of(dataset, split: str, label_column: str, label_map: str | None = None) -> np.ndarray:
    """The labels of a split as strings, mapped through `label_map` if one is set."""
    require_columns(dataset, split, [label_column])
    raw = dataset[label_column]
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" for v in raw])
    if missing.any():
        raise UserError(
            f"split {split!r} has {int(missing.sum())} missing labels in column {label_column!r} "
            f"(first row ids: {_first_ids(missing)}). Drop or label those rows before running."
        )
    labels = np.array([_label_str(v) for v in raw], dtype=object)
    if label_map:
        labels = apply_label_map(labels, load_label_map(label_map))
    return labels


def _label_str(value) -> str:
    # Integer labels read from CSV may arrive as floats (1.0); name them as written.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_counts(labels: Sequence[str], order: Sequence[str] | None = None) -> pd.Series:
    """Counts per label, in `order` if given (labels absent get 0)."""
    counts = pd.Series(labels, dtype=object).value_counts()
    if order is not None:
        counts = counts.reindex(list(order), fill_value=0)
    return counts.astype(int)


GENERAL_ROW_COLUMN = "general_train_row"


def general_rows_of(split, split_name: str, n_general_train: int) -> np.ndarray | None:
    """The general_train row of each row of a real split (its `general_train_row` column).

    None when the split has no such column (it was not made by distort). Values outside
    general_train are an error: the split was made from another data set.
    """
    if GENERAL_ROW_COLUMN not in split.column_names:
        return None
    rows = np.asarray(split[GENERAL_ROW_COLUMN], dtype=np.int64)
    bad = (rows < 0) | (rows >= n_general_train)
    if bad.any():
        raise UserError(
            f"split {split_name!r}: {int(bad.sum())} values of {GENERAL_ROW_COLUMN} lie outside general_train's "
            f"rows 0..{n_general_train - 1} (first: {int(rows[bad][0])}); was the split made from another data set?"
        )
    return rows


def match_general_rows(split, split_name: str, general, text_column: str, label_column: str) -> np.ndarray:
    """The general_train row of each row of `split` found by its text and label; -1 where none is left.

    For a real split that lacks distort's general_train_row column (one a data set ships, as
    the paper's Hub data sets do). Each general_train row is used once, in order, so a text
    the split holds twice needs two copies in general_train.
    """
    free: dict[tuple[str, str], deque[int]] = defaultdict(deque)
    general_keys = zip(
        texts_of(general, GENERAL_TRAIN, text_column), labels_of(general, GENERAL_TRAIN, label_column), strict=True
    )
    for row, key in enumerate(general_keys):
        free[key].append(row)
    keys = zip(texts_of(split, split_name, text_column), labels_of(split, split_name, label_column), strict=True)
    return np.array([free[key].popleft() if free.get(key) else -1 for key in keys], dtype=np.int64)


def heldout_mask(general_rows: Sequence[int], n_general_train: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Which rows are held out for evaluation, decided once for the whole of general_train.

    Every model of a data set uses this one assignment: a real_train split is a subset of
    general_train (its `general_train_row` column), so a row held out from the general
    model is held out from every real model too. That keeps early stopping honest when a
    real model starts from the general one, and leaves texts that no model trained on for
    calibrating scores.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be between 0 and 1 (got {eval_fraction}).")
    order = np.random.default_rng(seed).permutation(n_general_train)
    heldout = np.zeros(n_general_train, dtype=bool)
    heldout[order[: max(1, round(eval_fraction * n_general_train))]] = True
    return heldout[np.asarray(general_rows, dtype=int)]


HELDOUT_COLUMN = "heldout"  # a split's own held-out mask (semcal fit's language models: held out by text)
HELDOUT_EXPLICIT = f"{HELDOUT_COLUMN} column (held-out rows chosen by text)"
HELDOUT_OF_GENERAL = "general_train rows"
HELDOUT_SHARED = f"{GENERAL_ROW_COLUMN} column (held-out rows shared with every model of the data set)"
HELDOUT_OWN_ROWS = "own rows (no general_train_row column: held-out rows are NOT those of the general model)"


def heldout_rows(dataset_dict, split_name: str, eval_fraction: float, split_seed: int) -> tuple[np.ndarray, str]:
    """Boolean mask over the rows of `split_name` (True = held out) and where it came from.

    A split with a `heldout` column (bool): that column. general_train: `heldout_mask` over
    its rows. A real split: the same mask looked up through its general_train_row column, so
    held-out rows are shared by all models. A split without either column falls back to a
    seeded split of its own rows (HELDOUT_OWN_ROWS).
    """
    split = get_split(dataset_dict, split_name)
    if HELDOUT_COLUMN in split.column_names:
        return np.asarray(split[HELDOUT_COLUMN], dtype=bool), HELDOUT_EXPLICIT
    if split_name != GENERAL_TRAIN and GENERAL_ROW_COLUMN in split.column_names and GENERAL_TRAIN in dataset_dict:
        n_general = len(dataset_dict[GENERAL_TRAIN])
        rows = general_rows_of(split, split_name, n_general)
        return heldout_mask(rows, n_general, eval_fraction, split_seed), HELDOUT_SHARED
    source = HELDOUT_OF_GENERAL if split_name == GENERAL_TRAIN else HELDOUT_OWN_ROWS
    return heldout_mask(np.arange(len(split)), len(split), eval_fraction, split_seed), source


def general_fingerprint(dataset_dict, text_column: str) -> str | None:
    """Fingerprint of the data set's general_train texts: what "the same data set" means to its models."""
    from semcal.store.files import fingerprint_texts

    if GENERAL_TRAIN not in dataset_dict:
        return None
    return fingerprint_texts(texts_of(dataset_dict[GENERAL_TRAIN], GENERAL_TRAIN, text_column))


def load_corpus(
    name: str,
    what: str,
    text_column: str,
    label_column: str | None = None,
    label_map: str | None = None,
    encoding: str = "utf-8",
):
    """One corpus (semcal fit's real or general): its texts and, given `label_column`, labels.

    `name` is a CSV / Parquet / JSONL file (every row, text files read in `encoding`), or
    anything load_dataset_dict reads holding one split, or `PATH:SPLIT` naming the split of a
    data set with several.
    """
    path = Path(name).expanduser()
    if path.is_file():
        table, split = read_table(path, encoding), what
        corpus = dataset_of(table)
    else:
        base, _, split = name.rpartition(":") if ":" in name and not Path(name).exists() else (name, "", "")
        dataset_dict = load_dataset_dict(base)
        if not split:
            if len(dataset_dict) != 1:
                raise UserError(
                    f"{what}={name} holds the splits {sorted(dataset_dict)}: name the one to use as {what}={name}:SPLIT."
                )
            split = next(iter(dataset_dict))
        corpus = get_split(dataset_dict, split)
    if len(corpus) == 0:
        raise UserError(f"{what}={name} holds no rows: give a corpus of texts.")
    texts = texts_of(corpus, split, text_column)
    labels = labels_of(corpus, split, label_column, label_map) if label_column else None
    return texts, labels
