"""`semcal animate RUN_DIR --split=mild`: a GIF of the evaluated stream passing through the filter.

The evaluation's per-text table holds each text's label and the chosen filter's acceptance
probability. Replaying the texts in file order with seeded uniform draws (accept when
u < accept_prob), each frame shows the label distribution of the items accepted so far beside
that of all items so far (the unfiltered stream) and the real target, so the filtered bars
visibly move from the general distribution toward the real one.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcal.core import console
from semcal.core.errors import UserError
from semcal.filter.calibration import kl_divergence
from semcal.protocol.layout import RESULTS_NAME, RunLayout
from semcal.store import files

log = logging.getLogger(__name__)

# Bounds of an animation. Frames are held in memory until the GIF is written (one palette byte
# a pixel, about 0.4 MB each at the default size), and render at about 10 a second: 600 frames
# take under 300 MB and about a minute. GIF players slow anything faster than 50 frames a second.
MAX_FRAMES = 600
MAX_DURATION_S = 600.0
MAX_FPS = 50.0


@dataclass
class Stream:
    """Running label counts after the first `seen[k]` items, one row per frame."""

    seen: np.ndarray  # (frames,) items of the stream replayed by each frame
    all_counts: np.ndarray  # (frames, labels) counts over every item seen
    accepted_counts: np.ndarray  # (frames, labels) counts over the accepted items seen


def replay_stream(label_codes: np.ndarray, accept_prob: np.ndarray, n_labels: int, frames: int, seed: int) -> Stream:
    """Replay the stream in order with seeded draws and take running counts at `frames` even steps."""
    label_codes = np.asarray(label_codes, dtype=np.int64)
    accepted = np.random.default_rng(seed).random(len(label_codes)) < np.asarray(accept_prob, dtype=np.float64)
    one_hot = np.eye(n_labels, dtype=np.int64)[label_codes]
    all_running = np.cumsum(one_hot, axis=0)
    accepted_running = np.cumsum(one_hot * accepted[:, None], axis=0)
    # Frame k has seen ceil(N * (k + 1) / frames) items, so the last frame shows the whole stream.
    seen = np.ceil(len(label_codes) * np.arange(1, frames + 1) / frames).astype(np.int64)
    return Stream(seen, all_running[seen - 1], accepted_running[seen - 1])


def normalise(counts: np.ndarray) -> np.ndarray:
    """Counts -> distributions along the last axis; rows with no items become NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


@dataclass
class Evaluation:
    labels: list[str]
    real: np.ndarray
    filter_name: str
    label_codes: np.ndarray
    accept_prob: np.ndarray


def read_evaluation(run_dir: Path, split: str) -> Evaluation:
    """Read a split's per_text.csv and results.json, refusing with the fix when either is missing."""
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass a folder written by `semcal run` or `semcal demo`.")
    layout = RunLayout(run_dir)
    if not layout.evaluation_dir(split).is_dir():
        splits = layout.split_folders()
        raise UserError(
            f"{run_dir} has no evaluation of split {split!r}; pass --split= one of {splits or 'none (run `semcal run` first)'}."
        )
    for path in (layout.per_text(split), layout.results(split)):
        if not path.is_file():
            raise UserError(f"{path} is missing; re-run `semcal evaluate` for split {split!r} to write it.")
    from semcal.protocol.explain import read_per_text
    from semcal.reports import results as result_file  # the checked readers of an evaluation's files

    results = result_file.read(layout.results(split))
    table = read_per_text(layout.per_text(split))
    labels = [str(label) for label in results.labels]
    unknown = sorted(set(table["label"].astype(str)) - set(labels))
    if unknown:
        raise UserError(
            f"{layout.per_text(split)} has labels {unknown} not in {RESULTS_NAME}; re-run `semcal evaluate`."
        )
    codes = table["label"].astype(str).map({label: code for code, label in enumerate(labels)}).to_numpy()
    try:
        real = np.array([results.distributions.real_train[label] for label in labels], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{layout.results(split)} has no real_train share of every label; re-run `semcal evaluate`."
        ) from None
    return Evaluation(labels, real, results.filter_name, codes, table["accept_prob"].to_numpy(np.float64))


