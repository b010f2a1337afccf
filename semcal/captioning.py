"""Captioning stages: turn every image or audio clip of a data set into text.

Semantic calibration works on text, so each media item is first captioned:
- images with Florence-2 (`Florence2ForConditionalGeneration`, the paper's task prompt
  `<MORE_DETAILED_CAPTION>`, 3 beams), or with any other image-to-text model that
  transformers' `AutoModelForImageTextToText` loads (BLIP, ...): the model's config
  (`model_type`) picks the path;
- audio with Qwen2-Audio (`Qwen2AudioForConditionalGeneration` and its chat template),
  from 16 kHz mono clips; only the model's answer is kept, not the prompt.

Items are captioned in batches, in fixed windows of `batch_size` rows, and written in
chunks (files.ChunkedTableWriter): a killed run continues where it stopped and, because
the windows are the same, ends with the same bytes as a run that was never stopped. An
item that cannot be decoded is listed in errors.csv with its reason and gets an empty
caption; every row is kept, so row ids (text_id) stay those of the input.

Output folder: the input data set with a caption column added (save_to_disk format),
captions.csv (split, id, caption), errors.csv (split, id, reason), semcal_record.json.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcal import files
from semcal.config import UserError, config_to_dict
from semcal.data import DATA_FILE_SUFFIXES, load_dataset_dict, load_media_folder
from semcal.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES, MediaError, load_audio, load_image

# Florence-2 tasks whose answer is plain text and which take no input besides the image.
FLORENCE_CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>")
# Qwen2-Audio turns a clip into (frames/2 - 1)/2 audio tokens; under 0.1 s it gets fewer than two.
MIN_AUDIO_SECONDS = 0.1
CAPTIONS_CSV = "captions.csv"
ERRORS_CSV = "errors.csv"
# Test hook: exit abruptly (like a kill) after this many chunks have been written.
CRASH_AFTER_CHUNKS_ENV = "SEMCAL_CRASH_AFTER_CHUNKS"
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class ImageCaptionConfig:
    dataset_name: str = (
        "runs/images/source"  # folder of image files, save_to_disk folder, Hub id, or CSV/Parquet/JSONL files
    )
    image_column: str = "image"  # column holding the images (datasets Image values, bytes or file paths)
    labels_csv: str | None = None  # folder of image files only: CSV with file_name (relative path) and label columns
    split_column: str = "split"  # one CSV/Parquet/JSONL file (or labels_csv): the column naming each row's split
    splits: list[str] = field(default_factory=list)  # splits to caption; empty: all. Only these go to the output
    output_dir: str = "runs/images/captioned"  # data-set folder to write (new, or an earlier output of this stage)
    caption_column: str = "text"  # name of the caption column added to the data set (the paper's: text)
    model_name: str = "florence-community/Florence-2-large"  # Hub id or local folder: Florence-2, BLIP, ...
    task_prompt: str = (
        "<MORE_DETAILED_CAPTION>"  # Florence-2 task (the paper's); or <CAPTION>, <DETAILED_CAPTION>, <OCR>
    )
    text_prompt: str = ""  # models other than Florence-2: text given with each image (BLIP: caption prefix)
    num_beams: int = 3  # beam search width (1: greedy); never sampling, so captions are reproducible
    max_new_tokens: int = 512  # longest caption, in tokens
    batch_size: int = 8  # images per generate call
    chunk_size: int = 128  # captions written per chunk: an interrupted run loses at most the chunk in progress
    max_items: int | None = None  # caption only the first N rows of each split (to try a model on a sample); none: all
    keep_media_column: bool = True  # keep the image column in the output data set (false: smaller output)
    device: str | None = None  # cuda, cuda:1, cpu, mps, ...; none: cuda when available, else cpu
    dtype: str = "auto"  # auto (float16 on CUDA, float32 otherwise), float32, float16 or bfloat16


@dataclass
class AudioCaptionConfig:
    dataset_name: str = (
        "runs/audio/source"  # folder of audio files, save_to_disk folder, Hub id, or CSV/Parquet/JSONL files
    )
    audio_column: str = "audio"  # column holding the clips (Audio values, array+sampling_rate, bytes or paths)
    labels_csv: str | None = None  # folder of audio files only: CSV with file_name (relative path) and label columns
    split_column: str = "split"  # one CSV/Parquet/JSONL file (or labels_csv): the column naming each row's split
    splits: list[str] = field(default_factory=list)  # splits to caption; empty: all. Only these go to the output
    output_dir: str = "runs/audio/captioned"  # data-set folder to write (new, or an earlier output of this stage)
    caption_column: str = "text"  # name of the caption column added to the data set
    model_name: str = "Qwen/Qwen2-Audio-7B-Instruct"  # Hub id or local folder of a Qwen2-Audio model
    prompt: str = "Describe the sounds in this audio clip."  # instruction given with each clip (the paper's)
    num_beams: int = 1  # beam search width (1: greedy); never sampling, so captions are reproducible
    max_new_tokens: int = 64  # longest caption, in tokens
    batch_size: int = 4  # clips per generate call
    chunk_size: int = 128  # captions written per chunk: an interrupted run loses at most the chunk in progress
    max_items: int | None = None  # caption only the first N rows of each split (to try a model on a sample); none: all
    keep_media_column: bool = False  # keep the audio column in the output data set (audio is large)
    device: str | None = None  # cuda, cuda:1, cpu, mps, ...; none: cuda when available, else cpu
    dtype: str = "auto"  # auto (float16 on CUDA, float32 otherwise), float32, float16 or bfloat16


# ---------------------------------------------------------------- stages


def caption_images(config: ImageCaptionConfig) -> Path:
    """Caption every image of the chosen splits; returns the output data-set folder."""
    _check_settings(config)
    model_type = _model_type(config.model_name)
    if model_type == "florence2":
        if config.task_prompt not in FLORENCE_CAPTION_TASKS:
            raise UserError(
                f"task_prompt {config.task_prompt!r} is not a Florence-2 captioning task; use one of "
                f"{', '.join(FLORENCE_CAPTION_TASKS)} (the paper uses <MORE_DETAILED_CAPTION>)."
            )
    else:
        _require_image_text_to_text(config.model_name, model_type)
    inputs = _load_input(config, "image", config.image_column)
    _check_unfinished(config, inputs.splits)
    device, dtype = _device_and_dtype(config.device, config.dtype)
    if model_type == "florence2":
        captioner: Any = FlorenceCaptioner(config, device, dtype)
    else:
        captioner = ImageTextToTextCaptioner(config, device, dtype)
    return _run(config, "caption-images", inputs, config.image_column, captioner)


def caption_audio(config: AudioCaptionConfig) -> Path:
    """Caption every audio clip of the chosen splits; returns the output data-set folder."""
    _check_settings(config)
    model_type = _model_type(config.model_name)
    if model_type != "qwen2_audio":
        raise UserError(
            f"{config.model_name} is a {model_type!r} model, not Qwen2-Audio: the audio stage captions with "
            "Qwen2AudioForConditionalGeneration. Set model_name to Qwen/Qwen2-Audio-7B-Instruct or a local copy of it."
        )
    if not config.prompt.strip():
        raise UserError(
            "prompt is empty: Qwen2-Audio needs an instruction, e.g. 'Describe the sounds in this audio clip.'"
        )
    inputs = _load_input(config, "audio", config.audio_column)
    _check_unfinished(config, inputs.splits)
    device, dtype = _device_and_dtype(config.device, config.dtype)
    captioner = Qwen2AudioCaptioner(config, device, dtype)
    return _run(config, "caption-audio", inputs, config.audio_column, captioner)


# ---------------------------------------------------------------- checks before any work


def _check_settings(config: ImageCaptionConfig | AudioCaptionConfig) -> None:
    for name in ("batch_size", "chunk_size", "num_beams", "max_new_tokens"):
        if getattr(config, name) < 1:
            raise UserError(f"{name} must be at least 1 (got {getattr(config, name)}).")
    if config.max_items is not None and config.max_items < 1:
        raise UserError(f"max_items must be at least 1, or none for all rows (got {config.max_items}).")
    if config.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)} (got {config.dtype!r}).")
    if not config.caption_column:
        raise UserError("caption_column is empty: name the column the captions go to (e.g. text).")
    _check_output_dir(Path(config.output_dir).expanduser(), Path(config.dataset_name).expanduser())


def _check_output_dir(output_dir: Path, dataset_path: Path) -> None:
    """The output folder is replaced when the data set is saved: refuse one that holds anything else."""
    if dataset_path.exists() and output_dir.resolve() == dataset_path.resolve():
        raise UserError(f"output_dir {output_dir} is the input data set: write the captioned copy to a new folder.")
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise UserError(f"output_dir {output_dir} is a file; give a folder path.")
    record = files.read_record(output_dir) if (output_dir / files.RECORD_NAME).is_file() else None
    ours = isinstance(record, dict) and record.get("stage") in ("caption-images", "caption-audio")
    entries = list(output_dir.iterdir())
    unfinished = all(e.name.startswith("captions_") and e.name.endswith((".csv", ".csv.parts")) for e in entries)
    if not (ours or unfinished):
        raise UserError(
            f"output_dir {output_dir} exists and holds other files ({sorted(e.name for e in entries)[:5]}); it would be "
            "replaced by the captioned data set. Choose a new folder."
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _model_type(model_name: str) -> str:
    """The model's `model_type`, read from its config.json (local folder or Hub), with a clear error."""
    from transformers import PreTrainedConfig

    path = Path(model_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(
                f"{path} is not a model folder: it has no config.json. Set model_name to a folder written by "
                "save_pretrained (config.json, weights and processor files) or to a Hub id."
            )
        try:
            config_dict = files.read_json(path / "config.json")
        except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
            raise UserError(f"{path / 'config.json'} is not valid JSON ({err}): is {path} a model folder?") from None
    elif path.exists():
        raise UserError(f"{path} is a file; set model_name to a model folder or a Hub id.")
    elif _looks_like_path(model_name):
        raise UserError(f"model folder {path} does not exist.")
    else:
        try:
            config_dict, _ = PreTrainedConfig.get_config_dict(model_name)
        except Exception as err:  # the hub client raises many types for "no network" / "no such repo"
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"could not load model {model_name!r} from the Hugging Face Hub ({reason}); if this machine has no "
                f"network, download it where there is one with `hf download {model_name} --local-dir FOLDER`, copy "
                "FOLDER here and set model_name to that folder."
            ) from None
    model_type = config_dict.get("model_type")
    if not model_type:
        raise UserError(f"{model_name}: config.json has no model_type, so it is not a transformers model.")
    if model_type == "florence2" and (
        "auto_map" in config_dict or (config_dict.get("text_config") or {}).get("model_type") == "florence2_language"
    ):
        name = model_name.rstrip("/").split("/")[-1]
        raise UserError(
            f"{model_name} is Florence-2 in Microsoft's original format, which runs only with trust_remote_code "
            f"(semcal never runs code from the Hub). Use the same weights in transformers' format: "
            f"florence-community/{name} (or a local copy of it)."
        )
    return model_type


