"""The captioning stages end to end, with tiny randomly initialised models built here.

The models (Florence-2, Qwen2-Audio, BLIP) and their processors are built from configs
and small vocabularies written in this file, saved to a temporary folder, and loaded by
the real stage code from there, as a user's local model folder would be. Their captions
are noise, but the code path is the real one: processors, generate, post-processing,
batching, chunked output, resume and error handling.
"""

import io
import os
import signal
import subprocess
import sys

import datasets
import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from PIL import Image
from tokenizers import AddedToken, pre_tokenizers

from semcal.captioning import captioners
from semcal.captioning.captioning import AudioCaptionConfig, ImageCaptionConfig, caption_audio, caption_images
from semcal.core.errors import UserError
from semcal.store import runstate
from semcal.store.files import read_record, write_json

from .conftest import REPO_ROOT

WORDS = ["dog", "cat", "car", "street", "tree", "bird", "water", "red", "small", "people", "engine", "rain"]
BYTE_ALPHABET = sorted(pre_tokenizers.ByteLevel.alphabet())  # every byte is a token: any text can be encoded


# ---------------------------------------------------------------- tiny models


def build_tiny_florence(folder):
    from transformers import (
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", *BYTE_ALPHABET])}
    vocab.update({f"Ġ{word}": len(vocab) + i for i, word in enumerate(WORDS)})
    tokenizer = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    # 16x16 pixels, patches of stride 4: 4x4 image features plus one pooled feature.
    image_processor = CLIPImageProcessor(size={"height": 16, "width": 16}, do_center_crop=False, image_seq_length=17)
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config={"pure_text": {}}
    )
    config = Florence2Config(
        text_config={
            "model_type": "bart",
            "vocab_size": len(tokenizer),
            "d_model": 16,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "max_position_embeddings": 128,
            "bos_token_id": 0,
            "pad_token_id": 1,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
            "init_std": 0.5,  # large random weights make the captions depend on the image
        },
        vision_config={
            "depths": [1],
            "patch_size": [7],
            "patch_stride": [4],
            "patch_padding": [3],
            "patch_prenorm": [False],
            "embed_dim": [16],
            "num_heads": [2],
            "num_groups": [2],
            "window_size": 4,
            "projection_dim": 16,
            "initializer_range": 1.0,
        },
        image_token_id=tokenizer.image_token_id,
    )
    torch.manual_seed(0)
    Florence2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_qwen2_audio(folder):
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Tokenizer,
        WhisperFeatureExtractor,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
    vocab = {token: i for i, token in enumerate([*specials, *BYTE_ALPHABET])}
    vocab.update({f"Ġ{word}": len(vocab) + i for i, word in enumerate(WORDS)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        extra_special_tokens={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )
    tokenizer.add_tokens([AddedToken(token, special=True) for token in specials])
    # 1-second windows (100 frames of 16 mel bins) instead of Whisper's 30 s of 128 bins.
    feature_extractor = WhisperFeatureExtractor(feature_size=16, chunk_length=1)
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    config = Qwen2AudioConfig(
        audio_config={
            "d_model": 16,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "num_mel_bins": 16,
            "max_source_positions": 50,
            "initializer_range": 0.2,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 256,
            "eos_token_id": vocab["<|im_end|>"],
            "pad_token_id": vocab["<|endoftext|>"],
            "initializer_range": 0.2,
        },
        audio_token_index=vocab["<|AUDIO|>"],
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_blip(folder):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS])}
    vocab.update({word: len(vocab) + i for i, word in enumerate(["a", "photo", "of"])})
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 16, "width": 16}), tokenizer=tokenizer)
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "encoder_hidden_size": 16,
            "bos_token_id": vocab["[DEC]"],
            "pad_token_id": vocab["[PAD]"],
            "sep_token_id": vocab["[SEP]"],
            "eos_token_id": vocab["[SEP]"],
            "initializer_range": 0.5,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
            "initializer_range": 0.5,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "florence": build_tiny_florence(root / "florence"),
        "qwen2_audio": build_tiny_qwen2_audio(root / "qwen2_audio"),
        "blip": build_tiny_blip(root / "blip"),
    }


# ---------------------------------------------------------------- tiny data sets


