"""Decoding media items: images to RGB PIL images, audio to mono float32 arrays at one rate.

Items come in the forms data sets hold them: a `datasets` Image/Audio value (a dict with
`bytes` and/or `path`, or decoded audio as `array` + `sampling_rate`), a PIL image, raw
bytes, or a file path. A file that cannot be decoded raises `MediaError`, whose `reason`
says why in words (corrupt image, unreadable audio, zero-length clip); the captioning
stages record it with the item's id and go on with the next item.

Audio is read with soundfile (WAV, FLAC, OGG, MP3), averaged to mono, and resampled with
scipy's polyphase filter: there is no CPU torchaudio here.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


class MediaError(Exception):
    """One media item that cannot be decoded; `reason` says why, for the errors CSV."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _item_bytes(item: Any, kind: str, empty: str) -> bytes:
    """The encoded bytes of a media item given as bytes or a path; an empty file is an error."""
    data, path = _bytes_or_path(item, kind)
    if data is None:
        data = _read_file(path, kind)
    if not data:
        raise MediaError(f"{empty} (0 bytes)" + (f": {path}" if path else ""))
    return data


def _bytes_or_path(item: Any, kind: str) -> tuple[bytes | None, Path | None]:
    """The encoded bytes or the file path an item points to (one of them is set)."""
    if item is None:
        raise MediaError(f"missing {kind} (the cell is empty)")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item), None
    if isinstance(item, (str, Path)):
        return None, Path(item).expanduser()
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            return bytes(item["bytes"]), None
        if item.get("path"):
            return None, Path(item["path"]).expanduser()
        raise MediaError(f"{kind} value has neither bytes nor a path")
    raise MediaError(f"cannot read {kind} from a value of type {type(item).__name__}")


def _read_file(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MediaError(f"{kind} file not found: {path}") from None
    except OSError as err:
        raise MediaError(f"cannot read {kind} file {path}: {err.strerror or err}") from None


# ---------------------------------------------------------------- images


def load_image(item: Any):
    """An RGB `PIL.Image.Image` from a PIL image, bytes, a path, an array or a datasets Image value."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray):
        try:
            image = Image.fromarray(item)
        except (TypeError, ValueError) as err:
            raise MediaError(f"array of shape {item.shape} and dtype {item.dtype} is not an image: {err}") from None
    else:
        data = _item_bytes(item, "image", "empty image file")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now: a truncated file fails here, not inside the processor
        except UnidentifiedImageError:
            raise MediaError("corrupt image or unsupported format (PIL cannot identify it)") from None
        except Image.DecompressionBombError as err:
            raise MediaError(f"image too large to decode safely: {err}") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise MediaError(f"corrupt image: {err}") from None
    if image.width == 0 or image.height == 0:
        raise MediaError(f"empty image ({image.width}x{image.height} pixels)")
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise MediaError(f"corrupt image: {err}") from None


# ---------------------------------------------------------------- audio


def load_audio(item: Any, sampling_rate: int = 16_000) -> np.ndarray:
    """Mono float32 samples at `sampling_rate` from decoded audio, bytes, a path or a datasets Audio value."""
    samples, rate = _decode_audio(item)
    if samples.ndim == 2:  # (frames, channels) -> mono; the mean keeps the level of identical channels
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise MediaError("zero-length audio clip (no samples)")
    if not np.all(np.isfinite(samples)):
        raise MediaError("audio contains NaN or infinite samples")
    return resample(samples.astype(np.float32, copy=False), rate, sampling_rate)


def _decode_audio(item: Any) -> tuple[np.ndarray, int]:
    """(samples as (frames,) or (frames, channels), sampling rate) of one item."""
    if isinstance(item, dict) and item.get("array") is not None:
        rate = item.get("sampling_rate")
        if not rate:
            raise MediaError("decoded audio has no sampling_rate")
        samples = np.asarray(item["array"], dtype=np.float32)
        if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
            samples = samples.T  # datasets holds multichannel arrays as (channels, frames)
        return samples, int(rate)
    if hasattr(item, "get_all_samples"):  # a torchcodec AudioDecoder, as datasets hands out when it decodes
        try:
            decoded = item.get_all_samples()
        except Exception as err:  # torchcodec raises RuntimeError/ValueError for bad streams
            raise MediaError(f"unreadable audio: {err}") from None
        return np.asarray(decoded.data, dtype=np.float32).T, int(decoded.sample_rate)
    data = _item_bytes(item, "audio", "zero-length audio file")
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        # error_string leaves out the repr of the buffer, whose address would differ from run to run
        detail = getattr(err, "error_string", None) or str(err)
        raise MediaError(
            f"unreadable audio ({detail.strip()}); soundfile reads WAV, FLAC, OGG and MP3: convert other formats first"
        ) from None
    return samples, int(rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D signal with scipy's polyphase filter (anti-aliased, exact rational ratio)."""
    if rate == target_rate:
        return samples
    from scipy.signal import resample_poly

    common = math.gcd(int(rate), int(target_rate))
    return resample_poly(samples, target_rate // common, rate // common).astype(np.float32)