def _require_image_text_to_text(model_name: str, model_type: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise UserError(
            f"{model_name} is a {model_type!r} model, not an image-captioning model. Set model_name to a Florence-2 "
            "checkpoint (florence-community/Florence-2-large) or another image-to-text model that "
            "AutoModelForImageTextToText loads (e.g. Salesforce/blip-image-captioning-large)."
        )


@dataclass
class _Inputs:
    dataset_dict: Any  # the DatasetDict as loaded (media columns as they were)
    splits: list[str]  # splits to caption, in order
    rows: dict[str, int]  # rows to caption per split (the first N rows)


def _load_input(config: ImageCaptionConfig | AudioCaptionConfig, kind: str, media_column: str) -> _Inputs:
    """Load the data set and check splits, media column, caption column and sizes."""
    path = Path(config.dataset_name).expanduser()
    suffixes = IMAGE_SUFFIXES if kind == "image" else AUDIO_SUFFIXES
    is_media_folder = path.is_dir() and (
        config.labels_csv is not None
        or (
            not (path / "dataset_dict.json").exists()
            and not any(p.suffix in DATA_FILE_SUFFIXES for p in path.iterdir())
            and any(p.suffix.lower() in suffixes for p in path.rglob("*"))
        )
    )
    if is_media_folder:
        dataset_dict = load_media_folder(path, kind, config.labels_csv, media_column, config.split_column)
    elif config.labels_csv is not None:
        raise UserError(
            f"labels_csv is only for a folder of {kind} files, and {config.dataset_name} is not a folder. "
            "Put the labels in the data set itself, or clear labels_csv."
        )
    else:
        dataset_dict = load_dataset_dict(config.dataset_name, config.split_column)

    splits = list(dict.fromkeys(config.splits)) or list(dataset_dict)
    if not splits:
        raise UserError(f"{config.dataset_name} has no rows: nothing to caption.")
    unknown = [s for s in splits if s not in dataset_dict]
    if unknown:
        raise UserError(f"no split {', '.join(map(repr, unknown))}; the data set has splits {sorted(dataset_dict)}.")
    rows = {}
    for split in splits:
        dataset = dataset_dict[split]
        if media_column not in dataset.column_names:
            raise UserError(
                f"split {split!r} has no column {media_column!r}; its columns are {dataset.column_names}. "
                f"Set {kind}_column to the column that holds the {kind} items."
            )
        rows[split] = len(dataset) if config.max_items is None else min(len(dataset), config.max_items)
        if rows[split] == 0:
            raise UserError(
                f"split {split!r} of {config.dataset_name} is empty: nothing to caption. "
                "Leave it out with the splits setting."
            )
        _check_media_feature(dataset.features[media_column], split, media_column, kind)
        if config.caption_column in dataset.column_names:
            raise UserError(
                f"split {split!r} already has a column {config.caption_column!r}; set caption_column to a new name."
            )
    return _Inputs(dataset_dict, splits, rows)


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


def _device_and_dtype(device: str | None, dtype: str) -> tuple[str, Any]:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":  # the paper: half precision on the GPU, full precision on the CPU
        return device, torch.float16 if device.startswith("cuda") else torch.float32
    return device, getattr(torch, dtype)


def _load_pretrained(loader: Callable[..., Any], model_name: str, what: str, **kwargs: Any) -> Any:
    path = Path(model_name).expanduser()
    try:
        return loader(str(path) if path.is_dir() else model_name, **kwargs)
    except Exception as err:  # transformers raises OSError/ValueError/KeyError for incomplete folders
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"could not load the {what} of {model_name} ({reason}). The folder needs the files save_pretrained "
            "writes for both the model and its processor."
        ) from None


