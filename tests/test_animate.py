"""`semcal animate`: the replayed stream's running distributions and the GIF written from them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageSequence

from semcal.cli.cli import main as cli_main
from semcal.core.errors import UserError
from semcal.protocol import animate
from tests.results_example import results_dict

LABELS = ["a", "b", "c"]


def write_run(run_dir, split="mild", n=40, seed=1):
    """A tiny evaluation: per_text.csv in stream order and results.json, as `semcal evaluate` writes them."""
    rng = np.random.default_rng(seed)
    split_dir = run_dir / "evaluation" / split
    split_dir.mkdir(parents=True)
    labels = rng.choice(LABELS, size=n)
    accept = np.where(labels == "a", 0.2, 0.9)
    pd.DataFrame({"text_id": range(n), "label": labels, "score": 0.0, "accept_prob": accept, "text": "t"}).to_csv(
        split_dir / "per_text.csv", index=False
    )
    real = {"a": 0.2, "b": 0.4, "c": 0.4}
    (split_dir / "results.json").write_text(json.dumps(results_dict(LABELS, real)))
    return labels, accept


def test_replay_stream_counts_the_seeded_accepts():
    codes = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 1])
    accept = np.linspace(0.05, 0.95, len(codes))
    stream = animate.replay_stream(codes, accept, 3, frames=4, seed=7)
    accepted = np.random.default_rng(7).random(len(codes)) < accept
    assert list(stream.seen) == [3, 5, 8, 10]
    assert stream.all_counts[1].tolist() == np.bincount(codes[:5], minlength=3).tolist()
    assert stream.accepted_counts[2].tolist() == np.bincount(codes[:8][accepted[:8]], minlength=3).tolist()
    assert stream.accepted_counts[-1].tolist() == np.bincount(codes[accepted], minlength=3).tolist()
    assert np.isnan(animate.normalise(np.zeros((1, 3)))).all()  # nothing accepted yet: no distribution


def test_animate_writes_a_gif_with_one_frame_per_setting(tmp_path):
    labels, accept = write_run(tmp_path / "run")
    output = tmp_path / "out" / "stream.gif"
    argv = ["animate", str(tmp_path / "run"), "--split=mild", "--frames=5", "--duration=1", "--seed=3"]
    assert cli_main([*argv, f"--output={output}"]) == 0
    with Image.open(output) as gif:
        assert sum(1 for _ in ImageSequence.Iterator(gif)) == 5

    evaluation = animate.read_evaluation(tmp_path / "run", "mild")
    stream = animate.replay_stream(evaluation.label_codes, evaluation.accept_prob, 3, frames=5, seed=3)
    accepted = np.random.default_rng(3).random(len(labels)) < accept
    expected = pd.Series(labels[accepted]).value_counts(normalize=True).reindex(LABELS, fill_value=0.0)
    np.testing.assert_allclose(animate.normalise(stream.accepted_counts[-1]), expected.to_numpy())


def test_default_output_is_beside_the_evaluation(tmp_path):
    write_run(tmp_path / "run")
    assert animate.main([str(tmp_path / "run"), "--split=mild", "--frames=2", "--duration=1"]) == 0
    assert (tmp_path / "run" / "evaluation" / "mild" / "stream.gif").is_file()


def test_missing_run_split_or_table_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        animate.main([str(tmp_path / "nowhere"), "--split=mild"])
    write_run(tmp_path / "run")
    with pytest.raises(UserError, match="no evaluation of split 'severe'.*mild"):
        animate.main([str(tmp_path / "run"), "--split=severe"])
    results = tmp_path / "run" / "evaluation" / "mild" / "results.json"
    good = results.read_text()
    unlabelled = {key: value for key, value in json.loads(good).items() if key not in ("labels", "distributions")}
    for broken, message in (
        ("{ not json", "cannot be read"),
        (json.dumps(unlabelled), "lacks its labels"),
    ):
        results.write_text(broken)
        with pytest.raises(UserError, match=message):
            animate.main([str(tmp_path / "run"), "--split=mild"])
    results.write_text(good)
    (tmp_path / "run" / "evaluation" / "mild" / "per_text.csv").unlink()
    with pytest.raises(UserError, match="per_text.csv is missing"):
        animate.main([str(tmp_path / "run"), "--split=mild"])


@pytest.mark.parametrize(
    "frames, duration, message",
    [
        (100000, 0.001, "--frames must be 1 to 600"),
        (600, 1.0, "600 frames a second, over the 50"),
        (60, 100000.0, "--duration must be above 0 and at most 600 s"),
        (0, 6.0, "--frames must be 1 to 600"),
    ],
)
def test_frames_and_durations_beyond_sensible_limits_are_refused_at_once(tmp_path, capsys, frames, duration, message):
    write_run(tmp_path / "run")
    argv = ["animate", str(tmp_path / "run"), "--split=mild", f"--frames={frames}", f"--duration={duration}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "--frames=60 --duration=6" in err
    assert not (tmp_path / "run" / "evaluation" / "mild" / "stream.gif").exists()


def test_frames_are_held_as_palette_images(tmp_path, monkeypatch):
    """Memory stays bounded: each frame waits for the GIF as 1 byte a pixel, not 4."""
    from matplotlib.animation import PillowWriter

    held = []
    writer_class = animate._palette_writer(PillowWriter)
    original = writer_class.finish

    def finish(self):
        held.extend(frame.mode for frame in self._frames)
        original(self)

    monkeypatch.setattr(writer_class, "finish", finish)
    monkeypatch.setattr(animate, "_palette_writer", lambda _: writer_class)
    write_run(tmp_path / "run")
    assert animate.main([str(tmp_path / "run"), "--split=mild", "--frames=4", "--duration=1"]) == 0
    assert held == ["P"] * 4