def render(evaluation: Evaluation, stream: Stream, title: str, output: Path, duration: float) -> list[Path]:
    """Draw one grouped bar chart per frame and save it as a GIF (and an MP4 when ffmpeg exists)."""
    import matplotlib

    matplotlib.use("Agg")  # written to a file; no display is needed or assumed
    import matplotlib.pyplot as plt
    from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter

    all_dist, accepted_dist = normalise(stream.all_counts), normalise(stream.accepted_counts)
    x, width = np.arange(len(evaluation.labels)), 0.27
    figure, axes = plt.subplots(figsize=(8, 4.5))
    all_bars = axes.bar(x - width, all_dist[0], width, label="all items (unfiltered)", color="tab:gray")
    accepted_bars = axes.bar(x, np.nan_to_num(accepted_dist[0]), width, label="accepted", color="tab:blue")
    axes.bar(x + width, evaluation.real, width, label="real target", color="tab:green")
    axes.set_xticks(x, evaluation.labels, rotation=30, ha="right")
    axes.set_ylim(0, 1.05 * max(np.nanmax(all_dist), np.nanmax(accepted_dist), evaluation.real.max()))
    axes.set_ylabel("share of items")
    axes.legend(loc="upper left")

    def draw(k: int) -> list:
        for bar, height in zip(all_bars, all_dist[k], strict=True):
            bar.set_height(height)
        for bar, height in zip(accepted_bars, np.nan_to_num(accepted_dist[k]), strict=True):
            bar.set_height(height)
        kl_all, kl_accepted = (
            kl_divergence(all_dist[k], evaluation.real),
            kl_divergence(accepted_dist[k], evaluation.real),
        )
        axes.set_title(
            f"{title}: {stream.seen[k]}/{stream.seen[-1]} items, {stream.accepted_counts[k].sum()} accepted\n"
            f"KL(accepted||real) = {kl_accepted:.3f}   KL(all||real) = {kl_all:.3f}"
        )
        return [*all_bars, *accepted_bars]

    draw(0)
    figure.tight_layout()  # after a title is drawn, so the two-line title keeps its room
    frames = len(stream.seen)
    animation = FuncAnimation(figure, draw, frames=frames, blit=False)
    fps = frames / duration
    writers = {".gif": _palette_writer(PillowWriter)(fps=fps)}
    if shutil.which("ffmpeg"):
        writers[".mp4"] = FFMpegWriter(fps=fps)
    else:
        log.info("animate: ffmpeg is not on PATH, so no MP4 is written (install ffmpeg for one)")
    written = []
    for suffix, writer in writers.items():
        path = output.with_suffix(suffix)
        written.append(_save(animation, writer, path, frames))
    plt.close(figure)
    return written


def _palette_writer(pillow_writer: type) -> type:
    """matplotlib's PillowWriter keeping each frame as the GIF's own palette image (1 byte a pixel)
    rather than RGB(A) (3-4 bytes): the same GIF, a quarter of the memory until it is written."""
    from PIL import Image

    class PaletteWriter(pillow_writer):
        def grab_frame(self, **savefig_kwargs) -> None:
            super().grab_frame(**savefig_kwargs)
            frame = self._frames[-1]
            self._frames[-1] = frame.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)

    return PaletteWriter


def check_bounds(frames: int, duration: float) -> None:
    """Refuse animations that cannot be rendered in bounded time and memory, or played as asked."""
    problems = []
    if not 1 <= frames <= MAX_FRAMES:
        problems.append(f"--frames must be 1 to {MAX_FRAMES} (got {frames})")
    if not 0 < duration <= MAX_DURATION_S:
        problems.append(f"--duration must be above 0 and at most {MAX_DURATION_S:g} s (got {duration:g})")
    elif frames / duration > MAX_FPS:
        problems.append(
            f"--frames={frames} in --duration={duration:g} s is {frames / duration:.4g} frames a second, over the "
            f"{MAX_FPS:g} GIF players show (at least {frames / MAX_FPS:g} s for {frames} frames)"
        )
    if problems:
        raise UserError("; ".join(problems) + "; pass e.g. --frames=60 --duration=6.")


def _save(animation: object, writer: object, path: Path, frames: int) -> Path:
    """Save through files (atomic), one progress bar over the frames."""
    with console.progress(total=frames, desc=f"rendering {path.name}", unit="frame") as bar:
        return files.save_animation(animation, writer, path, progress_callback=lambda i, n: bar.update(1))


def main(argv: Sequence[str]) -> int:
    """`semcal animate RUN_DIR --split=mild`: a GIF of the stream passing through the run's filter."""
    parser = argparse.ArgumentParser(prog="semcal animate", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="run folder written by `semcal run` or `semcal demo`")
    parser.add_argument("--split", required=True, help="evaluated split, a folder under RUN_DIR/evaluation")
    parser.add_argument(
        "--frames", type=int, default=60, help=f"frames in the animation (default 60, at most {MAX_FRAMES})"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help=f"length of the animation in seconds (default 6, at most {MAX_DURATION_S:g}; {MAX_FPS:g} frames a second at most)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the accept/reject draws (default 0)")
    parser.add_argument(
        "--output", type=Path, default=None, help="GIF path (default RUN_DIR/evaluation/SPLIT/stream.gif)"
    )
    args = parser.parse_args(list(argv))
    check_bounds(args.frames, args.duration)
    evaluation = read_evaluation(args.run_dir, args.split)
    if len(evaluation.label_codes) == 0:
        raise UserError(f"the {args.split} evaluation of {args.run_dir} holds no texts; re-run `semcal evaluate`.")
    stream = replay_stream(
        evaluation.label_codes, evaluation.accept_prob, len(evaluation.labels), args.frames, args.seed
    )
    output = args.output or RunLayout(args.run_dir).stream_gif(args.split)
    written = render(evaluation, stream, f"{evaluation.filter_name} on {args.split}", output, args.duration)
    last = normalise(stream.accepted_counts[-1])
    log.info(
        "animate: %d frames of %d texts, %d accepted, KL(accepted||real) %.3f vs KL(all||real) %.3f; written to %s",
        args.frames,
        stream.seen[-1],
        stream.accepted_counts[-1].sum(),
        kl_divergence(last, evaluation.real),
        kl_divergence(normalise(stream.all_counts[-1]), evaluation.real),
        ", ".join(str(path) for path in written),
    )
    return 0