# ---------------------------------------------------------------- captioners


class FlorenceCaptioner:
    """Florence-2 with a captioning task prompt; the processor's post-processing yields the text."""

    def __init__(self, config: ImageCaptionConfig, device: str, dtype: Any):
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        self.processor = _load_pretrained(AutoProcessor.from_pretrained, config.model_name, "processor")
        self.model = _load_pretrained(
            Florence2ForConditionalGeneration.from_pretrained, config.model_name, "model", dtype=dtype
        )
        self.model.to(device).eval()
        self.task, self.device, self.dtype = config.task_prompt, device, dtype
        self.generate_kwargs = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams}

    def decode(self, item: Any) -> Any:
        return load_image(item)

    def caption(self, images: list) -> list[str]:
        import torch

        inputs = self.processor(text=[self.task] * len(images), images=images, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, do_sample=False, **self.generate_kwargs)
        # Beam search and batching pad short answers with <pad>, which Florence-2's post-processing keeps.
        pad_id = self.processor.tokenizer.pad_token_id
        captions = []
        for row, image in zip(generated.tolist(), images, strict=True):
            text = self.processor.decode([t for t in row if t != pad_id], skip_special_tokens=False)
            parsed = self.processor.post_process_generation(text, task=self.task, image_size=image.size)
            captions.append(parsed[self.task].strip())
        return captions

    def describe(self) -> dict[str, Any]:
        return _describe(self.model, self.device, self.dtype, task_prompt=self.task, **self.generate_kwargs)


