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
accept_prob, decision (by `decision`, semcal.decisions: `sample`, a uniform draw from one
generator seeded by `seed`, one per item in input order, the same seed giving the same
decisions whatever the batch size; `threshold`, a(x) >= tau with tau from the saved filter
for `rate` or `max_false_rejection`; `top`, the highest share of each `window` items), and the
tokens (tfidf: n-grams) that pushed the score up and down most; as CSV or JSON lines by the
output's extension, or JSON lines on standard output (log lines then go to standard error).

Texts are scored in micro-batches of `batch_size`, and each batch's records are flushed as
soon as it is scored, so memory stays bounded on an endless stream. A line that is not a
JSON object with a text, that is not valid in `encoding`, or whose text is empty gets an error
record naming the line and the problem; the stream goes on. A file whose first line cannot be
decoded is refused at once (it is binary, or in another encoding: set `encoding`).

An output file is written like the stages write theirs: built beside it, swapped in only when
the run succeeds (a failed or interrupted run leaves an existing output as it was), under a
lock that refuses a second writer of the same file; temporary files of killed runs are
removed. Every setting and the output's folder are checked before the filter loads.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal import decisions, distributed, files, runstate
from semcal.config import UserError, below_minimum
from semcal.filtering import Filter

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet", "text")
MEDIA = "media"  # the input is a folder of images or audio clips, captioned first
COLUMNS = ["id", "text", "score", "accept_prob", "decision", "tokens_up", "tokens_down", "line", "error"]
# Printed by `semcal filter --help` and `python filter.py --help` after the settings.
HELP_NOTES = """output columns (one record per input item; JSON lines hold only the fields that apply):
  id           the item's id_column value, else its row or line number (from 1); a media file: its relative path
  text         the text scored (a media file: its caption)
  score        the filter's calibrated log-ratio s(x): the higher, the more the text looks like the real stream
  accept_prob  a(x) = min(1, exp(s(x)) / M): the probability of letting the item through
  decision     true or false: by --decision: sample (default), one uniform draw below accept_prob from one
               generator seeded by --seed; threshold, accept_prob >= tau (from the saved filter: the stream passes
               --rate, default 1/M, or at most --max_false_rejection of held-out real rows are rejected); top, the
               highest accept_prob share (--rate) of each --window items
  tokens_up    the tokens (tfidf: n-grams) that pushed the score up most, e.g. 'dog' +1.230; 'barks' +0.410
  tokens_down  the tokens that pushed the score down most
  line         the item's line (or row) number in the input
  error        why the item got no decision (not JSON, not valid in --encoding, an empty text, ...); else empty
  alarm        with --alarm: a drift alarm, a record of its own naming the window and the statistic (JSON lines
               add window, first_item, last_item, statistic, value, threshold)
an existing output file is replaced, but only when the run succeeds: a failed or interrupted run leaves it as it
was, and a second run writing the same file at the same time is refused."""


@dataclass
class FilterConfig:
    filter: str = "runs/demo/evaluation/mild/filter"  # a saved filter: RUN_DIR/evaluation/<split>/filter
    input: str = "-"  # CSV / JSONL / Parquet file, a text file (one text a line), a media folder, or - (stdin)
    output: str = "-"  # a .csv or .jsonl file (an existing one is replaced when the run succeeds), or - (standard output, JSON lines)
    text_column: str = "text"  # the field holding each item's text (CSV, JSONL, Parquet)
    id_column: str | None = None  # the field holding each item's id; none: its row or line number (from 1)
    input_format: str | None = None  # csv / jsonl / parquet / text; none: by extension (standard input: jsonl)
    encoding: str = "utf-8"  # the text encoding of the input (CSV, JSONL, text, standard input), e.g. latin-1
    stream: bool = False  # read JSON lines from standard input as they come; write each batch at once
    batch_size: int = 32  # texts scored together (streaming: 1 gives a decision per line as it arrives)
    seed: int = 0  # seed of the decisions' uniform draws: the same seed gives the same decisions
    decision: str = "sample"  # sample (seeded draw below accept_prob), threshold (accept_prob >= tau) or top
    rate: float | None = None  # threshold / top: the share of the stream to pass; none: the filter's 1/M
    max_false_rejection: float | None = None  # threshold: tau rejects at most this share of held-out real rows
    window: int = decisions.DEFAULT_WINDOW  # top: items ranked together (decisions come once a window is full)
    top_tokens: int = 3  # per item, how many tokens pushing the score up and down to list (0: none)
    captions_from: str | None = None  # input a media folder: the captioning output (RUN/captions/<name>) to caption as
    adapt: str = "none"  # follow a drifting stream: none, rate (pass rate), prior (label prior, EM), refit
    alarm: str = "none"  # drift alarms: none, auto, prior (label prior's KL) or mean_log_ratio
    adapt_settings: dict[str, str] = field(default_factory=dict)  # window=500,update_every=25,trusted=PATH,...


