"""The filter stage's input, read in batches of columns (semcal.stream.filter_stream applies the filter).

A CSV or Parquet file is read in chunks of rows, checked column-wise (pandas' vectorised string
operations), never item by item. JSON lines, text lines and standard input are parsed line by
line, since each line can be bad on its own. Either way a batch is four columns: the line (or
row) number, the id, the text (None for an error record) and the error.

Every format has the same rules: an empty (or blank) text and a text over MAX_TEXT_BYTES get an
error record naming the line or row; blank lines of a line format are skipped, counted and said
once at the end; an error record carries the input's id when it has one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal.core.errors import UserError
from semcal.store import files, text_lines

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet", "text")
MEDIA = "media"  # the input is a folder of images or audio clips, captioned first
MAX_TEXT_BYTES = text_lines.MAX_LINE_BYTES  # one limit for a text of any format (and a line of a line format)
TOO_LONG = text_lines.LONG_LINE


@dataclass
class Batch:
    """Items in input order: line (or row) numbers, ids, texts (None: an error record), errors."""

    lines: list[int] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, item: dict[str, Any]) -> None:
        self.lines.append(item["line"])
        self.ids.append(item.get("id"))
        self.texts.append(item.get("text") if "error" not in item else None)
        self.errors.append(item.get("error"))


@dataclass
class Skipped:
    """Blank lines of a line format, skipped: counted and said once."""

    lines: list[int] = field(default_factory=list)
    count: int = 0

    def add(self, number: int) -> None:
        self.count += 1
        if len(self.lines) < 5:
            self.lines.append(number)

    def report(self, source: str) -> None:
        if self.count:
            shown = ", ".join(map(str, self.lines)) + (", ..." if self.count > len(self.lines) else "")
            log.warning("filter: %d blank lines of %s were skipped (lines %s)", self.count, source, shown)


def read_batches(config: Any, input_format: str, size: int, skipped: Skipped) -> Iterator[Batch]:
    """Batches holding at most `size` texts (error records ride along) of the input."""
    if input_format in ("csv", "parquet"):
        yield from _table_batches(config, input_format, size)
        return
    if input_format == MEDIA:
        items = _media_items(config)
    else:
        lines = _lines(config)
        items = _text_items(lines, skipped) if input_format == "text" else _json_items(config, lines, skipped)
    batch, texts = Batch(), 0
    for item in items:
        batch.add(item)
        texts += "error" not in item
        if texts >= size:
            yield batch
            batch, texts = Batch(), 0
    if len(batch):
        yield batch


# ---- tables: column-wise ---------------------------------------------------------------------------


def _table_batches(config: Any, input_format: str, size: int) -> Iterator[Batch]:
    row = 0
    for chunk in _table_chunks(config, input_format, size):
        if chunk.empty:  # a header alone: no rows
            continue
        for column in (config.text_column, config.id_column):
            if column and column not in chunk.columns:
                raise UserError(
                    f"{config.input} has no column {column!r} (it has {', '.join(map(str, chunk.columns))}): "
                    "set text_column (and id_column) to the right ones."
                )
        numbers = np.arange(row + 1, row + 1 + len(chunk))
        row += len(chunk)
        texts = chunk[config.text_column]
        texts = texts.where(texts.notna(), "").astype(str)  # Parquet: None and non-strings
        empty = texts.str.strip().str.len().to_numpy() == 0
        errors = np.full(len(chunk), None, dtype=object)
        errors[empty] = [f"row {n}: empty text (nothing to filter)" for n in numbers[empty]]
        long = np.flatnonzero(texts.str.len().to_numpy() > MAX_TEXT_BYTES // 4)  # 4 bytes a character at most
        for position in long:
            if len(texts.iat[position].encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
                errors[position] = f"row {numbers[position]}: the text is {TOO_LONG}"
        text_list = texts.tolist()
        for position in np.flatnonzero(errors != None):  # noqa: E711 (element-wise)
            text_list[position] = None
        ids = chunk[config.id_column].tolist() if config.id_column else numbers.tolist()
        yield Batch(numbers.tolist(), ids, text_list, errors.tolist())


def _table_chunks(config: Any, input_format: str, size: int) -> Iterator[pd.DataFrame]:
    """The CSV's or Parquet file's rows in chunks of `size`; a file that is not of that format or
    encoding is one sentence with the setting that fixes it. An empty file has none."""
    try:
        if input_format == "parquet":
            table = files.read_parquet(config.input)
            for start in range(0, len(table), size):
                yield table.iloc[start : start + size]
            return
        yield from files.read_csv(
            config.input,
            keep_default_na=False,
            dtype=str,
            chunksize=size,
            encoding=config.encoding,
            skip_blank_lines=False,  # a blank row is an empty text: an error record, and rows keep their numbers
        )
    except UserError:
        raise
    except pd.errors.EmptyDataError:  # 0 bytes: no texts, which the caller says
        return
    except (ValueError, OSError) as err:
        decoding = err if isinstance(err, UnicodeDecodeError) else err.__context__
        if isinstance(decoding, UnicodeDecodeError):
            raise UserError(
                f"{config.input} cannot be read as {config.encoding} text (byte {decoding.object[decoding.start]:#04x} "
                f"at byte {decoding.start + 1}): set encoding to the file's encoding (e.g. --encoding=latin-1)."
            ) from None
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"{config.input} cannot be read as {input_format} ({first_line}): set input_format to the file's format "
            f"({', '.join(FORMATS)}), or leave it unset to go by the file's extension."
        ) from None


# ---- line formats: line by line ----------------------------------------------------------------------


Item = dict[str, Any]


def _lines(config: Any) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, problem) of the input's lines, each decoded on its own.

    A line that cannot be decoded gets its problem and the lines after it still come. A file
    whose first line already cannot be decoded is refused instead: it is binary or in another
    encoding, which one setting fixes, and every line would be an error record.
    """
    undecodable: list[int] = []
    seen_text = False
    for number, (text, problem) in enumerate(text_lines.iter_lines(config.input, config.encoding), 1):
        if problem is None and not text.strip():
            yield number, text, None
            continue
        if problem and problem != text_lines.LONG_LINE:
            if not seen_text and config.input != "-":
                raise UserError(
                    f"{config.input} cannot be read as {config.encoding} text (line {number}: {problem}): set "
                    f"encoding to the file's encoding (e.g. --encoding=latin-1), or convert the file to {config.encoding}."
                )
            undecodable.append(number)
        seen_text = True
        yield number, text, problem
    if undecodable:
        log.warning(
            "filter: %d lines of %s could not be read as %s text and got error records (the first: line %d); if the "
            "input is in another encoding, set --encoding (e.g. --encoding=latin-1)",
            len(undecodable),
            "standard input" if config.input == "-" else config.input,
            config.encoding,
            undecodable[0],
        )