class ImageTextToTextCaptioner:
    """Any model AutoModelForImageTextToText loads (BLIP, LLaVA-style chat models, ...).

    A processor with a chat template gets the image and `text_prompt` as one user turn;
    otherwise `text_prompt` (if any) goes to the processor as text, which BLIP reads as the
    start of the caption. Decoder-only models return the prompt with the answer: those
    prompt tokens are cut off.
    """

    def __init__(self, config: ImageCaptionConfig, device: str, dtype: Any):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = _load_pretrained(AutoProcessor.from_pretrained, config.model_name, "processor")
        self.chat = getattr(self.processor, "chat_template", None) is not None
        if self.chat and not config.text_prompt.strip():
            raise UserError(
                f"{config.model_name} is a chat model: set text_prompt to the instruction, e.g. "
                "'Describe this image in detail.'"
            )
        self.model = _load_pretrained(
            AutoModelForImageTextToText.from_pretrained, config.model_name, "model", dtype=dtype
        )
        self.model.to(device).eval()
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and not self.model.config.is_encoder_decoder:
            tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
        self.prompt, self.device, self.dtype = config.text_prompt, device, dtype
        self.generate_kwargs = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams}

    def decode(self, item: Any) -> Any:
        return load_image(item)

    def caption(self, images: list) -> list[str]:
        import torch

        if self.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
        elif self.prompt:
            inputs = self.processor(images=images, text=[self.prompt] * len(images), padding=True, return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, do_sample=False, **self.generate_kwargs)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and generated.shape[1] >= prompt_ids.shape[1]:
            if torch.equal(generated[:, : prompt_ids.shape[1]], prompt_ids):
                generated = generated[:, prompt_ids.shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(generated, skip_special_tokens=True)]

    def describe(self) -> dict[str, Any]:
        return _describe(self.model, self.device, self.dtype, text_prompt=self.prompt, **self.generate_kwargs)


