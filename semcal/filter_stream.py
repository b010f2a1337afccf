"""The filter stage: apply a saved filter (semcal.filtering) to new, unlabeled texts.

    semcal filter --filter=runs/demo/evaluation/mild/filter --input=new.csv --output=decisions.csv
    tail -f stream.jsonl | semcal filter --filter=... --input=- --stream=true --batch_size=1

Reads a CSV / JSONL / Parquet file (the `text_column`, and `id_column` when given, else each
item's row or line number from 1), a text file of one text a line, standard input (JSON
lines, or text lines with input_format=text), or a folder of images or audio clips: each
file is captioned first, as the captioning stage's output folder `captions_from` was (its
record's model, task or prompt, generation settings and batch size), and its id is its path
relative to the folder; a file that cannot be decoded gets an error record. The captions
are not written anywhere but the output. Writes one record per item: id, text, score,
accept_prob, decision (a uniform draw from one generator seeded by `seed`, one per item in
input order: the same seed gives the same decisions, whatever the batch size), and the
tokens (tfidf: n-grams) that pushed the score up and down most; as CSV or JSON lines by the
output's extension, or JSON lines on standard output (log lines then go to standard error).

Texts are scored in micro-batches of `batch_size`, and each batch's records are flushed as
soon as it is scored, so memory stays bounded on an endless stream. A line that is not a
JSON object with a text gets an error record naming the line and the problem; the stream
goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semcal import distributed, files
from semcal.config import UserError, below_minimum
from semcal.filtering import Filter, draw

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet", "text")
MEDIA = "media"  # the input is a folder of images or audio clips, captioned first
COLUMNS = ["id", "text", "score", "accept_prob", "decision", "tokens_up", "tokens_down", "line", "error"]


@dataclass
class FilterConfig:
    filter: str = "runs/demo/evaluation/mild/filter"  # a saved filter: RUN_DIR/evaluation/<split>/filter
    input: str = "-"  # CSV / JSONL / Parquet file, a text file (one text a line), a media folder, or - (stdin)
    output: str = "-"  # a .csv or .jsonl file, or - (standard output, JSON lines)
    text_column: str = "text"  # the field holding each item's text (CSV, JSONL, Parquet)
    id_column: str | None = None  # the field holding each item's id; none: its row or line number (from 1)
    input_format: str | None = None  # csv / jsonl / parquet / text; none: by extension (standard input: jsonl)
    stream: bool = False  # read JSON lines from standard input as they come; write each batch at once
    batch_size: int = 32  # texts scored together (streaming: 1 gives a decision per line as it arrives)
    seed: int = 0  # seed of the decisions' uniform draws: the same seed gives the same decisions
    top_tokens: int = 3  # per item, how many tokens pushing the score up and down to list (0: none)
    captions_from: str | None = None  # input a media folder: the captioning output (RUN/captions/<name>) to caption as


@distributed.main_process_only
def filter_texts(config: FilterConfig) -> dict[str, int]:
    """Run the filter stage; returns the counts of items, accepted items and error records."""
    started = time.perf_counter()
    input_format = _check_settings(config)
    writer_stdout = sys.stdout  # records go here; log lines to standard error while it is the output
    quiet = contextlib.redirect_stdout(sys.stderr) if config.output == "-" else contextlib.nullcontext()
    with quiet:
        model = Filter.load(config.filter)
        items = _read_items(config, input_format)
        first = next(items, None)
        if first is None:
            raise UserError(f"input {config.input} holds no texts: give a file (or standard input) with some.")
        counts = {"items": 0, "accepted": 0, "errors": 0}
        rng = np.random.default_rng(config.seed)
        with contextlib.redirect_stdout(writer_stdout):
            writer = files.RecordWriter(config.output, COLUMNS)
        with writer:
            for batch in _batches(itertools.chain([first], items), config.batch_size):
                writer.write(_judge(model, batch, rng, config, counts))
        seconds = time.perf_counter() - started
        log.info(
            "filter %s: %d items, %d accepted (%.1f%%), %d error records in %.1fs -> %s",
            model.name,
            counts["items"],
            counts["accepted"],
            100 * counts["accepted"] / max(counts["items"], 1),
            counts["errors"],
            seconds,
            config.output,
        )
    return counts


def _check_settings(config: FilterConfig) -> str:
    """The input's format; every setting problem before the filter loads."""
    problems = below_minimum(config, {"batch_size": 1, "top_tokens": 0, "seed": 0})
    if problems:
        raise UserError("; ".join(problems) + ".")
    if config.input_format is not None and config.input_format not in FORMATS:
        raise UserError(f"input_format={config.input_format!r} is not one of {FORMATS} (or none: by extension).")
    if config.stream and config.input != "-":
        raise UserError("stream=true reads JSON lines from standard input: set input=- (or stream=false for a file).")
    if config.output != "-" and Path(config.output).suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"output={config.output} must end in .csv or .jsonl (or be - for standard output).")
    if Path(config.input).is_dir():
        _captioning_record(config)
        return MEDIA
    if config.input != "-" and not Path(config.input).is_file():
        raise UserError(f"input={config.input} does not exist (looked at {Path(config.input).resolve()}).")
    if config.input_format:
        return config.input_format
    suffix = Path(config.input).suffix.lower().lstrip(".")
    return {"-": "jsonl", "csv": "csv", "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet"}.get(
        "-" if config.input == "-" else suffix, "text"
    )