def random_image(seed: int, mode: str = "RGB") -> Image.Image:
    """A seeded colour gradient with some noise: distinct images give the tiny models distinct inputs."""
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    start, end = rng.uniform(0, 255, size=(2, 3))
    ramp = np.linspace(0, 1, width)[None, :, None]
    pixels = start + (end - start) * ramp + rng.normal(0, 20, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ (7 good images, 1 corrupt) and test/ (2 good, 1 truncated), with a labels CSV."""
    root = tmp_path_factory.mktemp("images")
    (root / "train").mkdir()
    (root / "test").mkdir()
    modes = ["RGB", "RGBA", "L", "RGB", "P", "RGB", "RGB"]
    for i, mode in enumerate(modes):
        random_image(i, mode).save(root / "train" / f"img{i}.png")
    random_image(20).save(root / "train" / "photo.jpg")
    (root / "train" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    random_image(30).save(root / "test" / "a.png")
    random_image(31).save(root / "test" / "b.png")
    good = image_bytes(random_image(32))
    (root / "test" / "truncated.png").write_bytes(good[: len(good) // 2])
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    labels = pd.DataFrame({"file_name": names, "label": [f"class{i % 3}" for i in range(len(names))]})
    labels.to_csv(root / "labels.csv", index=False)
    return root


def tone(rate: int, seconds: float, hz: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    """Clips at 44.1, 8, 16 and 22.05 kHz (one stereo, one longer than the tiny model's 1 s window)
    and three that fail: a zero-length WAV, a corrupt file and a clip too short for Qwen2-Audio."""
    root = tmp_path_factory.mktemp("audio")
    soundfile.write(root / "a_44k.wav", tone(44_100, 0.6, 440), 44_100)
    soundfile.write(root / "b_8k.wav", tone(8_000, 0.8, 1_000), 8_000)
    soundfile.write(root / "c_stereo.wav", tone(16_000, 0.5, 300, channels=2), 16_000)
    soundfile.write(root / "d_long.flac", tone(22_050, 1.5, 2_000), 22_050)
    soundfile.write(root / "e_quiet.wav", tone(16_000, 0.3, 150) * 0.01, 16_000)
    soundfile.write(root / "f_empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    (root / "g_corrupt.wav").write_bytes(b"RIFF1234WAVEfmt garbage garbage")
    soundfile.write(root / "h_short.wav", tone(16_000, 0.05, 500), 16_000)
    soundfile.write(root / "i_noise.ogg", np.random.default_rng(0).normal(0, 0.1, 12_000).astype(np.float32), 24_000)
    return root


AUDIO_FAILURES = {"f_empty.wav": "zero-length", "g_corrupt.wav": "unreadable audio", "h_short.wav": "too short"}


# ---------------------------------------------------------------- helpers


def image_config(models, image_folder, output_dir, **changes) -> ImageCaptionConfig:
    settings = {
        "dataset_name": str(image_folder),
        "labels_csv": str(image_folder / "labels.csv"),
        "output_dir": str(output_dir),
        "model_name": str(models["florence"]),
        "max_new_tokens": 6,
        "batch_size": 3,
        "chunk_size": 2,
        **changes,
    }
    return ImageCaptionConfig(**settings)


def audio_config(models, audio_folder, output_dir, **changes) -> AudioCaptionConfig:
    settings = {
        "dataset_name": str(audio_folder),
        "output_dir": str(output_dir),
        "model_name": str(models["qwen2_audio"]),
        "max_new_tokens": 6,
        "batch_size": 3,
        "chunk_size": 2,
        **changes,
    }
    return AudioCaptionConfig(**settings)


def as_overrides(config) -> list[str]:
    from semcal.core.config import config_to_dict

    overrides = []
    for name, value in config_to_dict(config).items():
        if isinstance(value, list):
            value = ",".join(value)
        overrides.append(f"--{name}={'none' if value is None else value}")
    return overrides


def run_killed(script: str, config, after_chunks: int) -> subprocess.CompletedProcess:
    env = {**os.environ, runstate.KILL_ENV: f"chunk:{after_chunks}"}
    return subprocess.run(
        [sys.executable, script, *as_overrides(config)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def output_files(output_dir):
    return {name: (output_dir / name).read_bytes() for name in ("captions.csv", "errors.csv")}


def captions_of(output_dir, split):
    return datasets.load_from_disk(str(output_dir))[split]


# ---------------------------------------------------------------- images


@pytest.fixture(scope="module")
def florence_run(models, image_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("florence_run") / "captioned"
    config = image_config(models, image_folder, output_dir)
    assert caption_images(config) == output_dir
    return config, output_dir


def test_florence_captions_every_decodable_image(florence_run, capsys):
    config, output_dir = florence_run
    dataset_dict = datasets.load_from_disk(str(output_dir))
    assert sorted(dataset_dict) == ["general_test", "general_train"]
    train, test = dataset_dict["general_train"], dataset_dict["general_test"]
    assert len(train) == 9 and len(test) == 3  # every row kept, failed ones included
    assert train.column_names == ["file_name", "image", "label", "text"]
    failed = {"train/broken.jpg", "test/truncated.png"}
    for split in (train, test):
        for name, text in zip(split["file_name"], split["text"], strict=True):
            assert isinstance(text, str)
            assert (text == "") == (name in failed)
            for marker in ("<s>", "</s>", "<pad>", "<image>", "<MORE_DETAILED_CAPTION>"):
                assert marker not in text
    assert any(len(text) > 2 for text in train["text"])

    captions = pd.read_csv(output_dir / "captions.csv", keep_default_na=False)
    assert list(captions.columns) == ["split", "id", "caption"]
    assert len(captions) == 10  # 12 images, 2 undecodable
    by_key = {(s, i): c for s, i, c in captions.itertuples(index=False)}
    first_image = train["file_name"].index("train/img0.png")
    assert by_key[("general_train", first_image)] == train["text"][first_image]

    errors = pd.read_csv(output_dir / "errors.csv")
    assert list(errors.columns) == ["split", "id", "reason"]
    named = {(row.split, row.id): row.reason for row in errors.itertuples()}
    broken_id = train["file_name"].index("train/broken.jpg")
    truncated_id = test["file_name"].index("test/truncated.png")
    assert set(named) == {("general_train", broken_id), ("general_test", truncated_id)}
    assert "corrupt image" in named[("general_train", broken_id)]
    assert "corrupt image" in named[("general_test", truncated_id)]

    record = read_record(output_dir)
    assert record["stage"] == "caption-images" and record["config"]["model_name"] == config.model_name
    assert record["failed"] == 2
    assert record["model"]["class"] == "Florence2ForConditionalGeneration"
    assert record["model"]["generate"]["num_beams"] == 3 and record["model"]["dtype"] == "float32"
    assert record["splits"]["general_train"] == {
        "rows": 9,
        "resumed_with": 0,
        "failed": 1,
        "captioned": 8,
        "empty_captions": 0,
    }
    assert not list(output_dir.glob("*.parts")) and not list(output_dir.glob("captions_*.csv"))


def test_florence_batching_gives_the_captions_of_batch_size_one(models, image_folder, tmp_path):
    batched = image_config(models, image_folder, tmp_path / "batched", num_beams=1, batch_size=4)
    single = image_config(models, image_folder, tmp_path / "single", num_beams=1, batch_size=1)
    caption_images(batched)
    caption_images(single)
    assert output_files(tmp_path / "batched") == output_files(tmp_path / "single")
    captions = pd.read_csv(tmp_path / "single" / "captions.csv", keep_default_na=False)["caption"]
    assert len(captions) == 10 and captions.nunique() >= 5  # the images get different captions


def test_florence_kill_and_resume_gives_the_same_output(florence_run, models, image_folder, tmp_path):
    reference_config, reference_dir = florence_run
    output_dir = tmp_path / "resumed"
    config = image_config(models, image_folder, output_dir)
    killed = run_killed("florence_captioning.py", config, after_chunks=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (output_dir / "captions.csv").exists()
    parts = sorted(output_dir.parent.glob(".resumed.partial/captions_general_*.csv.parts/part-*.csv"))
    assert len(parts) == 2

    # Other settings cannot continue the unfinished run.
    with pytest.raises(UserError, match="max_new_tokens"):
        caption_images(image_config(models, image_folder, output_dir, max_new_tokens=5))

    caption_images(config)
    assert output_files(output_dir) == output_files(reference_dir)
    for split in ("general_train", "general_test"):
        assert captions_of(output_dir, split)["text"] == captions_of(reference_dir, split)["text"]
    record = read_record(output_dir)
    resumed = sum(split["resumed_with"] for split in record["splits"].values())
    # Chunks are cut at batch windows once chunk_size captions wait: rows 0-2 (one broken), then 3-5.
    assert resumed == 5


def test_florence_answers_padded_in_a_batch_lose_their_padding(models):
    """Beam search and batching pad short answers with <pad>, which Florence-2's post-processing keeps."""
    config = ImageCaptionConfig(model_name=str(models["florence"]))
    captioner = captioners.FlorenceCaptioner(config, "cpu", torch.float32)
    tokenizer = captioner.processor.tokenizer
    dog, cat = tokenizer.convert_tokens_to_ids(["Ġdog", "Ġcat"])
    bos, pad, eos = tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id
    answers = torch.tensor([[eos, bos, dog, cat, dog, eos], [eos, bos, cat, eos, pad, pad]])
    captioner.model.generate = lambda **kwargs: answers
    images = [random_image(1), random_image(2)]
    assert captioner.caption(images) == ["dog cat dog", "cat"]


def test_hub_style_dataset_with_image_feature_splits_max_items_and_dropped_media(models, tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = [{"bytes": image_bytes(random_image(i)), "path": None} for i in range(4)]
    rows.insert(1, {"bytes": b"corrupt bytes", "path": None})
    source = datasets.DatasetDict(
        {
            "general_train": datasets.Dataset.from_dict({"image": rows, "label": list(range(5))}, features=features),
            "general_test": datasets.Dataset.from_dict({"image": rows[:2], "label": [0, 1]}, features=features),
        }
    )
    source.save_to_disk(str(tmp_path / "source"))
    config = ImageCaptionConfig(
        dataset_name=str(tmp_path / "source"),
        output_dir=str(tmp_path / "out"),
        model_name=str(models["florence"]),
        splits=["general_train"],
        max_items=3,
        keep_media_column=False,
        caption_column="caption",
        max_new_tokens=4,
        num_beams=1,
    )
    caption_images(config)
    output = datasets.load_from_disk(str(tmp_path / "out"))
    assert list(output) == ["general_train"]
    assert output["general_train"].column_names == ["label", "caption"]
    assert output["general_train"]["label"] == [0, 1, 2]
    assert output["general_train"]["caption"][1] == ""
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors[["split", "id"]].values.tolist() == [["general_train", 1]]


def test_other_image_to_text_models_run_through_the_same_interface(models, image_folder, tmp_path):
    plain = image_config(models, image_folder, tmp_path / "blip", model_name=str(models["blip"]), num_beams=1)
    caption_images(plain)
    prefixed = image_config(
        models, image_folder, tmp_path / "blip_prompt", model_name=str(models["blip"]), text_prompt="a photo of"
    )
    caption_images(prefixed)
    texts = captions_of(tmp_path / "blip_prompt", "general_train")["text"]
    assert all(text.startswith("a photo of") for text in texts if text)
    assert read_record(tmp_path / "blip")["model"]["class"] == "BlipForConditionalGeneration"
    assert len(pd.read_csv(tmp_path / "blip" / "captions.csv")) == 10


# ---------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def qwen_run(models, audio_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("qwen_run") / "captioned"
    config = audio_config(models, audio_folder, output_dir)
    caption_audio(config)
    return config, output_dir


def test_qwen_audio_captions_every_decodable_clip(qwen_run, capsys):
    config, output_dir = qwen_run
    train = captions_of(output_dir, "general_train")
    assert train.column_names == ["file_name", "text"]  # the audio column is dropped by default
    assert len(train) == 9
    for name, text in zip(train["file_name"], train["text"], strict=True):
        assert isinstance(text, str)
        assert (text == "") == (name in AUDIO_FAILURES)
        assert "Describe the sounds" not in text and "assistant" not in text and "<|" not in text
    assert any(len(text) > 2 for text in train["text"])

    errors = pd.read_csv(output_dir / "errors.csv")
    reasons = {train["file_name"][row.id]: row.reason for row in errors.itertuples()}
    assert set(reasons) == set(AUDIO_FAILURES)
    for name, reason in AUDIO_FAILURES.items():
        assert reason in reasons[name]
    record = read_record(output_dir)
    assert record["stage"] == "caption-audio" and record["failed"] == 3
    assert record["long_clips_cut"] == 1  # d_long.flac is longer than the tiny model's 1 s window
    assert record["model"]["class"] == "Qwen2AudioForConditionalGeneration"


def test_qwen_audio_batching_gives_the_captions_of_batch_size_one(models, audio_folder, tmp_path):
    caption_audio(audio_config(models, audio_folder, tmp_path / "batched", batch_size=4))
    caption_audio(audio_config(models, audio_folder, tmp_path / "single", batch_size=1))
    assert output_files(tmp_path / "batched") == output_files(tmp_path / "single")
    captions = pd.read_csv(tmp_path / "single" / "captions.csv", keep_default_na=False)["caption"]
    assert len(captions) == 6 and captions.nunique() >= 4  # the clips get different captions


def test_qwen_audio_kill_and_resume_gives_the_same_output(qwen_run, models, audio_folder, tmp_path):
    _, reference_dir = qwen_run
    output_dir = tmp_path / "resumed"
    config = audio_config(models, audio_folder, output_dir)
    killed = run_killed("qwen_audio_captioning.py", config, after_chunks=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(list(output_dir.parent.glob(".resumed.partial/captions_general_train.csv.parts/part-*.csv"))) == 1
    caption_audio(config)
    assert output_files(output_dir) == output_files(reference_dir)
    assert read_record(output_dir)["splits"]["general_train"]["resumed_with"] == 3  # the first window of 3 clips


def test_decoded_audio_arrays_in_a_data_set(models, tmp_path):
    clips = [
        {"array": tone(44_100, 0.4, 440).tolist(), "sampling_rate": 44_100},
        {"array": tone(8_000, 0.3, 900).tolist(), "sampling_rate": 8_000},
        {"array": [], "sampling_rate": 16_000},
    ]
    source = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"clip": clips, "label": ["music", "speech", "silence"]})}
    )
    source.save_to_disk(str(tmp_path / "source"))
    config = AudioCaptionConfig(
        dataset_name=str(tmp_path / "source"),
        audio_column="clip",
        output_dir=str(tmp_path / "out"),
        model_name=str(models["qwen2_audio"]),
        max_new_tokens=4,
    )
    caption_audio(config)
    output = captions_of(tmp_path / "out", "general_train")  # train is read as general_train
    assert output["label"] == ["music", "speech", "silence"]
    assert [text == "" for text in output["text"]] == [False, False, True]