class Qwen2AudioCaptioner:
    """Qwen2-Audio: one user turn (the clip, then the prompt) through the chat template."""

    def __init__(self, config: AudioCaptionConfig, device: str, dtype: Any):
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.processor = _load_pretrained(AutoProcessor.from_pretrained, config.model_name, "processor")
        self.model = _load_pretrained(
            Qwen2AudioForConditionalGeneration.from_pretrained, config.model_name, "model", dtype=dtype
        )
        self.model.to(device).eval()
        self.processor.tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
        feature_extractor = self.processor.feature_extractor
        self.sampling_rate = int(feature_extractor.sampling_rate)  # 16 kHz for Qwen2-Audio
        self.max_seconds = feature_extractor.n_samples / self.sampling_rate  # longer clips are cut (30 s)
        self.long_clips = 0
        messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": config.prompt}]}]
        self.text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        self.prompt, self.device, self.dtype = config.prompt, device, dtype
        self.generate_kwargs = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams}

    def decode(self, item: Any) -> Any:
        samples = load_audio(item, self.sampling_rate)
        seconds = len(samples) / self.sampling_rate
        if seconds < MIN_AUDIO_SECONDS:
            raise MediaError(f"clip too short ({seconds:.3f} s; Qwen2-Audio needs at least {MIN_AUDIO_SECONDS} s)")
        if seconds > self.max_seconds:
            self.long_clips += 1
        return samples

    def caption(self, clips: list) -> list[str]:
        import torch

        inputs = self.processor(
            text=[self.text] * len(clips),
            audio=clips,
            sampling_rate=self.sampling_rate,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        inputs["input_features"] = inputs["input_features"].to(self.dtype)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, do_sample=False, **self.generate_kwargs)
        answers = generated[:, inputs["input_ids"].shape[1] :]  # generate returns the prompt, then the answer
        return [text.strip() for text in self.processor.batch_decode(answers, skip_special_tokens=True)]

    def describe(self) -> dict[str, Any]:
        return _describe(self.model, self.device, self.dtype, prompt=self.prompt, **self.generate_kwargs)