# ---- reading: (line or row number, text, id) or (line number, error) ----------------------------


Item = dict[str, Any]


def _read_items(config: FilterConfig, input_format: str) -> Iterator[Item]:
    if input_format == MEDIA:
        return _media_items(config)
    if input_format in ("csv", "parquet"):
        return _table_items(config, input_format)
    lines = files.iter_lines(config.input)
    if input_format == "text":
        return ({"line": n, "id": n, "text": line} for n, line in enumerate(lines, 1) if line.strip())
    return _json_items(config, lines)


def _table_items(config: FilterConfig, input_format: str) -> Iterator[Item]:
    if input_format == "csv":
        chunks = files.read_csv(config.input, keep_default_na=False, dtype=str, chunksize=config.batch_size)
    else:
        chunks = iter([files.read_parquet(config.input)])
    row = 0
    for chunk in chunks:
        for column in (config.text_column, config.id_column):
            if column and column not in chunk.columns:
                raise UserError(
                    f"{config.input} has no column {column!r} (it has {', '.join(map(str, chunk.columns))}): "
                    "set text_column (and id_column) to the right ones."
                )
        ids = chunk[config.id_column] if config.id_column else range(row + 1, row + 1 + len(chunk))
        for identifier, text in zip(ids, chunk[config.text_column], strict=True):
            row += 1
            yield {"line": row, "id": identifier, "text": "" if text is None else str(text)}


def _json_items(config: FilterConfig, lines: Iterator[str]) -> Iterator[Item]:
    """Items of JSON lines; a bad line becomes an error record. The text column missing from the
    first object, before any text was read, is a wrong setting rather than a bad line."""
    seen_text = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem, item = _parse_line(line, config)
        if problem and not seen_text and problem.startswith("no "):
            raise UserError(
                f"line {number} of {config.input} has {problem}: set text_column (and id_column) to its fields."
            )
        if problem:
            yield {"line": number, "error": f"line {number}: {problem}"}
            continue
        seen_text = True
        yield {"line": number, "id": item.pop("id", number), **item}


def _parse_line(line: str, config: FilterConfig) -> tuple[str | None, dict[str, Any]]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not JSON ({err.msg} at column {err.colno})", {}
    if not isinstance(value, dict):
        return f"not a JSON object (a {type(value).__name__})", {}
    for column in (config.text_column, config.id_column):
        if column and column not in value:
            return f"no {column!r} field (it has {', '.join(value) or 'none'})", {}
    if not isinstance(value[config.text_column], str):
        return f"{config.text_column!r} is not a string", {}
    item = {"text": value[config.text_column]}
    if config.id_column:
        item["id"] = value[config.id_column]
    return None, item


def _captioning_record(config: FilterConfig) -> dict[str, Any]:
    """The record of the captioning output `captions_from`, refused unless the input is a folder it can caption."""
    from semcal.captioning import STAGES

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


def _media_names(config: FilterConfig, kind: str) -> list[str]:
    """The folder's image or audio files, by path relative to it, in name order (as the captioning stage lists them)."""
    from semcal.data import load_media_folder

    splits = load_media_folder(config.input, kind)
    return sorted(name for split in splits.values() for name in split["file_name"])


def _media_items(config: FilterConfig) -> Iterator[Item]:
    """Each media file of the input folder with its caption as the text, captioned in batches."""
    from semcal import captioning, console

    captioner, kind, batch_size = captioning.load_captioner(_captioning_record(config))
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


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    """Lists of items holding at most `size` texts (error records ride along with the texts)."""
    batch: list[Item] = []
    texts = 0
    for item in items:
        batch.append(item)
        texts += "text" in item
        if texts >= size:
            yield batch
            batch, texts = [], 0
    if batch:
        yield batch


# ---- scoring a batch ----------------------------------------------------------------------------


def _judge(model: Filter, batch: list[Item], rng: np.random.Generator, config: FilterConfig, counts) -> list[Item]:
    """The batch's records in input order: each text's score, acceptance and decision; errors as they were."""
    texts = [item for item in batch if "text" in item]
    scored = model.score([item["text"] for item in texts], config.top_tokens) if texts else None
    decisions = draw(scored.accept, rng) if texts else []
    for position, item in enumerate(texts):
        item.update(
            score=float(scored.scores[position]),
            accept_prob=float(scored.accept[position]),
            decision=bool(decisions[position]),
            tokens_up=scored.tokens_up[position],
            tokens_down=scored.tokens_down[position],
        )
    counts["items"] += len(texts)
    counts["accepted"] += int(np.sum(decisions))
    counts["errors"] += len(batch) - len(texts)
    return [item if "text" in item else {"id": None, **item} for item in batch]
