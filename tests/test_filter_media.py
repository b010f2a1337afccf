"""`semcal filter` on a folder of images or audio clips: each file is captioned first with the
settings of a captioning stage's output folder (captions_from), then filtered (tiny randomly
initialised captioning models built by tests/test_captioning.py; offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from semcal.captioning.captioning import AudioCaptionConfig, ImageCaptionConfig, caption_audio, caption_images
from semcal.cli.cli import main
from semcal.filter.filtering import Filter
from tests.test_captioning import build_tiny_florence, build_tiny_qwen2_audio, random_image, tone
from tests.test_filtering import tfidf_run  # noqa: F401 (a fixture: the saved default filter)


def _listing(folder):
    return sorted((path.relative_to(folder).as_posix(), path.stat().st_mtime_ns) for path in folder.rglob("*"))


@pytest.fixture(scope="module", params=["image", "audio"])
def captioned(request, tmp_path_factory):
    """A media folder (a subfolder and one file that cannot be decoded among them), captioned by
    the captioning stage with a tiny model into RUN/captions/<kind>."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"filter_{kind}")
    folder = root / "media"
    (folder / "more").mkdir(parents=True)
    if kind == "image":
        model = build_tiny_florence(root / "model")
        for i, name in enumerate(["b.png", "a.jpg", "more/c.png"]):
            random_image(i).save(folder / name)
        (folder / "broken.png").write_bytes(b"not an image at all")
    else:
        model = build_tiny_qwen2_audio(root / "model")
        soundfile.write(folder / "b.wav", tone(16_000, 0.5, 440), 16_000)
        soundfile.write(folder / "a.wav", tone(8_000, 0.7, 1_000), 8_000)
        soundfile.write(folder / "more" / "c.flac", tone(22_050, 0.4, 300), 22_050)
        (folder / "broken.wav").write_bytes(b"RIFF1234WAVEfmt garbage")
    settings = dict(dataset_name=str(folder), model_name=str(model), max_new_tokens=6, batch_size=2)
    output = root / "captions" / kind
    if kind == "image":
        caption_images(ImageCaptionConfig(output_dir=str(output), **settings))
    else:
        caption_audio(AudioCaptionConfig(output_dir=str(output), **settings))
    import datasets

    stage = datasets.load_from_disk(str(output))["general_train"]
    captions = dict(zip(stage["file_name"], stage["text"], strict=True))
    return {
        "kind": kind,
        "folder": folder,
        "output": output,
        "captions": captions,
        "broken": f"broken.{'png' if kind == 'image' else 'wav'}",
    }


def _filter(argv, capsys):
    code = main(["filter", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_media_folder_is_captioned_as_the_captioning_stage_did_then_filtered(captioned, tfidf_run, tmp_path, capsys):  # noqa: F811
    folder, output = captioned["folder"], captioned["output"]
    before = (_listing(folder), _listing(output))
    decisions = tmp_path / "decisions.jsonl"
    argv = [
        f"--filter={tfidf_run['filter']}",
        f"--input={folder}",
        f"--captions_from={output}",
        f"--output={decisions}",
    ]
    code, out, err = _filter([*argv, "--batch_size=2", "--seed=3"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in decisions.read_text().splitlines()]
    names = sorted(captioned["captions"])
    assert [record["id"] for record in records] == names and len(names) == 4  # one record per media file
    broken = captioned["broken"]
    good = [record for record in records if record["id"] != broken]
    assert all(record["text"] == captioned["captions"][record["id"]] for record in good)
    assert len({record["text"] for record in good}) >= 2, "distinct files get distinct captions"
    failed = next(record for record in records if record["id"] == broken)
    assert "error" in failed and broken in failed["error"] and "decision" not in failed
    expected = Filter.load(tfidf_run["filter"]).accept_probs([record["text"] for record in good])
    np.testing.assert_allclose([record["accept_prob"] for record in good], expected, rtol=0, atol=1e-12)
    assert "3 items" in out and "1 error records" in out
    assert (_listing(folder), _listing(output)) == before, "the captions are written nowhere but the output"


def test_a_media_folder_needs_a_captioning_output_and_media_files(captioned, tfidf_run, tmp_path, capsys):  # noqa: F811
    folder, output = captioned["folder"], captioned["output"]
    base = [f"--filter={tfidf_run['filter']}", f"--output={tmp_path / 'out.csv'}"]
    code, _, err = _filter([*base, f"--input={folder}"], capsys)
    assert code == 2 and "is a folder" in err and "set captions_from=RUN/captions/<name>" in err
    assert "Traceback" not in err
    code, _, err = _filter([*base, f"--input={folder}", f"--captions_from={tfidf_run['filter']}"], capsys)
    assert code == 2 and "is not a captioning stage's output folder" in err and "captions_from=RUN/captions" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no media here\n")
    code, _, err = _filter([*base, f"--input={empty}", f"--captions_from={output}"], capsys)
    assert code == 2 and f"holds no {captioned['kind']} files" in err
    code, _, err = _filter([*base, f"--input={folder}", f"--captions_from={output}", "--input_format=csv"], capsys)
    assert code == 2 and "leave input_format unset" in err
    assert not (tmp_path / "out.csv").exists()


def test_the_filter_script_has_the_captions_from_setting():
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    shown = subprocess.run(
        [sys.executable, "filter.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "captions_from" in shown.stdout and "captioning output" in shown.stdout