@distributed.main_process_only
def filter_texts(config: FilterConfig) -> dict[str, int]:
    """Run the filter stage; returns the counts of items, accepted items and error records."""
    started = time.perf_counter()
    input_format = _check_settings(config)
    records_to = sys.stdout  # records go here; log lines to standard error while it is the output
    quiet = contextlib.redirect_stdout(sys.stderr) if config.output == "-" else contextlib.nullcontext()
    with quiet, _sole_writer(config.output):
        model = Filter.load(config.filter)
        adapter = adaptation(model, config)  # None: the saved filter as it is
        items = _read_items(config, input_format)
        first = next(items, None)
        if first is None:
            raise UserError(f"input {config.input} holds no texts: give a file (or standard input) with some.")
        counts = {"items": 0, "accepted": 0, "errors": 0}
        decide = decisions.decider(
            config.decision, 1.0 / model.m, model.thresholds, config.rate, config.max_false_rejection, config.seed
        )
        log.info("filter: decision=%s%s", config.decision, f" (tau {decide.tau:.4g})" if decide.tau is not None else "")
        batch_size = config.window if config.decision == "top" else config.batch_size
        with contextlib.redirect_stdout(records_to):
            writer = files.RecordWriter(config.output, COLUMNS + (["alarm"] if adapter else []))
        try:
            with writer:
                for batch in _batches(itertools.chain([first], items), batch_size):
                    writer.write(_judge(adapter or model, batch, decide, config, counts))
                    writer.write([alarm.record() for alarm in adapter.pop_alarms()] if adapter else [])
        except BrokenPipeError:
            _reader_gone(records_to)
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


@contextlib.contextmanager
def _sole_writer(output: str) -> Iterator[None]:
    """Hold the output file's lock (as the stages hold their folders'), after removing what killed
    runs left beside it: under the lock no live writer owns such a file. Standard output needs none."""
    if output == "-":
        yield
        return
    with runstate.hold_lock(output):
        leftovers = files.remove_leftovers(output)
        if leftovers:
            log.info("filter: removed %d temporary files that killed runs left beside %s", len(leftovers), output)
        yield


def _reader_gone(records_to: Any) -> None:
    """The reader of standard output left (`semcal filter ... | head -1`): stop quietly, as command-line
    tools do. Standard output goes to /dev/null so that the interpreter's last flush at exit does not
    complain about the closed pipe again."""
    log.debug("filter: standard output was closed by its reader; stopping")
    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), records_to.fileno())


def _check_output(output: str) -> None:
    """The output is a .csv or .jsonl file that can be written, checked before any work."""
    if output == "-":
        return
    path = Path(output)
    if path.is_dir():
        raise UserError(f"output={output} is a folder: give a file path ending in .csv or .jsonl inside it.")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"output={output} must end in .csv or .jsonl (or be - for standard output).")
    runstate.check_writable(path.parent)


def _check_settings(config: FilterConfig) -> str:
    """The input's format; every setting problem before the filter loads."""
    problems = below_minimum(config, {"batch_size": 1, "top_tokens": 0, "seed": 0, "window": 1})
    if problems:
        raise UserError("; ".join(problems) + ".")
    decisions.check_settings(config.decision, config.rate, config.max_false_rejection)
    if config.input_format is not None and config.input_format not in FORMATS:
        raise UserError(f"input_format={config.input_format!r} is not one of {FORMATS} (or none: by extension).")
    _check_adapt(config)
    if config.stream and config.input != "-":
        raise UserError("stream=true reads JSON lines from standard input: set input=- (or stream=false for a file).")
    try:
        codecs.lookup(config.encoding)
    except LookupError:
        raise UserError(
            f"encoding={config.encoding!r} is not a text encoding Python knows: use e.g. utf-8 or latin-1."
        ) from None
    _check_output(config.output)
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
    lines = _lines(config)
    if input_format == "text":
        return _text_items(lines)
    return _json_items(config, lines)


