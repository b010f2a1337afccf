"""`semcal filter --engine=ray`: a stream that outgrows one machine, filtered by Ray Data.

    semcal filter --filter=my_filter --engine=ray --input='parts/*.parquet' --output=decided --workers=8
    semcal filter ... --engine=ray --ray_address=ray://head:10001      # an existing cluster

    from semcal.stream.filter_ray import filter_dataset
    decided = filter_dataset(ray.data.read_parquet("s3://bucket/parts"), "my_filter", workers=8)

Each of `workers` actors (an actor pool over `map_batches`) loads the filter once. The filter
travels as its folder's files (name -> bytes, plain data: no pickled object of semcal's), which
each actor writes into a temporary folder and loads as `semcal filter` does, so every check of
`Filter.load` runs on the worker too. The output keeps every input column and adds score,
accept_prob, decision, tokens_up, tokens_down and error, written as Parquet or JSON-lines
partitions (the input's format) into the output folder, which is built beside and swapped in
only when the run succeeds.

Decisions are the one-process path's: `sample` is keyed by the seed and each item's id (its
text without id_column), `threshold` by the saved filter, so any partitioning gives the same
decisions. `top` and the adaptive modes depend on the stream's order and are refused here.
Without an address a local Ray cluster is started on this machine (and stopped at the end).
Ray is optional: `pip install 'semcal[ray]'`.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core.errors import UserError

log = logging.getLogger(__name__)

INSTALL = "engine=ray needs Ray Data, which is not installed: pip install 'semcal[ray]' (or pip install 'ray[data]')."
OUTPUT_COLUMNS = ("score", "accept_prob", "decision", "tokens_up", "tokens_down", "error")


def require_ray() -> Any:
    """The ray module, or one sentence on installing it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


def filter_folder_files(folder: str | Path) -> dict[str, bytes]:
    """A saved filter folder as {relative path: bytes}: what travels to the workers."""
    from semcal.filter.filtering import Filter

    folder = Path(folder)
    source = Filter.load(folder).source  # refused here, in one sentence, before any worker starts
    if getattr(source, "language_models", False) or source.name in ("embedding", "control_sum"):
        raise UserError(
            f"filter {folder} needs models outside its folder ({source.name}), which engine=ray does not ship to "
            "workers: use engine=local, or a filter that needs no model (semcal fit's default)."
        )
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