def _describe(model: Any, device: str, dtype: Any, **settings: Any) -> dict[str, Any]:
    return {
        "class": type(model).__name__,
        "name_or_path": model.config.name_or_path,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "generate": {"do_sample": False, **settings},
    }


# ---------------------------------------------------------------- the captioning loop


def _run(config: Any, stage: str, inputs: _Inputs, media_column: str, captioner: Any) -> Path:
    import datasets

    output_dir = Path(config.output_dir).expanduser()
    started = time.time()
    crash_after = int(os.environ.get(CRASH_AFTER_CHUNKS_ENV) or 0)
    chunks_written = [0]

    def write_chunk(writer: files.ChunkedTableWriter, rows: list[tuple[int, str]]) -> None:
        writer.write_chunk(rows)
        chunks_written[0] += 1
        if crash_after and chunks_written[0] >= crash_after:
            os._exit(75)  # as abrupt as a kill: nothing else is flushed or cleaned up

    settings = _caption_settings(config)
    writers, errors, stats = {}, [], {}
    for split in inputs.splits:
        writers[split] = _open_writer(output_dir, split, settings)
        resumed = len(writers[split].done_keys)
        dataset = _undecoded(inputs.dataset_dict[split].select_columns([media_column]), media_column)
        failed = _caption_split(
            split, dataset, inputs.rows[split], media_column, captioner, writers[split], config, write_chunk
        )
        errors.extend(failed)
        stats[split] = {"rows": inputs.rows[split], "resumed_with": resumed, "failed": len(failed)}

    # Every split is captioned: now merge the chunks and build the outputs.
    captions_by_split = {}
    for split, writer in writers.items():
        table = files.read_csv(writer.finish(sort_key=int), dtype=str, keep_default_na=False)
        captions_by_split[split] = dict(zip(table["id"].astype(int), table["caption"], strict=True))
    captions_table = _captions_table(captions_by_split)
    output = datasets.DatasetDict()
    for split in inputs.splits:
        dataset = inputs.dataset_dict[split]
        if inputs.rows[split] < len(dataset):
            dataset = dataset.select(range(inputs.rows[split]))
        by_id = captions_by_split[split]
        dataset = dataset.add_column(config.caption_column, [by_id.get(i, "") for i in range(len(dataset))])
        if not config.keep_media_column:
            dataset = dataset.remove_columns([media_column])
        output[split] = dataset
        stats[split]["captioned"] = len(by_id)
        stats[split]["empty_captions"] = sum(1 for c in by_id.values() if not c.strip())
    files.write_csv(output_dir / CAPTIONS_CSV, captions_table)
    files.write_csv(output_dir / ERRORS_CSV, _errors_table(errors))
    for split in writers:
        (output_dir / f"captions_{split}.csv").unlink()
    files.save_dataset_dict(output, output_dir)
    long_clips = getattr(captioner, "long_clips", 0)
    files.write_record(
        output_dir,
        stage,
        config_to_dict(config),
        model=captioner.describe(),
        splits=stats,
        failed=len(errors),
        long_clips_cut=long_clips,
        seconds=round(time.time() - started, 1),
    )
    _print_summary(output_dir, stats, len(errors), long_clips, getattr(captioner, "max_seconds", None))
    return output_dir


# Settings that decide what a caption is: an unfinished run resumes only with the same ones.
_CAPTION_SETTINGS = (
    "dataset_name",
    "image_column",
    "audio_column",
    "labels_csv",
    "caption_column",
    "model_name",
    "task_prompt",
    "text_prompt",
    "prompt",
    "num_beams",
    "max_new_tokens",
)


def _parts_settings_path(output_dir: Path, split: str) -> Path:
    return output_dir / f"captions_{split}.csv.parts" / "settings.json"


def _caption_settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config_to_dict(config).items() if k in _CAPTION_SETTINGS}


def _check_unfinished(config: Any, splits: list[str]) -> None:
    """An unfinished run continues only with the settings that made its captions."""
    settings = _caption_settings(config)
    for split in splits:
        path = _parts_settings_path(Path(config.output_dir).expanduser(), split)
        if not path.exists():
            continue
        earlier = files.read_json(path)
        if earlier != settings:
            changed = sorted(k for k in settings if earlier.get(k) != settings[k])
            raise UserError(
                f"{path.parent} holds an unfinished run made with other settings ({', '.join(changed)} differ). "
                "Restore those settings to continue it, or delete that folder to start over."
            )


