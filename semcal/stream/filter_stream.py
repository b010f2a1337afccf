"""The filter stage: apply a saved filter (semcal.filter.filtering) to new, unlabeled texts.

    semcal filter --filter=runs/demo/evaluation/mild/filter --input=new.csv --output=decisions.csv
    tail -f stream.jsonl | semcal filter --filter=... --input=- --stream=true --batch_size=1
    semcal filter --filter=... --engine=ray --input='parts/*.parquet' --output=decided/   (semcal.stream.filter_ray)

Reads a CSV / JSONL / Parquet file (the `text_column`, and `id_column` when given, else each
item's row or line number from 1), a text file of one text a line, standard input (JSON
lines, or text lines with input_format=text), or a folder of images or audio clips: each
file is captioned first, as the captioning stage's output folder `captions_from` was (its
record's model, task or prompt, generation settings and batch size), and its id is its path
relative to the folder; a file that cannot be decoded gets an error record (semcal.stream.filter_input).
The captions are not written anywhere but the output. Writes one record per item: id, text,
score, accept_prob, decision (by `decision`, semcal.filter.decisions: `sample`, a uniform draw keyed
by `seed` and the item's id (its text without `id_column`), so the decisions do not depend on
the item's position, the batch size or how the stream is split; `threshold`, a(x) >= tau with
tau from the saved filter for `rate` or `max_false_rejection`; `top`, the highest share of each
`window` items), and the tokens (tfidf: n-grams) that pushed the score up and down most; as CSV
or JSON lines by the output's extension, or JSON lines on standard output (log lines then go to
standard error).

The hot path works on batches as arrays: a file is read in chunks of FILE_BATCH rows, each
chunk transformed, scored, decided, explained and written column-wise. A stream (stream=true)
is scored in micro-batches of `batch_size`, each flushed as soon as it is scored, so memory
stays bounded on an endless stream. The adaptive modes (`adapt`, semcal.stream.adapt) depend on the
stream's order by nature and run on this one-process path only.

An output file is written like the stages write theirs: built beside it, swapped in only when
the run succeeds (a failed or interrupted run leaves an existing output as it was), under a
lock that refuses a second writer of the same file; temporary files of killed runs are
removed. Every setting and the output's folder are checked before the filter loads, and an
output that is the input (the same file, or a link to it) is refused.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core import distributed
from semcal.core.errors import UserError
from semcal.filter import decisions
from semcal.stream.filter_settings import FilterConfig, check_common, check_not_input

log = logging.getLogger(__name__)

COLUMNS = ["id", "text", "score", "accept_prob", "decision", "tokens_up", "tokens_down", "line", "error"]
FILE_BATCH = 16384  # rows of a file read, scored and written together (a stream uses batch_size)
# Printed by `semcal filter --help` and `python filter.py --help` after the settings.
HELP_NOTES = """output columns (one record per input item; JSON lines hold only the fields that apply):
  id           the item's id_column value, else its row or line number (from 1); a media file: its relative path
  text         the text scored (a media file: its caption)
  score        the filter's calibrated log-ratio s(x): the higher, the more the text looks like the real stream
  accept_prob  a(x) = min(1, exp(s(x)) / M): the probability of letting the item through
  decision     true or false: by --decision: sample (default), a uniform draw below accept_prob keyed by --seed
               and the item's id_column value (or its text), never its position; threshold, accept_prob >= tau (from the saved filter: the stream passes
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


