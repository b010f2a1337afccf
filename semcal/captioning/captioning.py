"""Captioning stages: turn every image or audio clip of a data set into text.

Semantic calibration works on text, so each media item is first captioned: images with
Florence-2 or any other image-to-text model, audio with Qwen2-Audio (the models are in
semcal.captioning.captioners, the checks of the input in semcal.captioning.caption_inputs).

Items are captioned in batches, in fixed windows of `batch_size` rows, and written in
chunks (files.ChunkedTableWriter) into the run's partial folder (semcal.store.runstate): run
again with the same settings and data, a killed run continues where it stopped and,
because the windows are the same, ends with the same bytes as a run that was never
stopped. An item that cannot be decoded is listed in errors.csv with its reason and gets
an empty caption; every row is kept, so row ids (text_id) stay those of the input.

Output folder: the input data set with a caption column added (save_to_disk format),
captions.csv (split, id, caption), errors.csv (split, id, reason), semcal_record.json.
`load_captioner(record)` and `caption_batch` caption new files as a finished output was
captioned (its record's model and settings): `semcal filter` on a folder of media.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from semcal.captioning import caption_inputs, captioners
from semcal.captioning.caption_inputs import CaptionInputs
from semcal.captioning.caption_settings import AudioCaptionConfig, ImageCaptionConfig
from semcal.captioning.captioners import DTYPES, FLORENCE_CAPTION_TASKS
from semcal.core import console, distributed
from semcal.core.config import below_minimum, config_to_dict
from semcal.core.errors import UserError
from semcal.store import files, runstate
from semcal.store.media import MediaError
from semcal.store.runstate import StageOutput

log = logging.getLogger(__name__)

CAPTIONS_CSV = "captions.csv"
ERRORS_CSV = "errors.csv"


# ---------------------------------------------------------------- stages


def caption_images(config: ImageCaptionConfig) -> Path:
    """Caption every image of the chosen splits; returns the output data-set folder."""
    _check_settings(config)
    return _run(config, "caption-images", "image", config.image_column, _image_captioner(config))


def caption_audio(config: AudioCaptionConfig) -> Path:
    """Caption every audio clip of the chosen splits; returns the output data-set folder."""
    _check_settings(config)
    return _run(config, "caption-audio", "audio", config.audio_column, _audio_captioner(config))


def _image_captioner(config: ImageCaptionConfig) -> Any:
    """The captioner class for `model_name`, its task or prompt checked before any weights load."""
    model_type = captioners.model_type(config.model_name)
    if model_type == "florence2":
        if config.task_prompt not in FLORENCE_CAPTION_TASKS:
            raise UserError(
                f"task_prompt {config.task_prompt!r} is not a Florence-2 captioning task; use one of "
                f"{', '.join(FLORENCE_CAPTION_TASKS)} (the paper uses <MORE_DETAILED_CAPTION>)."
            )
        return captioners.FlorenceCaptioner
    captioners.require_image_text_to_text(config.model_name, model_type)
    return captioners.ImageTextToTextCaptioner


def _audio_captioner(config: AudioCaptionConfig) -> Any:
    model_type = captioners.model_type(config.model_name)
    if model_type != "qwen2_audio":
        raise UserError(
            f"{config.model_name} is a {model_type!r} model, not Qwen2-Audio: the audio stage captions with "
            "Qwen2AudioForConditionalGeneration. Set model_name to Qwen/Qwen2-Audio-7B-Instruct or a local copy of it."
        )
    if not config.prompt.strip():
        raise UserError(
            "prompt is empty: Qwen2-Audio needs an instruction, e.g. 'Describe the sounds in this audio clip.'"
        )
    return captioners.Qwen2AudioCaptioner


# The captioning stages by their record's stage name: media kind, settings, captioner class.
STAGES = {
    "caption-images": ("image", ImageCaptionConfig, _image_captioner),
    "caption-audio": ("audio", AudioCaptionConfig, _audio_captioner),
}


def load_captioner(record: dict[str, Any]) -> tuple[Any, str, int]:
    """The captioner of a captioning stage's record (its model, task or prompt and generation
    settings), its media kind and its batch size: to caption new files as the stage did."""
    kind, config_class, captioner_class = STAGES[record["stage"]]
    names = {setting.name for setting in fields(config_class)}
    config = config_class(**{name: value for name, value in record["config"].items() if name in names})
    device, dtype = captioners.device_and_dtype(config.device, config.dtype)
    return captioner_class(config)(config, device, dtype), kind, config.batch_size


def caption_batch(captioner: Any, values: list[Any]) -> tuple[dict[int, str], dict[int, str]]:
    """Decode and caption one batch of media values (paths, bytes, datasets values): the
    captions, and the reasons of the items that could not be decoded, by position in `values`."""
    items, positions, failures = [], [], {}
    for position, value in enumerate(values):
        try:
            items.append(captioner.decode(value))
            positions.append(position)
        except MediaError as err:
            failures[position] = err.reason
    captions = dict(zip(positions, captioner.caption(items), strict=True)) if items else {}
    return captions, failures


def _check_settings(config: ImageCaptionConfig | AudioCaptionConfig) -> None:
    problems = below_minimum(config, {"batch_size": 1, "chunk_size": 1, "num_beams": 1, "max_new_tokens": 1})
    if problems:
        raise UserError("; ".join(problems) + ".")
    if config.max_items is not None and config.max_items < 1:
        raise UserError(f"max_items must be at least 1, or none for all rows (got {config.max_items}).")
    if config.device_map and distributed.active():
        raise UserError(
            f"device_map={config.device_map} spreads one model over all GPUs, but this is one of "
            f"{distributed.world_size()} processes that each hold a model: launch one process, or drop device_map."
        )
    if config.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)} (got {config.dtype!r}).")
    if not config.caption_column:
        raise UserError("caption_column is empty: name the column the captions go to (e.g. text).")
    output_dir, dataset_path = Path(config.output_dir).expanduser(), Path(config.dataset_name).expanduser()
    if dataset_path.exists() and output_dir.resolve() == dataset_path.resolve():
        raise UserError(f"output_dir {output_dir} is the input data set: write the captioned copy to a new folder.")


# ---------------------------------------------------------------- the run

# Settings that say where things are or how work is cut up: they do not change a caption.
# What dataset_name and labels_csv hold is fingerprinted instead.
_NOT_IDENTITY = (
    "dataset_name",
    "labels_csv",
    "split_column",
    "output_dir",
    "chunk_size",
    "device",
    "device_map",
    "overwrite",
)


def _run(config: Any, stage: str, kind: str, media_column: str, make_captioner: Any) -> Path:
    """Caption the input into the stage's output folder, resuming an unfinished run of this identity."""
    output = StageOutput(stage, config.output_dir, what=stage, overwrite=config.overwrite, noun="captioned data set")
    inputs = caption_inputs.load_inputs(config, kind, media_column)
    device, dtype = captioners.device_and_dtype(config.device, config.dtype)
    # "auto" is float16 on a GPU, float32 on the CPU: a run resumed elsewhere must not mix the two.
    settings = {**config_to_dict(config), "dtype": str(dtype).replace("torch.", "")}
    identity = runstate.identity(
        stage, settings, caption_inputs.fingerprints(inputs, media_column), ignore=_NOT_IDENTITY
    )
    if output.up_to_date(identity):
        return output.path
    with output.building(identity) as staging:
        captioner = make_captioner(config, device, dtype)
        captions, errors, stats = _caption_splits(config, inputs, media_column, captioner, staging)
        long_clips = sum(distributed.gather(getattr(captioner, "long_clips", 0)))
        if not distributed.is_main():  # the main process merges and writes; this rank's share is written
            output.finish(config)
            return output.path
        _write_output(config, inputs, media_column, captions, errors, staging)
        summary = _summary(output.path, stats, len(errors), long_clips, getattr(captioner, "max_seconds", None))
        output.finish(
            config,
            summary=summary,
            model=captioner.describe(),
            splits=stats,
            failed=len(errors),
            long_clips_cut=long_clips,
        )
    return output.path