def _open_writer(output_dir: Path, split: str, settings: dict[str, Any]) -> files.ChunkedTableWriter:
    writer = files.ChunkedTableWriter(output_dir / f"captions_{split}.csv", ["id", "caption"], key_column="id")
    files.write_json(_parts_settings_path(output_dir, split), settings)
    return writer


def _undecoded(dataset: Any, column: str) -> Any:
    """Read datasets Image/Audio columns as bytes/paths: semcal.media decodes them, one item at a time,
    so that one corrupt file is recorded instead of stopping the run (and no torchcodec is needed)."""
    import datasets

    feature = dataset.features[column]
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, datasets.Audio) and feature.decode:
        return dataset.cast_column(column, datasets.Audio(decode=False))
    return dataset


def _caption_split(
    split: str,
    dataset: Any,
    rows: int,
    media_column: str,
    captioner: Any,
    writer: files.ChunkedTableWriter,
    config: Any,
    write_chunk: Callable[[files.ChunkedTableWriter, list[tuple[int, str]]], None],
) -> list[tuple[str, int, str]]:
    """Caption rows [0, rows) not yet written; returns the (split, id, reason) of items that failed."""
    from tqdm.auto import tqdm

    done = writer.done_keys
    todo = sum(1 for i in range(rows) if str(i) not in done)
    failed: list[tuple[str, int, str]] = []
    pending: list[tuple[int, str]] = []
    progress = tqdm(total=todo, unit="item", desc=f"caption {split}", dynamic_ncols=True)
    try:
        # Fixed windows of batch_size rows: a resumed run forms the same batches as an uninterrupted one.
        for start in range(0, rows, config.batch_size):
            ids = [i for i in range(start, min(start + config.batch_size, rows)) if str(i) not in done]
            if not ids:
                continue
            items, good_ids = [], []
            for row_id, value in zip(ids, dataset[ids][media_column], strict=True):
                try:
                    items.append(captioner.decode(value))
                    good_ids.append(row_id)
                except MediaError as err:
                    failed.append((split, row_id, err.reason))
            if items:
                pending.extend(zip(good_ids, captioner.caption(items), strict=True))
            progress.update(len(ids))
            if len(pending) >= config.chunk_size:
                write_chunk(writer, pending)
                pending = []
    finally:
        # Whole windows only, so this keeps the resume invariant (also on Ctrl-C or out-of-memory).
        if pending:
            writer.write_chunk(pending)
        progress.close()
    return failed


def _captions_table(captions_by_split: dict[str, dict[int, str]]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        [(split, row_id, caption) for split, by_id in captions_by_split.items() for row_id, caption in by_id.items()],
        columns=["split", "id", "caption"],
    )


def _errors_table(errors: list[tuple[str, int, str]]) -> Any:
    import pandas as pd

    return pd.DataFrame(errors, columns=["split", "id", "reason"])


def _print_summary(
    output_dir: Path, stats: dict[str, dict[str, int]], failed: int, long_clips: int, max_seconds: float | None
) -> None:
    total = sum(s["rows"] for s in stats.values())
    captioned = sum(s["captioned"] for s in stats.values())
    per_split = ", ".join(f"{split} {s['captioned']}/{s['rows']}" for split, s in stats.items())
    print(f"captioned {captioned} of {total} items ({per_split}); {failed} failed to decode.")
    if failed:
        print(
            f"  the failed items are listed with their reasons in {output_dir / ERRORS_CSV}; they have empty captions "
            "in the data set (later stages refuse empty texts): fix or drop them, then run again."
        )
    empty = sum(s["empty_captions"] for s in stats.values())
    if empty:
        print(f"  {empty} captions are empty: the model answered with nothing for those items.")
    if long_clips:
        print(
            f"  {long_clips} clips are longer than {max_seconds:g} s: the model heard only their first {max_seconds:g} s."
        )
    print(f"data set with captions: {output_dir}")
