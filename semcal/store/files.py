"""Reading and writing artifacts: JSON records, CSV tables, figures, data-set folders,
and the chunked writer that makes long stages resumable. (Named `files`, not `io`, so it
never shadows the standard library's io.)

Every file the package writes goes through this module, and each write is atomic
(written beside the target, then renamed) so an interrupted stage never leaves a
half-written artifact in place of a good one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

RECORD_NAME = "semcal_record.json"

# Captions may be long; the csv module's default field limit (128 KiB) is too small for
# per-token lists of long texts.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: Any, strict: bool = False) -> Path:
    """Write `data` as indented JSON. strict: plain JSON that every reader accepts (see `plain_json`),
    for results read by other tools; otherwise Python's NaN / Infinity are written as they are."""
    if strict:
        data = plain_json(data)
    text = json.dumps(data, indent=2, sort_keys=False, default=json_default, allow_nan=not strict)
    return write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def json_default(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def plain_json(value: Any) -> Any:
    """`value` as plain JSON values: NaN as None (null), infinities as the strings "inf" / "-inf",
    numpy values and paths as Python ones, tuples as lists, keys as strings."""
    if isinstance(value, dict):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(item) for item in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return float(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return plain_json(json_default(value))


def write_record(folder: str | Path, stage: str, config: dict[str, Any], **details: Any) -> Path:
    """Record next to an artifact the stage and config that produced it (and any details)."""
    from semcal import __version__

    record = {
        "stage": stage,
        "semcal_version": __version__,
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "config": config,
        **details,
    }
    return write_json(Path(folder) / RECORD_NAME, record)


def read_record(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / RECORD_NAME
    return read_json(path) if path.exists() else None


def fingerprint_file(path: str | Path) -> str:
    """Short sha256 of a file's bytes, to tie a result to the inputs it read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def fingerprint_texts(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def write_csv(path: str | Path, table: pd.DataFrame) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_csv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"could not parse {path} as CSV: {err}") from None


def save_figure(figure: Any, path_stem: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Save a matplotlib figure as path_stem.<fmt> for each format; returns the paths."""
    import matplotlib.pyplot as plt

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.{fmt}")
        figure.savefig(tmp, dpi=150, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path)
    plt.close(figure)
    return paths


def save_animation(animation: Any, writer: Any, path: str | Path, progress_callback: Any = None) -> Path:
    """Save a matplotlib animation atomically; the temporary file keeps the suffix the writer reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    animation.save(str(tmp), writer=writer, progress_callback=progress_callback)
    os.replace(tmp, path)
    return path


def _write_folder(folder: str | Path, write: Any, keep_files: bool) -> Path:
    """Let `write(tmp)` fill a temporary folder beside `folder`, then swap it in (`swap_in`)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    return swap_in(tmp, folder, keep_files)


def swap_in(new: str | Path, folder: str | Path, keep_files: bool = False) -> Path:
    """Replace `folder` by the complete folder `new` (a sibling), by renames.

    A crash leaves either the old folder or the complete new one, never a half-written one.
    With keep_files, plain files of the old folder that the new one lacks (records, tables,
    figures written beside a data set) are carried over.
    """
    new, folder = Path(new), Path(folder)
    if folder.exists():
        if keep_files:
            for extra in folder.iterdir():
                if not (new / extra.name).exists() and extra.is_file():
                    shutil.copy2(extra, new / extra.name)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(new, folder)
        shutil.rmtree(old)
    else:
        os.replace(new, folder)
    return folder


def save_dataset_dict(dataset_dict: Any, folder: str | Path) -> Path:
    """save_to_disk atomically; files written beside the splits survive the swap."""
    return _write_folder(folder, lambda tmp: dataset_dict.save_to_disk(str(tmp)), keep_files=True)


class ChunkedTableWriter:
    """Append rows in chunks that survive a kill; finish into one CSV sorted by key.

    Each chunk is written to `<output>.parts/part-[WRITER]NNNNNN.csv` atomically, so a killed
    run loses at most the chunk it was computing. On restart, `done_keys` tells the
    stage what to skip. `finish` writes rows sorted by `key_column` into `output`, so a
    resumed run gives a byte-identical file to an uninterrupted one. Values are stored
    as the strings first written, never re-parsed and re-formatted.
    """

    def __init__(self, output: str | Path, columns: Sequence[str], key_column: str, writer: str = ""):
        self.output = Path(output)
        self.columns = list(columns)
        self.key_column = key_column
        self.parts_dir = self.output.with_name(self.output.name + ".parts")
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        # Several processes share one parts folder, each naming its chunks part-<writer>NNNNNN.csv.
        self.writer = writer
        self._next_part = 0
        self.done_keys: set[str] = set()
        for part in sorted(self.parts_dir.glob("part-*.csv")):
            header, rows = _read_rows(part)
            if header != self.columns:
                raise ValueError(
                    f"{part} has columns {header}, but this run writes {self.columns}: the "
                    f"unfinished output in {self.parts_dir} was made with other settings. "
                    "Delete that folder to start over, or restore the earlier settings."
                )
            key_index = self.columns.index(key_column)
            self.done_keys.update(row[key_index] for row in rows)
            name = part.stem.removeprefix("part-")
            if name.startswith(writer) and name[len(writer) :].isdigit():
                self._next_part = max(self._next_part, int(name[len(writer) :]) + 1)

    def write_chunk(self, rows: Iterable[Sequence[Any]]) -> None:
        rows = [[_cell(value) for value in row] for row in rows]
        if not rows:
            return
        path = self.parts_dir / f"part-{self.writer}{self._next_part:06d}.csv"
        tmp = _tmp_path(path)
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        self._next_part += 1
        key_index = self.columns.index(self.key_column)
        self.done_keys.update(row[key_index] for row in rows)

    def finish(self, sort_key: Any = int) -> Path:
        """Merge the chunks into `output`, sorted by key, and remove the chunk folder."""
        key_index = self.columns.index(self.key_column)
        merged: dict[str, list[str]] = {}
        for part in sorted(self.parts_dir.glob("part-*.csv")):
            for row in _read_rows(part)[1]:
                merged[row[key_index]] = row
        tmp = _tmp_path(self.output)
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            writer.writerows(merged[key] for key in sorted(merged, key=sort_key))
        os.replace(tmp, self.output)
        shutil.rmtree(self.parts_dir)
        return self.output


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        return header, list(reader)


def save_pretrained(folder: str | Path, *objects: Any) -> Path:
    """`obj.save_pretrained` (model, tokenizer) for each object, atomically (see _write_folder)."""

    def write(tmp: Path) -> None:
        for obj in objects:
            obj.save_pretrained(str(tmp))

    return _write_folder(folder, write, keep_files=False)


def write_safetensors(path: str | Path, arrays: dict[str, Any]) -> Path:
    """Numpy arrays as a safetensors file (plain tensors, safe to load from anyone; never pickle)."""
    from safetensors.numpy import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors' save_file creates its file mode 0600; the bytes written as every other file here
    # get the usual permissions (the umask's), so a filter folder can be shared like the rest of a run.
    data = save({name: _contiguous(array) for name, array in arrays.items()})
    tmp = _tmp_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def read_safetensors(path: str | Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _contiguous(array: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(array)


class RecordWriter:
    """Write records (dicts) as JSON lines or CSV rows to a file or standard output ("-"), a
    batch at a time, each batch flushed so a reader sees every decision as soon as it is made.

    A file is built beside its target (`.NAME.tmp-PID`) and moved into place only when the
    `with` block ends without an error: a failed or interrupted run leaves an existing output
    as it was, never a partial one in its place. Standard output is written as it comes.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]):
        self.columns = list(columns)
        self.to_stdout = str(path) == "-"
        self.format = "jsonl" if self.to_stdout or Path(path).suffix.lower() != ".csv" else "csv"
        if self.to_stdout:
            self.path, self.handle = None, sys.stdout
        else:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(_tmp_path(self.path), "w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.handle, self.columns, extrasaction="ignore") if self.format == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()
        self.written = 0

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            if self.csv is not None:
                self.csv.writerow({key: _cell(value) for key, value in record.items()})
            else:
                self.handle.write(json.dumps(plain_json(record), ensure_ascii=False) + "\n")
            self.written += 1
        self.handle.flush()

    def write_columns(self, columns: dict[str, Any]) -> None:
        """Many records at once, given as equal-length columns (lists or arrays; None or NaN: the field
        does not apply). CSV goes through pandas' writer in one call; a JSON line leaves such fields out."""
        if not columns or not len(next(iter(columns.values()))):
            return
        if self.csv is not None:
            frame = pd.DataFrame({name: columns.get(name) for name in self.columns})
            frame.to_csv(self.handle, header=False, index=False, lineterminator="\r\n")  # the csv module's line end
            self.written += len(frame)
        else:
            names = list(columns)
            rows = zip(*(_plain_column(columns[name]) for name in names), strict=True)
            lines = [
                json.dumps({k: v for k, v in zip(names, row, strict=True) if v is not None}, ensure_ascii=False)
                for row in rows
            ]
            self.handle.write("\n".join(lines) + "\n")
            self.written += len(lines)
        self.handle.flush()

    def close(self) -> None:
        """Swap the complete file in for the target."""
        if self.path is None:
            return
        self.handle.close()
        os.replace(_tmp_path(self.path), self.path)

    def discard(self) -> None:
        """Drop what was written; the target stays as it was."""
        if self.path is None:
            return
        self.handle.close()
        _tmp_path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, error_type: Any, *exc: Any) -> None:
        if error_type is None:
            self.close()
        else:
            self.discard()


def _plain_column(values: Any) -> list[Any]:
    """A column as plain Python values for JSON, NaN as None (a field that does not apply)."""
    if hasattr(values, "dtype") and values.dtype.kind == "f":
        return [None if value != value else value for value in values.tolist()]
    return values.tolist() if hasattr(values, "tolist") else list(values)


def same_path(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file or folder (the same path, a link to it, or a hard link)."""
    first, second = Path(first).expanduser(), Path(second).expanduser()
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    except OSError:
        pass
    return first.resolve() == second.resolve()


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the temporary files (`.NAME.tmp-PID`) that killed writers of `path` left beside it.

    Call it only while holding `path`'s lock (semcal.store.runstate.hold_lock): then no live writer owns one.
    """
    path = Path(path)
    leftovers = sorted(path.parent.glob(f".{path.name}.tmp-*")) if path.parent.is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def read_parquet(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)