def _caption_splits(
    config: Any, inputs: CaptionInputs, media_column: str, captioner: Any, folder: Path
) -> tuple[dict[str, dict[int, str]], list[tuple[str, int, str]], dict[str, dict[str, int]]]:
    """Caption every split into chunks in `folder`; returns captions by split and id, failures, counts."""
    writers, errors, stats = {}, [], {}
    for split in inputs.splits:
        writers[split] = files.ChunkedTableWriter(
            folder / f"captions_{split}.csv", ["id", "caption"], key_column="id", writer=distributed.writer_name()
        )
        resumed = len(writers[split].done_keys)
        dataset = inputs.dataset_dict[split].select_columns([media_column])
        dataset = caption_inputs.undecoded(dataset, media_column)
        failed = _caption_split(split, dataset, inputs.rows[split], media_column, captioner, writers[split], config)
        errors.extend(failed)
        stats[split] = {"rows": inputs.rows[split], "resumed_with": resumed}
    # Several processes: every rank's share is written and its failures are known here.
    errors = sorted(
        (error for rank_errors in distributed.gather(errors) for error in rank_errors),
        key=lambda error: (inputs.splits.index(error[0]), error[1]),
    )
    if not distributed.is_main():
        return {}, errors, stats
    for split in inputs.splits:
        stats[split]["failed"] = sum(1 for error in errors if error[0] == split)
    # Every split is captioned: only now merge the chunks (until then a kill resumes every split).
    captions = {}
    for split, writer in writers.items():
        merged = writer.finish(sort_key=int)
        table = files.read_csv(merged, dtype=str, keep_default_na=False)
        merged.unlink()
        captions[split] = dict(zip(table["id"].astype(int), table["caption"], strict=True))
        stats[split]["captioned"] = len(captions[split])
        stats[split]["empty_captions"] = sum(1 for caption in captions[split].values() if not caption.strip())
    return captions, errors, stats