class FilterActor:
    """One worker: loads the filter once from its files, then decides batch after batch."""

    def __init__(self, filter_files: dict[str, bytes], settings: dict[str, Any]):
        from semcal.filter import decisions
        from semcal.filter.filtering import Filter

        self.folder = Path(tempfile.mkdtemp(prefix="semcal-filter-"))
        for name, data in filter_files.items():
            path = self.folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.model = Filter.load(self.folder)
        self.settings = settings
        self.decide = decisions.decider(
            settings["decision"],
            1.0 / self.model.m,
            self.model.thresholds,
            settings["rate"],
            settings["max_false_rejection"],
            settings["seed"],
        )

    def __call__(self, batch: Any) -> Any:
        """The batch (a pandas DataFrame) with the decision columns added."""
        from semcal.filter import decisions
        from semcal.stream.filter_input import MAX_TEXT_BYTES, TOO_LONG

        settings = self.settings
        texts = batch[settings["text_column"]]
        texts = texts.where(texts.notna(), "").astype(str)
        errors = np.full(len(batch), None, dtype=object)
        errors[(texts.str.strip().str.len() == 0).to_numpy()] = "empty text (nothing to filter)"
        for position in np.flatnonzero(texts.str.len().to_numpy() > MAX_TEXT_BYTES // 4):
            if len(texts.iat[position].encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
                errors[position] = f"the text is {TOO_LONG}"
        ok = np.flatnonzero(errors == None)  # noqa: E711 (element-wise)
        n_items = len(batch)
        score, accept = np.full(n_items, np.nan), np.full(n_items, np.nan)
        decided, up, down = (np.full(n_items, None, dtype=object) for _ in range(3))
        if len(ok):
            chosen = texts.iloc[ok].tolist()
            scored = self.model.score(chosen, settings["top_tokens"])
            ids = batch[settings["id_column"]].iloc[ok].tolist() if settings["id_column"] else None
            keys = decisions.decision_keys(chosen, ids) if settings["decision"] == "sample" else None
            score[ok], accept[ok] = scored.scores, scored.accept
            decided[ok] = self.decide(scored.accept, keys).astype(bool).tolist()
            up[ok], down[ok] = scored.tokens_up, scored.tokens_down
        return batch.assign(
            score=score, accept_prob=accept, decision=decided, tokens_up=up, tokens_down=down, error=errors
        )

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)


def filter_dataset(
    dataset: Any,
    filter_folder: str | Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    seed: int = 0,
    decision: str = "sample",
    rate: float | None = None,
    max_false_rejection: float | None = None,
    top_tokens: int = 3,
    workers: int = 2,
    batch_size: int = 16384,
) -> Any:
    """A ray.data.Dataset with the filter's columns added to every row (lazy, as Ray Data is)."""
    from semcal.filter import decisions

    require_ray()
    decisions.check_settings(decision, rate, max_false_rejection)
    if decision == "top":
        raise UserError(
            "decision=top ranks consecutive items, which a partitioned stream does not have: use engine=local for "
            "it, or decision=sample or threshold."
        )
    settings = {
        "text_column": text_column,
        "id_column": id_column,
        "seed": seed,
        "decision": decision,
        "rate": rate,
        "max_false_rejection": max_false_rejection,
        "top_tokens": top_tokens,
    }
    return dataset.map_batches(
        FilterActor,
        fn_constructor_kwargs={"filter_files": filter_folder_files(filter_folder), "settings": settings},
        batch_format="pandas",
        batch_size=batch_size,
        concurrency=workers,
        num_cpus=1,
    )


def input_files(config: Any) -> tuple[list[str], str]:
    """The input's files (a folder's Parquet / JSONL files, or a glob) and their format."""
    pattern = str(Path(config.input).expanduser())
    if Path(pattern).is_dir():
        found = sorted(
            str(path) for path in Path(pattern).iterdir() if path.is_file() and not path.name.startswith(".")
        )
    else:
        found = sorted(glob.glob(pattern))
    formats = {config.input_format or _format_of(path) for path in found}
    if not found or None in formats or len(formats) != 1:
        raise UserError(
            f"engine=ray reads a folder or glob of Parquet or JSONL files; input={config.input} "
            + ("matches no file" if not found else "holds other or mixed formats")
            + ": give e.g. --input='parts/*.parquet'."
        )
    return found, formats.pop()


def _format_of(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    return {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix)


def _check(config: Any) -> tuple[list[str], str, Path]:
    """The settings and paths of engine=ray (filter_stream checked the settings both engines read)."""
    from semcal.store import runstate
    from semcal.store.files import same_path

    if config.adapt != "none" or config.alarm != "none":
        raise UserError(
            "adapt and alarm follow the stream in its order, which a partitioned stream does not have: use "
            "engine=local for them."
        )
    if config.stream or config.input == "-" or config.output == "-":
        raise UserError(
            "engine=ray reads files and writes a folder: set input to a folder or glob and output to a folder."
        )
    if config.input_format not in (None, "parquet", "jsonl"):
        raise UserError(f"engine=ray reads parquet or jsonl, not input_format={config.input_format}.")
    output = Path(config.output).expanduser()
    if output.exists() and not output.is_dir():
        raise UserError(f"output={config.output} is a file: engine=ray writes a folder of partitions; choose a folder.")
    paths, input_format = input_files(config)
    if any(same_path(output, path) or same_path(output, Path(path).parent) for path in paths):
        raise UserError(f"output={config.output} holds the input files: choose another output folder.")
    if output.is_dir() and any(output.iterdir()) and not any(output.glob(f"*.{input_format}")):
        raise UserError(f"output={config.output} holds other files; choose a new or empty folder.")
    runstate.check_writable(output.parent)
    return paths, input_format, output


def filter_files(config: Any) -> dict[str, int]:
    """`semcal filter --engine=ray`: the input's partitions filtered on a Ray cluster into the output folder."""
    from semcal.core import console
    from semcal.store import files, runstate

    started = time.perf_counter()
    paths, input_format, output = _check(config)
    ray = require_ray()
    with runstate.hold_lock(output):
        started_here = not ray.is_initialized()
        if started_here:
            _init(ray, config)
        try:
            import ray.data

            ray.data.DataContext.get_current().enable_progress_bars = console.is_verbose()
            if not console.is_verbose():  # Ray Data's own execution lines and tuning advice
                logging.getLogger("ray.data").setLevel(logging.WARNING)
                warnings.filterwarnings("ignore", category=UserWarning, module="ray.data")
            read = ray.data.read_parquet if input_format == "parquet" else ray.data.read_json
            decided = filter_dataset(
                read(paths, override_num_blocks=max(len(paths), 2 * config.workers)),  # work for every actor
                config.filter,
                text_column=config.text_column,
                id_column=config.id_column,
                seed=config.seed,
                decision=config.decision,
                rate=config.rate,
                max_false_rejection=config.max_false_rejection,
                top_tokens=config.top_tokens,
                workers=config.workers,
                batch_size=max(config.batch_size, 1024),
            )  # streamed: read, filtered and written a block at a time, never all held at once
            staging = output.with_name(f".{output.name}.partial-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                (decided.write_parquet if input_format == "parquet" else decided.write_json)(str(staging))
                counts = _counts(read(str(staging)))
            except BaseException:  # a failed run leaves no partial folder (and the old output as it was)
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            if started_here:
                ray.shutdown()
        files.swap_in(staging, output)
    log.info(
        "filter %s (engine=ray, %d workers): %d items, %d accepted (%.1f%%), %d error records in %.1fs -> %s",
        Path(config.filter).name,
        config.workers,
        counts["items"],
        counts["accepted"],
        100 * counts["accepted"] / max(counts["items"], 1),
        counts["errors"],
        time.perf_counter() - started,
        output,
    )
    return counts


def _init(ray: Any, config: Any) -> None:
    """A local cluster on this machine (as many CPUs as the process may use), or the one at ray_address."""
    from semcal.core import threads

    package_root = str(Path(__file__).resolve().parents[2])  # workers import this semcal, as the driver does
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    if config.ray_address:
        ray.init(address=config.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        return
    ray.init(
        num_cpus=max(threads.available_cores(), config.workers + 1),  # one beyond the actors: reads and writes
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )


def _counts(decided: Any) -> dict[str, int]:
    """Items, accepted items and error records of the written output, from two small columns
    streamed through the driver."""
    counts = {"items": 0, "accepted": 0, "errors": 0}
    for batch in decided.select_columns(["decision", "error"]).iter_batches(batch_format="pandas"):
        errors = int(batch["error"].notna().sum())
        counts["errors"] += errors
        counts["items"] += len(batch) - errors
        counts["accepted"] += int((batch["decision"] == True).sum())  # noqa: E712 (element-wise; nulls are not True)
    return counts