def _text_items(lines: Iterator[tuple[int, str, str | None]], skipped: Skipped) -> Iterator[Item]:
    """One item per non-blank line of plain text."""
    for number, text, problem in lines:
        if problem:
            yield {"line": number, "id": number, "error": f"line {number}: {problem}"}
        elif text.strip():
            yield {"line": number, "id": number, "text": text}
        else:
            skipped.add(number)


def _json_items(config: Any, lines: Iterator[tuple[int, str, str | None]], skipped: Skipped) -> Iterator[Item]:
    """Items of JSON lines; a bad line becomes an error record. The text column missing from the
    first object, before any text was read, is a wrong setting rather than a bad line."""
    seen_text = False
    for number, line, problem in lines:
        if not problem and not line.strip():
            skipped.add(number)
            continue
        item: dict[str, Any] = {}
        if not problem:
            problem, item = _parse_line(line, config)
        if problem and not seen_text and problem.startswith("no "):
            raise UserError(
                f"line {number} of {config.input} has {problem}: set text_column (and id_column) to its fields."
            )
        identifier = item.get("id", None if config.id_column else number)
        if problem:
            yield {"line": number, "id": identifier, "error": f"line {number}: {problem}"}
            continue
        seen_text = True
        if not item["text"].strip():
            yield {"line": number, "id": identifier, "error": f"line {number}: empty text (nothing to filter)"}
        elif len(item["text"]) > MAX_TEXT_BYTES // 4 and len(item["text"].encode("utf-8")) > MAX_TEXT_BYTES:
            yield {"line": number, "id": identifier, "error": f"line {number}: the text is {TOO_LONG}"}
        else:
            yield {"line": number, "id": identifier, "text": item["text"]}