def _caption_split(
    split: str,
    dataset: Any,
    rows: int,
    media_column: str,
    captioner: Any,
    writer: files.ChunkedTableWriter,
    config: Any,
) -> list[tuple[str, int, str]]:
    """Caption rows [0, rows) not yet written; returns the (split, id, reason) of items that failed."""
    done = writer.done_keys
    # Fixed windows of batch_size rows: a resumed run forms the same batches as an uninterrupted
    # one; several processes share the windows out (semcal.core.distributed), so each item is captioned
    # in the same batch whatever the number of processes.
    windows = distributed.shard(range(0, rows, config.batch_size))
    todo = sum(1 for start in windows for i in range(start, min(start + config.batch_size, rows)) if str(i) not in done)
    failed: list[tuple[str, int, str]] = []
    pending: list[tuple[int, str]] = []
    progress = console.progress(total=todo, unit="item", desc=f"caption {split}")
    try:
        for start in windows:
            ids = [i for i in range(start, min(start + config.batch_size, rows)) if str(i) not in done]
            if not ids:
                continue
            captions, failures = caption_batch(captioner, dataset[ids][media_column])
            failed.extend((split, ids[position], reason) for position, reason in failures.items())
            pending.extend((ids[position], caption) for position, caption in captions.items())
            progress.update(len(ids))
            if len(pending) >= config.chunk_size:
                writer.write_chunk(pending)
                pending = []
                runstate.kill_point("chunk")
    finally:
        # Whole windows only, so this keeps the resume invariant (also on Ctrl-C or out-of-memory).
        if pending:
            writer.write_chunk(pending)
        progress.close()
    return failed


def _write_output(
    config: Any,
    inputs: CaptionInputs,
    media_column: str,
    captions: dict[str, dict[int, str]],
    errors: list[tuple[str, int, str]],
    folder: Path,
) -> None:
    """The data set with its caption column, captions.csv and errors.csv, into `folder`."""
    import datasets
    import pandas as pd

    output = datasets.DatasetDict()
    for split in inputs.splits:
        dataset = inputs.dataset_dict[split]
        if inputs.rows[split] < len(dataset):
            dataset = dataset.select(range(inputs.rows[split]))
        by_id = captions[split]
        dataset = dataset.add_column(config.caption_column, [by_id.get(i, "") for i in range(len(dataset))])
        if not config.keep_media_column:
            dataset = dataset.remove_columns([media_column])
        output[split] = dataset
    files.save_dataset_dict(output, folder)
    rows = [(split, row_id, caption) for split, by_id in captions.items() for row_id, caption in by_id.items()]
    files.write_csv(folder / CAPTIONS_CSV, pd.DataFrame(rows, columns=["split", "id", "caption"]))
    files.write_csv(folder / ERRORS_CSV, pd.DataFrame(errors, columns=["split", "id", "reason"]))


def _summary(
    output_dir: Path, stats: dict[str, dict[str, int]], failed: int, long_clips: int, max_seconds: float | None
) -> str:
    """Warnings for what needs a look, and the stage's one summary line."""
    if failed:
        log.warning(
            "%d items failed to decode: %s lists them with their reasons. They have empty captions in the data set "
            "(later stages refuse empty texts): fix or drop them, then run again.",
            failed,
            output_dir / ERRORS_CSV,
        )
    empty = sum(s["empty_captions"] for s in stats.values())
    if empty:
        log.warning("%d captions are empty: the model answered with nothing for those items.", empty)
    if long_clips:
        log.warning(
            "%d clips are longer than %g s: the model heard only their first %g s.",
            long_clips,
            max_seconds,
            max_seconds,
        )
    total = sum(s["rows"] for s in stats.values())
    captioned = sum(s["captioned"] for s in stats.values())
    per_split = ", ".join(f"{split} {s['captioned']}/{s['rows']}" for split, s in stats.items())
    return f"captioned {captioned} of {total} items ({per_split}), {failed} failed to decode; data set: {output_dir}"
