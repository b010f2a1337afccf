"""The captioning stages' settings: one base of what image and audio captioning share, and
one dataclass per kind with its own media column, model, prompt and defaults. Both the stage
(semcal.captioning.captioning) and the captioners (semcal.captioning.captioners) import them from here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CaptionConfig:
    dataset_name: str = ""  # folder of media files, save_to_disk folder, Hub id, or CSV/Parquet/JSONL files
    labels_csv: str | None = None  # folder of media files only: CSV with file_name (relative path) and label columns
    split_column: str = "split"  # one CSV/Parquet/JSONL file (or labels_csv): the column naming each row's split
    splits: list[str] = field(default_factory=list)  # splits to caption; empty: all. Only these go to the output
    output_dir: str = ""  # data-set folder to write (new, or an earlier output of this stage)
    caption_column: str = "text"  # name of the caption column added to the data set (the paper's: text)
    model_name: str = ""  # Hub id or local folder of the captioning model
    num_beams: int = 1  # beam search width (1: greedy); never sampling, so captions are reproducible
    max_new_tokens: int = 64  # longest caption, in tokens
    batch_size: int = 4  # items per generate call
    chunk_size: int = 128  # captions written per chunk: an interrupted run loses at most the chunk in progress
    max_items: int | None = None  # caption only the first N rows of each split (to try a model on a sample); none: all
    keep_media_column: bool = False  # keep the media column in the output data set
    device: str | None = None  # cuda, cuda:1, cpu, mps, ...; none: this process's GPU when there is one, else cpu
    device_map: str | None = None  # auto: spread a model too large for one GPU over all GPUs (one process only)
    dtype: str = (
        "auto"  # auto (bfloat16 on GPUs that support it, else float16; float32 on cpu), float32, float16, bfloat16
    )
    overwrite: bool = False  # discard an unfinished run of other settings in output_dir instead of refusing


@dataclass
class ImageCaptionConfig(CaptionConfig):
    dataset_name: str = (
        "runs/images/source"  # folder of image files, save_to_disk folder, Hub id, or CSV/Parquet/JSONL files
    )
    output_dir: str = "runs/images/captioned"  # data-set folder to write (new, or an earlier output of this stage)
    model_name: str = "florence-community/Florence-2-large"  # Hub id or local folder: Florence-2, BLIP, ...
    num_beams: int = 3  # beam search width (1: greedy); never sampling, so captions are reproducible
    max_new_tokens: int = 512  # longest caption, in tokens
    batch_size: int = 8  # images per generate call
    keep_media_column: bool = True  # keep the image column in the output data set (false: smaller output)
    image_column: str = "image"  # column holding the images (datasets Image values, bytes or file paths)
    task_prompt: str = (
        "<MORE_DETAILED_CAPTION>"  # Florence-2 task (the paper's); or <CAPTION>, <DETAILED_CAPTION>, <OCR>
    )
    text_prompt: str = ""  # models other than Florence-2: text given with each image (BLIP: caption prefix)


@dataclass
class AudioCaptionConfig(CaptionConfig):
    dataset_name: str = (
        "runs/audio/source"  # folder of audio files, save_to_disk folder, Hub id, or CSV/Parquet/JSONL files
    )
    output_dir: str = "runs/audio/captioned"  # data-set folder to write (new, or an earlier output of this stage)
    model_name: str = "Qwen/Qwen2-Audio-7B-Instruct"  # Hub id or local folder of a Qwen2-Audio model
    batch_size: int = 4  # clips per generate call
    keep_media_column: bool = False  # keep the audio column in the output data set (audio is large)
    audio_column: str = "audio"  # column holding the clips (Audio values, array+sampling_rate, bytes or paths)
    prompt: str = "Describe the sounds in this audio clip."  # instruction given with each clip (the paper's)