def _lines(config: FilterConfig) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, problem) of the input's lines, each decoded on its own.

    A line that cannot be decoded gets its problem and the lines after it still come. A file
    whose first line already cannot be decoded is refused instead: it is binary or in another
    encoding, which one setting fixes, and every line would be an error record.
    """
    undecodable: list[int] = []
    seen_text = False
    for number, (text, problem) in enumerate(files.iter_lines(config.input, config.encoding), 1):
        if problem is None and not text.strip():
            yield number, text, None
            continue
        if problem and problem != files.LONG_LINE:
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


def _text_items(lines: Iterator[tuple[int, str, str | None]]) -> Iterator[Item]:
    """One item per non-blank line of plain text."""
    for number, text, problem in lines:
        if problem:
            yield {"line": number, "error": f"line {number}: {problem}"}
        elif text.strip():
            yield {"line": number, "id": number, "text": text}


def _table_items(config: FilterConfig, input_format: str) -> Iterator[Item]:
    row = 0
    for chunk in _table_chunks(config, input_format):
        for column in (config.text_column, config.id_column):
            if column and column not in chunk.columns:
                raise UserError(
                    f"{config.input} has no column {column!r} (it has {', '.join(map(str, chunk.columns))}): "
                    "set text_column (and id_column) to the right ones."
                )
        ids = chunk[config.id_column] if config.id_column else range(row + 1, row + 1 + len(chunk))
        for identifier, text in zip(ids, chunk[config.text_column], strict=True):
            row += 1
            item = {"line": row, "id": identifier, "text": "" if text is None else str(text)}
            yield _refuse_empty(item, f"row {row}")


def _table_chunks(config: FilterConfig, input_format: str) -> Iterator[pd.DataFrame]:
    """The CSV's rows in chunks of batch_size, or the Parquet file's rows; a file that is not of
    that format or encoding is one sentence with the setting that fixes it. An empty file has none."""
    try:
        if input_format == "parquet":
            yield files.read_parquet(config.input)
            return
        yield from files.read_csv(
            config.input,
            keep_default_na=False,
            dtype=str,
            chunksize=config.batch_size,
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


def _json_items(config: FilterConfig, lines: Iterator[tuple[int, str, str | None]]) -> Iterator[Item]:
    """Items of JSON lines; a bad line becomes an error record. The text column missing from the
    first object, before any text was read, is a wrong setting rather than a bad line."""
    seen_text = False
    for number, line, problem in lines:
        if not problem and not line.strip():
            continue
        if not problem:
            problem, item = _parse_line(line, config)
        if problem and not seen_text and problem.startswith("no "):
            raise UserError(
                f"line {number} of {config.input} has {problem}: set text_column (and id_column) to its fields."
            )
        if problem:
            yield {"line": number, "error": f"line {number}: {problem}"}
            continue
        seen_text = True
        yield _refuse_empty({"line": number, "id": item.pop("id", number), **item}, f"line {number}")


def _refuse_empty(item: Item, where: str) -> Item:
    """An item with an empty text becomes an error record: there is nothing to judge, and the
    stages refuse empty captions too."""
    if item["text"].strip():
        return item
    return {"line": item["line"], "id": item["id"], "error": f"{where}: empty text (nothing to filter)"}


def _parse_line(line: str, config: FilterConfig) -> tuple[str | None, dict[str, Any]]:
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
    if not isinstance(value[config.text_column], str):
        return f"{config.text_column!r} is not a string", {}
    try:
        value[config.text_column].encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape such as \ud800: no text can hold it
        return f"{config.text_column!r} holds a lone surrogate ({err.object[err.start]!r}), which is not text", {}
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
    from semcal.media_folders import load_media_folder

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


def _check_adapt(config: FilterConfig) -> None:
    from semcal.adapt import ALARMS, MODES

    if config.adapt not in MODES:
        raise UserError(f"adapt={config.adapt!r} is not one of {', '.join(MODES)}.")
    if config.alarm not in ALARMS:
        raise UserError(f"alarm={config.alarm!r} is not one of {', '.join(ALARMS)}.")
    if config.adapt_settings and config.adapt == "none" and config.alarm == "none":
        raise UserError("adapt_settings are given but adapt=none and alarm=none: set adapt or alarm, or drop them.")


def adaptation(model: Filter, config: FilterConfig) -> Any:
    """The adaptive filter of semcal.adapt for adapt / alarm (None when both are none)."""
    from semcal import adapt
    from semcal.config import apply_settings
    from semcal.data import load_corpus

    if config.adapt == "none" and config.alarm == "none":
        return None
    settings = dict(config.adapt_settings)
    trusted_path, trusted_column = settings.pop("trusted", None), settings.pop("trusted_column", config.text_column)
    chosen = apply_settings(adapt.AdaptSettings(), settings, "adapt_settings")
    trusted = load_corpus(trusted_path, "trusted", trusted_column)[0] if trusted_path else None
    return adapt.Adapter(model, config.adapt, config.alarm, chosen, trusted)


def _judge(model: Any, batch: list[Item], decide: decisions.Decider, config: FilterConfig, counts) -> list[Item]:
    """The batch's records in input order: each text's score, acceptance and decision; errors as they were."""
    texts = [item for item in batch if "text" in item]
    scored = model.score([item["text"] for item in texts], config.top_tokens) if texts else None
    decided = decide(scored.accept) if texts else []
    for position, item in enumerate(texts):
        item.update(
            score=float(scored.scores[position]),
            accept_prob=float(scored.accept[position]),
            decision=bool(decided[position]),
            tokens_up=scored.tokens_up[position],
            tokens_down=scored.tokens_down[position],
        )
    counts["items"] += len(texts)
    counts["accepted"] += int(np.sum(decided))
    counts["errors"] += len(batch) - len(texts)
    return [item if "text" in item else {"id": None, **item} for item in batch]
