"""The captioning models: each turns a batch of decoded media items into texts.

- `FlorenceCaptioner`: Florence-2 (`Florence2ForConditionalGeneration`) with a captioning
  task prompt (the paper's `<MORE_DETAILED_CAPTION>`, 3 beams);
- `ImageTextToTextCaptioner`: any other model `AutoModelForImageTextToText` loads (BLIP,
  LLaVA-style chat models);
- `Qwen2AudioCaptioner`: Qwen2-Audio and its chat template, from 16 kHz mono clips; only
  the model's answer is kept, not the prompt.

Each has `decode(item)` (raises semcal.store.media.MediaError for an item it cannot read),
`caption(items)` (greedy or beam search, never sampling) and `describe()` (for the record).
`model_type` reads a model's config.json first, so a wrong model is refused before any
weights are loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semcal.captioning.caption_settings import AudioCaptionConfig, ImageCaptionConfig
from semcal.core import distributed
from semcal.core.errors import UserError
from semcal.store import data, files
from semcal.store.media import MediaError, load_audio, load_image

# Florence-2 tasks whose answer is plain text and which take no input besides the image.
FLORENCE_CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>")
# Qwen2-Audio turns a clip into (frames/2 - 1)/2 audio tokens; under 0.1 s it gets fewer than two.
MIN_AUDIO_SECONDS = 0.1
DTYPES = ("auto", "float32", "float16", "bfloat16")


def model_type(model_name: str) -> str:
    """The model's `model_type`, read from its config.json (local folder or Hub), with a clear error."""
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
    elif data.looks_like_local_path(model_name):
        raise UserError(f"model folder {os.path.abspath(path)} does not exist.")
    else:
        config_dict = _hub_config(model_name)
    found = config_dict.get("model_type")
    if not found:
        raise UserError(f"{model_name}: config.json has no model_type, so it is not a transformers model.")
    if found == "florence2" and (
        "auto_map" in config_dict or (config_dict.get("text_config") or {}).get("model_type") == "florence2_language"
    ):
        name = model_name.rstrip("/").split("/")[-1]
        raise UserError(
            f"{model_name} is Florence-2 in Microsoft's original format, which runs only with trust_remote_code "
            f"(semcal never runs code from the Hub). Use the same weights in transformers' format: "
            f"florence-community/{name} (or a local copy of it)."
        )
    return found


def _hub_config(model_name: str) -> dict[str, Any]:
    from transformers import PreTrainedConfig

    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(model_name)
    except Exception as err:  # the hub client raises many types for "no network" / "no such repo"
        raise data.hub_or_path_error(
            model_name,
            err,
            what="model ",
            local="folder",
            fix=f"if this machine has no network, download it where there is one with `hf download {model_name} "
            "--local-dir FOLDER`, copy FOLDER here and set model_name to that folder.",
        ) from None
    return config_dict


def require_image_text_to_text(model_name: str, found_type: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if found_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise UserError(
            f"{model_name} is a {found_type!r} model, not an image-captioning model. Set model_name to a Florence-2 "
            "checkpoint (florence-community/Florence-2-large) or another image-to-text model that "
            "AutoModelForImageTextToText loads (e.g. Salesforce/blip-image-captioning-large)."
        )


def device_and_dtype(device: str | None, dtype: str) -> tuple[str, Any]:
    """The device (default: this process's GPU, else the CPU) and the weights' dtype.

    auto is half precision on a GPU, as the paper ran: bfloat16 where the GPU supports it
    (Ampere and later: float16's range overflows in large models), else float16; float32 on the CPU.
    """
    import torch

    device = device or str(distributed.device())
    if dtype != "auto":
        return device, getattr(torch, dtype)
    if not device.startswith("cuda"):
        return device, torch.float32
    return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _load_model(model_class: Any, config: Any, device: str, dtype: Any) -> Any:
    """The captioning model in eval mode on `device` (or spread over the GPUs by config.device_map),
    with the same clear error as its processor."""
    device_map = getattr(config, "device_map", None)
    if device_map:  # accelerate places the layers; the inputs go to model.device, its first
        return _load_pretrained(
            model_class.from_pretrained, config.model_name, "model", dtype=dtype, device_map=device_map
        ).eval()
    return _load_pretrained(model_class.from_pretrained, config.model_name, "model", dtype=dtype).to(device).eval()


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


def _describe(model: Any, device: str, dtype: Any, **settings: Any) -> dict[str, Any]:
    return {
        "class": type(model).__name__,
        "name_or_path": model.config.name_or_path,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": f"device_map: {sorted(set(map(str, model.hf_device_map.values())))}"
        if getattr(model, "hf_device_map", None)
        else device,
        "dtype": str(dtype).replace("torch.", ""),
        "generate": {"do_sample": False, **settings},
    }


class FlorenceCaptioner:
    """Florence-2 with a captioning task prompt; the processor's post-processing yields the text."""

    def __init__(self, config: ImageCaptionConfig, device: str, dtype: Any):
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        self.processor = _load_pretrained(AutoProcessor.from_pretrained, config.model_name, "processor")
        self.model = _load_model(Florence2ForConditionalGeneration, config, device, dtype)
        self.task, self.device, self.dtype = config.task_prompt, device, dtype
        self.generate_kwargs = {"max_new_tokens": config.max_new_tokens, "num_beams": config.num_beams}

    def decode(self, item: Any) -> Any:
        return load_image(item)

    def caption(self, images: list) -> list[str]:
        import torch

        inputs = self.processor(text=[self.task] * len(images), images=images, return_tensors="pt").to(
            self.model.device
        )
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
        self.model = _load_model(AutoModelForImageTextToText, config, device, dtype)
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
        inputs = inputs.to(self.model.device)
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
        self.model = _load_model(Qwen2AudioForConditionalGeneration, config, device, dtype)
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
        ).to(self.model.device)
        inputs["input_features"] = inputs["input_features"].to(self.dtype)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, do_sample=False, **self.generate_kwargs)
        answers = generated[:, inputs["input_ids"].shape[1] :]  # generate returns the prompt, then the answer
        return [text.strip() for text in self.processor.batch_decode(answers, skip_special_tokens=True)]

    def describe(self) -> dict[str, Any]:
        return _describe(self.model, self.device, self.dtype, prompt=self.prompt, **self.generate_kwargs)