@distributed.main_process_only
def filter_texts(config: FilterConfig) -> dict[str, int]:
    """Run the filter stage; returns the counts of items, accepted items and error records."""
    started = time.perf_counter()
    if config.engine == "ray":
        from semcal.stream import filter_ray

        check_common(config)
        return filter_ray.filter_files(config)
    input_format = _check_settings(config)
    records_to = sys.stdout  # records go here; log lines to standard error while it is the output
    quiet = contextlib.redirect_stdout(sys.stderr) if config.output == "-" else contextlib.nullcontext()
    with quiet, _sole_writer(config.output):
        from semcal.filter.filtering import Filter
        from semcal.store import files
        from semcal.stream import filter_input

        model = Filter.load(config.filter)
        adapter = adaptation(model, config)  # None: the saved filter as it is
        skipped = filter_input.Skipped()
        batches = filter_input.read_batches(config, input_format, _batch_size(config, input_format), skipped)
        first = next(batches, None)
        if first is None:
            raise UserError(f"input {config.input} holds no texts: give a file (or standard input) with some.")
        counts = {"items": 0, "accepted": 0, "errors": 0}
        decide = decisions.decider(
            config.decision, 1.0 / model.m, model.thresholds, config.rate, config.max_false_rejection, config.seed
        )
        log.info("filter: decision=%s%s", config.decision, f" (tau {decide.tau:.4g})" if decide.tau is not None else "")
        with contextlib.redirect_stdout(records_to):
            writer = files.RecordWriter(config.output, COLUMNS + (["alarm"] if adapter else []))
        try:
            with writer:
                for batch in itertools.chain([first], batches):
                    writer.write_columns(judge(adapter or model, batch, decide, config, counts))
                    writer.write([alarm.record() for alarm in adapter.pop_alarms()] if adapter else [])
        except BrokenPipeError:
            _reader_gone(records_to)
        skipped.report("standard input" if config.input == "-" else config.input)
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


def _batch_size(config: FilterConfig, input_format: str) -> int:
    """Texts per batch: a window for `top` (its quota is per window), batch_size for a stream or a
    media folder (each batch is written as soon as it is decided), else FILE_BATCH rows of a file."""
    if config.decision == "top":
        return config.window
    if config.stream or config.input == "-" or input_format == "media":
        return config.batch_size
    return max(config.batch_size, FILE_BATCH)


@contextlib.contextmanager
def _sole_writer(output: str) -> Iterator[None]:
    """Hold the output file's lock (as the stages hold their folders'), after removing what killed
    runs left beside it: under the lock no live writer owns such a file. Standard output needs none."""
    if output == "-":
        yield
        return
    from semcal.store import files, runstate

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


def _check_output(config: FilterConfig) -> None:
    """The output is a .csv or .jsonl file that can be written and is not the input, checked before any work."""
    from semcal.store import runstate

    output = config.output
    if output == "-":
        return
    path = Path(output)
    if not output.strip() or path.name in ("", ".", ".."):
        raise UserError(f"output={output!r} is not a file name: give a file path ending in .csv or .jsonl.")
    check_not_input(config)
    if path.is_dir():
        raise UserError(f"output={output} is a folder: give a file path ending in .csv or .jsonl inside it.")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"output={output} must end in .csv or .jsonl (or be - for standard output).")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"output={output} is inside {path.parent}, which is a file: choose a path inside a folder.")
    runstate.check_writable(path.parent)


def _check_settings(config: FilterConfig) -> str:
    """The input's format; every setting problem before the filter loads."""
    from semcal.stream.filter_input import FORMATS, MEDIA, captioning_record

    check_common(config)
    if config.input_format is not None and config.input_format not in FORMATS:
        raise UserError(f"input_format={config.input_format!r} is not one of {FORMATS} (or none: by extension).")
    _check_adapt(config)
    if config.ray_address is not None:
        raise UserError("ray_address is for engine=ray: set engine=ray, or drop ray_address.")
    if config.stream and config.input != "-":
        raise UserError("stream=true reads JSON lines from standard input: set input=- (or stream=false for a file).")
    try:
        codecs.lookup(config.encoding)
    except LookupError:
        raise UserError(
            f"encoding={config.encoding!r} is not a text encoding Python knows: use e.g. utf-8 or latin-1."
        ) from None
    _check_output(config)
    if Path(config.input).is_dir():
        captioning_record(config)
        return MEDIA
    if config.input != "-" and not Path(config.input).is_file():
        raise UserError(f"input={config.input} does not exist (looked at {Path(config.input).resolve()}).")
    if config.input_format:
        return config.input_format
    suffix = Path(config.input).suffix.lower().lstrip(".")
    return {"-": "jsonl", "csv": "csv", "jsonl": "jsonl", "json": "jsonl", "parquet": "parquet"}.get(
        "-" if config.input == "-" else suffix, "text"
    )


