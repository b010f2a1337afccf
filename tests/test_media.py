"""Decoding media items (semcal.store.media) and reading folders of media files (semcal.store.media_folders)."""

import io

import numpy as np
import pandas as pd
import pytest
import soundfile
from PIL import Image

from semcal.core.errors import UserError
from semcal.store.media import MediaError, load_audio, load_image, resample
from semcal.store.media_folders import load_media_folder

TONE_HZ = 1000.0
TONE_AMPLITUDE = 0.5


def tone(rate: int, seconds: float = 1.0, hz: float = TONE_HZ, amplitude: float = TONE_AMPLITUDE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def peak_and_amplitude(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """Frequency of the spectral peak and the tone's amplitude (from its RMS, edges left out)."""
    middle = samples[rate // 10 : -rate // 10]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    peak_hz = np.fft.rfftfreq(len(middle), 1 / rate)[int(np.argmax(spectrum))]
    return float(peak_hz), float(np.sqrt(np.mean(middle.astype(np.float64) ** 2)) * np.sqrt(2))


# ---------------------------------------------------------------- audio


@pytest.mark.parametrize("rate", [44_100, 8_000])
def test_resampling_to_16k_keeps_the_tone(rate, tmp_path):
    path = tmp_path / f"tone_{rate}.wav"
    soundfile.write(path, tone(rate), rate, subtype="FLOAT")
    for item in (str(path), path.read_bytes(), {"array": tone(rate), "sampling_rate": rate}):
        samples = load_audio(item, 16_000)
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert abs(len(samples) - 16_000) <= 1  # one second at 16 kHz
        peak_hz, amplitude = peak_and_amplitude(samples, 16_000)
        assert abs(peak_hz - TONE_HZ) <= 2.0
        assert amplitude == pytest.approx(TONE_AMPLITUDE, rel=0.01)


def test_resample_leaves_a_16k_signal_alone_and_removes_content_above_nyquist():
    signal = tone(16_000)
    assert resample(signal, 16_000, 16_000) is signal
    # A 6 kHz tone at 44.1 kHz cannot exist at 8 kHz (Nyquist 4 kHz): the filter removes it.
    high = resample(tone(44_100, hz=6_000), 44_100, 8_000)
    assert np.sqrt(np.mean(high[800:-800] ** 2)) < 0.01


def test_stereo_is_averaged_to_mono_and_int16_is_scaled(tmp_path):
    left = tone(16_000)
    stereo = np.stack([left, left], axis=1)
    samples = load_audio(wav_bytes(stereo, 16_000), 16_000)
    assert samples.ndim == 1 and len(samples) == 16_000
    assert np.max(np.abs(samples)) == pytest.approx(TONE_AMPLITUDE, rel=0.01)
    half = load_audio(wav_bytes(np.stack([left, np.zeros_like(left)], axis=1), 16_000), 16_000)
    assert np.max(np.abs(half)) == pytest.approx(TONE_AMPLITUDE / 2, rel=0.01)
    path = tmp_path / "int16.wav"
    soundfile.write(path, left, 16_000, subtype="PCM_16")
    assert np.max(np.abs(load_audio({"path": str(path), "bytes": None}))) == pytest.approx(TONE_AMPLITUDE, rel=0.01)
    # datasets hands multichannel arrays as (channels, frames)
    channels_first = load_audio({"array": np.stack([left, left]), "sampling_rate": 16_000})
    assert channels_first.shape == (16_000,)


def test_flac_and_datasets_audio_values():
    flac = wav_bytes(tone(22_050), 22_050, fmt="FLAC")
    samples = load_audio({"bytes": flac, "path": "clip.flac"}, 16_000)
    peak_hz, _ = peak_and_amplitude(samples, 16_000)
    assert abs(peak_hz - TONE_HZ) <= 2.0


@pytest.mark.parametrize(
    "item, reason",
    [
        (wav_bytes(np.zeros(0, dtype=np.float32), 16_000), "zero-length"),
        ({"array": [], "sampling_rate": 16_000}, "zero-length"),
        (b"", "zero-length"),
        (b"RIFF\x00\x00not really a wav file at all", "unreadable audio"),
        ("/no/such/clip.wav", "not found"),
        ({"array": [0.0, float("nan")], "sampling_rate": 16_000}, "NaN"),
        ({"array": [0.0, 0.1], "sampling_rate": None}, "sampling_rate"),
        (None, "missing"),
        (3.5, "cannot read audio"),
    ],
)
def test_undecodable_audio_raises_media_error_with_a_reason(item, reason):
    with pytest.raises(MediaError) as caught:
        load_audio(item)
    assert reason in caught.value.reason


# ---------------------------------------------------------------- images


def test_images_from_every_form_come_back_rgb(tmp_path):
    rgba = Image.new("RGBA", (7, 5), (10, 20, 30, 128))
    gray = Image.new("L", (4, 3), 200)
    path = tmp_path / "gray.png"
    gray.save(path)
    forms = [
        rgba,
        png_bytes(rgba),
        str(path),
        path,
        {"bytes": png_bytes(gray), "path": None},
        {"bytes": None, "path": str(path)},
        np.zeros((3, 4, 3), dtype=np.uint8),
    ]
    for item in forms:
        image = load_image(item)
        assert image.mode == "RGB" and image.width > 0
    assert load_image(str(path)).size == (4, 3)
    assert load_image(gray).getpixel((0, 0)) == (200, 200, 200)


def test_corrupt_and_missing_images_raise_media_error(tmp_path):
    good = png_bytes(Image.new("RGB", (64, 64), (255, 0, 0)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    cases = [
        (b"definitely not an image", "corrupt image"),
        (str(truncated), "corrupt image"),
        (str(tmp_path / "missing.jpg"), "not found"),
        (b"", "empty image"),
        (None, "missing image"),
        ({"bytes": None, "path": None}, "neither bytes nor a path"),
        (["not", "an", "image"], "cannot read image"),
    ]
    for item, reason in cases:
        with pytest.raises(MediaError) as caught:
            load_image(item)
        assert reason in caught.value.reason, (item, caught.value.reason)


# ---------------------------------------------------------------- folders of media files


def make_folder(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)


def test_media_folder_without_labels_is_one_general_train_split(tmp_path):
    tmp_path = tmp_path / ".inside_a_hidden_folder"  # only hidden names inside the folder are skipped
    make_folder(tmp_path, ["b.png", "a.jpg", "sub/c.png", ".cache/d.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    dataset_dict = load_media_folder(tmp_path, "image")
    assert list(dataset_dict) == ["general_train"]
    split = dataset_dict["general_train"]
    assert split["file_name"] == ["a.jpg", "b.png", "sub/c.png"]
    assert split["image"] == [str(tmp_path.resolve() / n) for n in ["a.jpg", "b.png", "sub/c.png"]]


def test_media_folder_split_subfolders_and_labels_csv(tmp_path):
    make_folder(tmp_path, ["train/x.png", "train/y.png", "test/z.png"])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file_name": ["test/z.png", "train/y.png", "train/x.png"], "label": ["cat", "dog", "cat"]}).to_csv(
        labels, index=False
    )
    dataset_dict = load_media_folder(tmp_path, "image", labels_csv=labels, media_column="picture")
    assert sorted(dataset_dict) == ["general_test", "general_train"]  # train/test read as general_*
    train = dataset_dict["general_train"]
    assert train["file_name"] == ["train/x.png", "train/y.png"] and train["label"] == ["cat", "dog"]
    assert train.column_names == ["file_name", "picture", "label"]
    assert dataset_dict["general_test"]["label"] == ["cat"]


def test_media_folder_split_column_in_labels_csv(tmp_path):
    make_folder(tmp_path, ["a.png", "b.png", "c.png"])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file_name": ["a.png", "b.png", "c.png"], "split": ["train", "test", "train"]}).to_csv(
        labels, index=False
    )
    dataset_dict = load_media_folder(tmp_path, "image", labels_csv=labels)
    assert dataset_dict["general_train"]["file_name"] == ["a.png", "c.png"]
    assert dataset_dict["general_test"]["file_name"] == ["b.png"]


def test_media_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_media_folder(tmp_path / "nowhere", "audio")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no audio files"):
        load_media_folder(tmp_path / "empty", "audio")
    make_folder(tmp_path / "imgs", ["a.png", "b.png"])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file_name": ["a.png", "gone.png"], "label": [1, 2]}).to_csv(labels, index=False)
    with pytest.raises(UserError, match=r"1 listed files are not in the folder .*gone.png.*1 files have no row.*b.png"):
        load_media_folder(tmp_path / "imgs", "image", labels_csv=labels)
    pd.DataFrame({"path": ["a.png", "b.png"]}).to_csv(labels, index=False)
    with pytest.raises(UserError, match="no file_name column"):
        load_media_folder(tmp_path / "imgs", "image", labels_csv=labels)