def _parse_line(line: str, config: Any) -> tuple[str | None, dict[str, Any]]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not JSON ({err.msg} at column {err.colno})", {}
    except (ValueError, RecursionError) as err:  # an integer of over 4300 digits, nesting too deep
        return f"not JSON that can be read ({type(err).__name__}: {str(err)[:80]})", {}
    if not isinstance(value, dict):
        return f"not a JSON object (a {type(value).__name__})", {}
    for column in (config.text_column, config.id_column):
        if column and column not in value:
            return f"no {column!r} field (it has {', '.join(value) or 'none'})", {}
    item = {"id": value[config.id_column]} if config.id_column else {}
    if not isinstance(value[config.text_column], str):
        return f"{config.text_column!r} is not a string", item
    try:
        value[config.text_column].encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape such as \ud800: no text can hold it
        return f"{config.text_column!r} holds a lone surrogate ({err.object[err.start]!r}), which is not text", item
    return None, {**item, "text": value[config.text_column]}


# ---- media folders: captioned first --------------------------------------------------------------------


def captioning_record(config: Any) -> dict[str, Any]:
    """The record of the captioning output `captions_from`, refused unless the input is a folder it can caption."""
    from semcal.captioning.captioning import STAGES

    fix = (
        "set captions_from=RUN/captions/<name> (the captioning stage's output folder) so the media are captioned "
        "with the same settings"
    )
    if config.input_format is not None:
        raise UserError(f"input={config.input} is a folder of media: leave input_format unset (it is for files).")
    if not config.captions_from:
        raise UserError(f"input={config.input} is a folder: its images or audio clips need captions first; {fix}.")
    folder = Path(config.captions_from)
    record = files.read_record(folder) if folder.is_dir() else None
    if not record or record.get("stage") not in STAGES:
        raise UserError(f"captions_from={config.captions_from} is not a captioning stage's output folder: {fix}.")
    _media_names(config, STAGES[record["stage"]][0])  # the folder holds files of that kind
    return record


def _media_names(config: Any, kind: str) -> list[str]:
    """The folder's image or audio files, by path relative to it, in name order (as the captioning stage lists them)."""
    from semcal.store.media_folders import load_media_folder

    splits = load_media_folder(config.input, kind)
    return sorted(name for split in splits.values() for name in split["file_name"])


def _media_items(config: Any) -> Iterator[Item]:
    """Each media file of the input folder with its caption as the text, captioned in batches."""
    from semcal.captioning import captioning
    from semcal.core import console

    captioner, kind, batch_size = captioning.load_captioner(captioning_record(config))
    root = Path(config.input).expanduser().resolve()
    names = _media_names(config, kind)
    with console.progress(total=len(names), unit="item", desc=f"caption {kind}") as bar:
        for start in range(0, len(names), batch_size):
            window = names[start : start + batch_size]
            captions, failures = captioning.caption_batch(captioner, [str(root / name) for name in window])
            bar.update(len(window))
            for position, name in enumerate(window):
                item: Item = {"line": start + position + 1, "id": name}
                if position in captions:
                    yield {**item, "text": captions[position]}
                else:
                    yield {**item, "error": f"{name}: cannot caption it ({failures[position]})"}