# ---- scoring a batch ----------------------------------------------------------------------------


def _check_adapt(config: FilterConfig) -> None:
    if config.adapt == config.alarm == "none" and not config.adapt_settings:
        return  # the default: semcal.stream.adapt (and what it imports) is not needed
    from semcal.stream.adapt import ALARMS, MODES

    if config.adapt not in MODES:
        raise UserError(f"adapt={config.adapt!r} is not one of {', '.join(MODES)}.")
    if config.alarm not in ALARMS:
        raise UserError(f"alarm={config.alarm!r} is not one of {', '.join(ALARMS)}.")
    if config.adapt_settings and config.adapt == "none" and config.alarm == "none":
        raise UserError("adapt_settings are given but adapt=none and alarm=none: set adapt or alarm, or drop them.")


def adaptation(model: Any, config: FilterConfig) -> Any:
    """The adaptive filter of semcal.stream.adapt for adapt / alarm (None when both are none)."""
    from semcal.core.config import apply_settings
    from semcal.store.data import load_corpus
    from semcal.stream import adapt

    if config.adapt == "none" and config.alarm == "none":
        return None
    settings = dict(config.adapt_settings)
    trusted_path, trusted_column = settings.pop("trusted", None), settings.pop("trusted_column", config.text_column)
    chosen = apply_settings(adapt.AdaptSettings(), settings, "adapt_settings")
    trusted = load_corpus(trusted_path, "trusted", trusted_column)[0] if trusted_path else None
    return adapt.Adapter(model, config.adapt, config.alarm, chosen, trusted)


def keyed_by_id(config: FilterConfig) -> bool:
    """Whether `sample` decisions are keyed on the items' ids (an id column, or a media file's path) or on their texts."""
    return config.id_column is not None or (config.input != "-" and Path(config.input).is_dir())


def judge(
    model: Any, batch: Any, decide: decisions.Decider, config: FilterConfig, counts: dict[str, int]
) -> dict[str, Any]:
    """The batch's records in input order, as columns: each text's score, acceptance, decision and
    strongest tokens, computed for the whole batch at once; error records as they were."""
    n_items = len(batch)
    ok = np.flatnonzero(np.fromiter((text is not None for text in batch.texts), dtype=bool, count=n_items))
    score, accept = np.full(n_items, np.nan), np.full(n_items, np.nan)
    decided, up, down = (np.full(n_items, None, dtype=object) for _ in range(3))
    if len(ok):
        texts = [batch.texts[i] for i in ok] if len(ok) < n_items else batch.texts
        scored = model.score(texts, config.top_tokens)
        ids = [batch.ids[i] for i in ok] if keyed_by_id(config) else None
        verdict = decide(scored.accept, decisions.decision_keys(texts, ids) if config.decision == "sample" else None)
        score[ok], accept[ok], decided[ok] = scored.scores, scored.accept, verdict.astype(bool).tolist()
        up[ok], down[ok] = scored.tokens_up, scored.tokens_down
        counts["accepted"] += int(np.sum(verdict))
    counts["items"] += len(ok)
    counts["errors"] += n_items - len(ok)
    return {
        "id": batch.ids,
        "text": batch.texts,
        "score": score,
        "accept_prob": accept,
        "decision": decided,
        "tokens_up": up,
        "tokens_down": down,
        "line": batch.lines,
        "error": batch.errors,
    }