# ---------------------------------------------------------------- errors before any work


def write_config_folder(folder, config_dict):
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", config_dict)
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty split", "split 'general_test' of .* is empty"),
        ("no rows at all", "has no rows"),
        ("missing column", "has no column 'picture'"),
        ("numbers in the image column", "holds int64 values"),
        ("caption column exists", "already has a column 'label'"),
        ("unknown split", "no split 'validation'"),
        ("not a captioning model", "is a 'gpt2' model, not an image-captioning model"),
        ("no config.json", "is not a model folder"),
        ("model folder missing", "does not exist"),
        ("original Florence-2 format", "florence-community/Florence-2-large"),
        ("Hub id offline", "could not load model 'someone/no-such-captioner' from the Hugging Face Hub"),
        ("bad task prompt", "is not a Florence-2 captioning task"),
        ("output dir with other files", "holds other files"),
        ("output dir is another data set", "holds other files"),
        ("labels_csv without a folder", "labels_csv is only for a folder"),
        ("batch size 0", "batch_size must be at least 1"),
    ],
)
def test_image_stage_refuses_bad_input_before_any_work(case, message, models, image_folder, tmp_path):
    output_dir = tmp_path / "out"
    table = tmp_path / "table.csv"
    pd.DataFrame({"image": ["x.png"], "label": [1], "split": ["train"]}).to_csv(table, index=False)
    changes = {}
    if case == "empty split":
        pd.DataFrame({"image": ["a.png"]}).to_csv(tmp_path / "train.csv", index=False)
        pd.DataFrame({"image": []}).to_csv(tmp_path / "test.csv", index=False)
        files = f"general_train={tmp_path / 'train.csv'},general_test={tmp_path / 'test.csv'}"
        changes = {"dataset_name": files, "labels_csv": None}
    elif case == "no rows at all":
        pd.DataFrame({"image": [], "split": []}).to_csv(table, index=False)
        changes = {"dataset_name": str(table), "labels_csv": None}
    elif case == "missing column":
        changes = {"dataset_name": str(table), "labels_csv": None, "image_column": "picture"}
    elif case == "numbers in the image column":
        changes = {"dataset_name": str(table), "labels_csv": None, "image_column": "label"}
    elif case == "caption column exists":
        changes = {"caption_column": "label"}
    elif case == "unknown split":
        changes = {"splits": ["validation"]}
    elif case == "not a captioning model":
        changes = {"model_name": str(write_config_folder(tmp_path / "gpt2", {"model_type": "gpt2"}))}
    elif case == "no config.json":
        (tmp_path / "empty_model").mkdir()
        changes = {"model_name": str(tmp_path / "empty_model")}
    elif case == "model folder missing":
        changes = {"model_name": str(tmp_path / "nowhere" / "model")}
    elif case == "original Florence-2 format":
        legacy = {
            "model_type": "florence2",
            "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config"},
            "text_config": {"model_type": "florence2_language"},
            "vision_config": {"model_type": "davit"},
        }
        changes = {"model_name": str(write_config_folder(tmp_path / "Florence-2-large", legacy))}
    elif case == "Hub id offline":
        changes = {"model_name": "someone/no-such-captioner"}
    elif case == "bad task prompt":
        changes = {"task_prompt": "<OD>"}
    elif case == "output dir with other files":
        output_dir.mkdir()
        (output_dir / "thesis.tex").write_text("precious")
    elif case == "output dir is another data set":
        datasets.DatasetDict({"general_train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(
            str(output_dir)
        )
    elif case == "labels_csv without a folder":
        changes = {"dataset_name": str(table)}
    elif case == "batch size 0":
        changes = {"batch_size": 0}
    config = image_config(models, image_folder, output_dir, **changes)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        caption_images(config)
    if case == "output dir with other files":
        assert [p.name for p in output_dir.iterdir()] == ["thesis.tex"]
    elif case == "output dir is another data set":
        assert datasets.load_from_disk(str(output_dir))["general_train"]["text"] == ["x"]
    else:
        assert not output_dir.exists()


def test_a_missing_relative_model_folder_is_named_as_a_path_and_as_a_hub_id(
    models, image_folder, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    config = image_config(models, image_folder, tmp_path / "out", model_name="evalin/x")
    with pytest.raises(UserError) as caught:
        caption_images(config)
    message = str(caught.value)
    assert f"{tmp_path / 'evalin' / 'x'} does not exist" in message
    assert "could not load model 'evalin/x' from the Hugging Face Hub" in message
    assert not (tmp_path / "out").exists()


def test_audio_stage_refuses_a_model_that_is_not_qwen2_audio(models, audio_folder, tmp_path):
    config = audio_config(models, audio_folder, tmp_path / "out", model_name=str(models["florence"]))
    with pytest.raises(UserError, match="is a 'florence2' model, not Qwen2-Audio"):
        caption_audio(config)
    assert not (tmp_path / "out").exists()


def test_scripts_list_their_settings_and_report_errors_without_a_traceback(tmp_path):
    for script, config_cls in (
        ("florence_captioning.py", ImageCaptionConfig),
        ("qwen_audio_captioning.py", AudioCaptionConfig),
    ):
        result = subprocess.run(
            [sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        for name in vars(config_cls()):
            assert f"--{name}=" in result.stdout
        result = subprocess.run(
            [sys.executable, script, f"--model_name={tmp_path / 'no_model'}", f"--output_dir={tmp_path / 'out'}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert f"error: model folder {tmp_path / 'no_model'} does not exist" in result.stderr


def test_running_again_into_a_finished_output_gives_the_same_output(florence_run, tmp_path):
    import shutil

    config, reference_dir = florence_run
    output_dir = tmp_path / "again"
    shutil.copytree(reference_dir, output_dir)
    before = output_files(output_dir)
    caption_images(ImageCaptionConfig(**{**vars(config), "output_dir": str(output_dir)}))
    assert output_files(output_dir) == before
    assert captions_of(output_dir, "general_test")["text"] == captions_of(reference_dir, "general_test")["text"]
    assert sorted(p.name for p in output_dir.iterdir()) == sorted(p.name for p in reference_dir.iterdir())
