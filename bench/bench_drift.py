"""A drifting stream (issue 18): does an adaptive filter stay calibrated when the label mix moves?

Per data set (the synthetic demo, AudioCaps, AG News):

1. THE filter (`--filter`, default: semcal's default filter), fitted as the evaluation fits
   it: general_train with a real split drawn by distort's tilt (`--real_kl`, seed 0) as a
   marked subset, held-out rows by the data set's default assignment, general_test as its
   stream; saved and loaded back (so the drift reference goes through filter.json like any
   user's).
2. Streams of `--segments` x 2,000 items drawn from general_test (with replacement: a
   label first, from the segment's label mix, then one of its texts uniformly; AudioCaps and
   the demo have fewer test texts than a stream holds):
   - drifting: general_test's own mix, then an ABRUPT switch to a tilt at KL 0.8 from it, then
     a GRADUAL change (the mix moves linearly, item by item) to a tilt at KL 0.25, then an
     abrupt switch to a tilt at KL 0.5 (each tilt towards its own seeded label scores, as distort's;
     `--drift_seed` moves those seeds and the stream's draw: another direction of every drift);
   - flood: general_test's mix, then (second half) 70% of the label the real split holds least
     of relative to general_test (lowest q(y)/p(y); `--drift_seed=1`: the second lowest) and 30%
     general_test's mix: a stream with less trusted-like content than the filter was fitted for;
   - 6x: general_test's mix, then (second half) its largest label (seed 1: the second largest)
     6 times over-represented (its share x 6, renormalised);
   - undrifted: general_test's mix throughout (`--undrifted_streams` streams of as many
     items, other seeds), for false alarms and the reference reduction.
3. Every mode of semcal.stream.adapt (none, rate, prior, refit with real_train as the trusted texts)
   with drift alarms (alarm=auto: the label prior's KL for this filter), through the same
   Adapter that `semcal filter --adapt=...` runs, in batches of 250.

Per window of 500 items: KL(accepted || real) of the EXPECTED accepted label mix (acceptance-
weighted, so the seeded draws add no noise), KL(window || real) unfiltered, the oracle (knows
each item's label and the window's label mix: min(1, q(y) / p_window(y) / M)), the windowed
deception reduction 1 - KL(accepted) / KL(unfiltered), the mean acceptance (the expected pass
rate) and the realised pass rate of the seeded decisions. Reported: per mode, the mean windowed
reduction over each segment after a switch against the same filter's mean windowed reduction
on the undrifted streams (the Done criterion: the best adaptive mode >= 80% of it after every
switch), windows to recover after each abrupt switch, pass rate off target, alarms (windows
after a switch until the first; per window on the undrifted streams), throughput, restarts on the
undrifted streams, and the late-stream KL (expected accepted mix of the drifting stream's last
segment and of the flood and 6x streams' second half, against real).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_drift.py                 # all three, about 5 min on 2 idle cores
    PYTHONPATH=$PWD .venv/bin/python bench/bench_drift.py --datasets=demo # quick

Writes runs/bench_drift/bench_drift.json, bench_drift.md and windowed_kl.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semcal.filter.calibration import kl_divergence, label_distribution  # noqa: E402
from semcal.filter.filtering import Filter  # noqa: E402
from semcal.filter.filters import DEFAULT_FILTER, describe  # noqa: E402
from semcal.filter.fit_data import FitData, Items  # noqa: E402
from semcal.protocol.distort_plan import label_scores, plan_tilt  # noqa: E402
from semcal.store.data import heldout_mask  # noqa: E402
from semcal.stream.adapt import Adapter, AdaptSettings  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MODES = ("none", "rate", "prior", "refit")
SEGMENT = 2000  # items per segment: the label mix changes every SEGMENT items
WINDOW = 500  # items per reported window
BATCH = 250
EPSILON = 1e-6  # KL smoothing: a window may miss a rare label
# (kind, KL from general_test's mix, seed of the tilt's label scores) per segment after the first.
DRIFT = (("abrupt", 0.8, 11), ("gradual", 0.25, 12), ("abrupt", 0.5, 13))

log = logging.getLogger("bench_drift")


# ---- data ----------------------------------------------------------------------------------------


def load(name: str) -> dict[str, list[str]]:
    """general_train and general_test texts and labels."""
    if name == "demo":
        from semcal.protocol.demo_data import generate_demo_rows

        train, train_labels = generate_demo_rows(3000, 0)
        test, test_labels = generate_demo_rows(1000, 1)
    elif name == "audiocaps":
        table = pd.read_csv(DATA / "audiocaps_labeled" / "audiocaps_labeled.csv")
        train_rows, test_rows = table[table.split == "train"], table[table.split == "test"]
        train, train_labels = train_rows.caption.tolist(), train_rows.top_category.tolist()
        test, test_labels = test_rows.caption.tolist(), test_rows.top_category.tolist()
    elif name == "ag_news":
        train_rows = pd.read_csv(DATA / "ag_news" / "train_8k.csv")
        test_rows = pd.read_csv(DATA / "ag_news" / "test.csv")
        train, train_labels = train_rows.text.tolist(), train_rows.label_name.tolist()
        test, test_labels = test_rows.text.tolist(), test_rows.label_name.tolist()
    else:
        raise SystemExit(f"unknown data set {name!r}: demo, audiocaps or ag_news")
    return {"train": train, "train_labels": train_labels, "test": test, "test_labels": test_labels}


def tilt(p: np.ndarray, target: float, seed: int) -> np.ndarray:
    """distort's tilt of p towards seeded label scores at KL(p || tilt) = target (from large counts)."""
    counts = plan_tilt(np.round(p * 1e6).astype(np.int64), target, label_scores(len(p), seed))
    return counts / counts.sum()


def fit_filter(data: dict, real_kl: float, folder: Path, name: str) -> tuple[Filter, dict]:
    """The filter `name` on general_train with a tilt real split; saved and loaded back."""
    labels = sorted(set(data["train_labels"]))
    code = {label: i for i, label in enumerate(labels)}
    train_codes = np.array([code[y] for y in data["train_labels"]])
    test_codes = np.array([code[y] for y in data["test_labels"]])
    k, n = len(labels), len(train_codes)
    counts = plan_tilt(np.bincount(train_codes, minlength=k), real_kl, label_scores(k, 0))
    rng = np.random.default_rng(0)
    real_rows = np.concatenate(
        [rng.choice(np.flatnonzero(train_codes == y), counts[y], replace=False) for y in range(k)]
    )
    is_real = np.isin(np.arange(n), real_rows)
    fit = FitData(
        data["train"],
        is_real,
        heldout_mask(np.arange(n), n, 0.2, 42),
        Items(data["test"]),
        m=n / len(real_rows),
        labels=labels,
        label_codes=train_codes,
    )
    described = describe(name)
    Filter.fit(described.source, described.calibration, fit).save(folder)
    facts = {
        "labels": labels,
        "train_codes": train_codes,
        "test_codes": test_codes,
        "real": label_distribution(train_codes[is_real], k),
        "general_test": label_distribution(test_codes, k),
        "m": fit.m,
        "trusted": [data["train"][i] for i in np.sort(real_rows)],
    }
    return Filter.load(folder), facts


def label_mixes(p: np.ndarray, segments: int, drift_seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mix at the start, mix at the end) per segment of the drifting stream; `drift_seed` moves
    every tilt's seed (another direction of each drift)."""
    mixes = [(p, p)]
    for kind, target, seed in DRIFT[: segments - 1]:
        mix = tilt(p, target, seed + 100 * drift_seed)
        mixes.append((mixes[-1][1], mix) if kind == "gradual" else (mix, mix))
    return mixes


def draw_stream(test_codes: np.ndarray, mixes: list[tuple[np.ndarray, np.ndarray]], seed: int) -> np.ndarray:
    """Row indices into general_test: per item a label from the item's mix, then one of its texts."""
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(test_codes == y) for y in range(len(mixes[0][0]))]
    rows = []
    for start, end in mixes:
        share = (np.arange(SEGMENT) + 0.5)[:, None] / SEGMENT
        mix = (1 - share) * start[None, :] + share * end[None, :]
        labels = (rng.random(SEGMENT)[:, None] > np.cumsum(mix, axis=1)).sum(axis=1)
        labels = np.minimum(labels, len(pools) - 1)
        rows.extend(pools[y][rng.integers(len(pools[y]))] for y in labels)
    return np.array(rows)


# ---- running and measuring ------------------------------------------------------------------------


def run_mode(model: Filter, mode: str, texts: list[str], trusted: list[str], settings: AdaptSettings) -> dict:
    """Acceptances, seeded decisions, alarms and seconds of one mode over one stream."""
    adapter = Adapter(model, mode, "auto", settings, trusted=trusted)
    rng = np.random.default_rng(0)
    accept, alarms = [], []
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        accept.append(adapter.score(texts[start : start + BATCH]).accept)
        alarms += [alarm.window for alarm in adapter.pop_alarms()]
    seconds = time.perf_counter() - started
    accept = np.concatenate(accept)
    return {
        "accept": accept,
        "decisions": rng.random(len(accept)) < accept,
        "alarms": alarms,
        "seconds": seconds,
        "restarts": adapter.restarts,
    }


def late_kl(codes: np.ndarray, accept: np.ndarray, real: np.ndarray, start: int) -> float:
    """KL(expected accepted label mix of the items from `start` on || real): the late-stream KL."""
    mix = np.bincount(codes[start:], weights=accept[start:], minlength=len(real)) / accept[start:].sum()
    return float(kl_divergence(mix, real, EPSILON))


def second_half_mixes(p: np.ndarray, real: np.ndarray, drift_seed: int) -> dict[str, np.ndarray]:
    """The second half's label mix of the flood and the 6x streams (see the module doc)."""
    flooded = int(np.argsort(real / p)[drift_seed % len(p)])
    flood = 0.3 * p + 0.7 * np.eye(len(p))[flooded]
    six = p.copy()
    six[int(np.argsort(-p)[drift_seed % len(p)])] *= 6
    return {"flood": flood, "6x": six / six.sum()}


def windows(codes: np.ndarray, result: dict, real: np.ndarray, m: float) -> pd.DataFrame:
    """Per window of WINDOW items: KL of the accepted (expected) mix, unfiltered, oracle; pass rates."""
    k, rows = len(real), []
    for start in range(0, len(codes), WINDOW):
        y, a = codes[start : start + WINDOW], result["accept"][start : start + WINDOW]
        window_mix = label_distribution(y, k)
        accepted = np.bincount(y, weights=a, minlength=k) / a.sum()
        oracle_accept = np.minimum(1.0, real[y] / window_mix[y] / m)
        oracle = np.bincount(y, weights=oracle_accept, minlength=k) / oracle_accept.sum()
        unfiltered = float(kl_divergence(window_mix, real, EPSILON))
        filtered = float(kl_divergence(accepted, real, EPSILON))
        rows.append(
            {
                "window": start // WINDOW + 1,
                "kl_unfiltered": unfiltered,
                "kl_accepted": filtered,
                "kl_oracle": float(kl_divergence(oracle, real, EPSILON)),
                "reduction": 1.0 - filtered / unfiltered,
                "pass_rate": float(a.mean()),
                "pass_rate_drawn": float(result["decisions"][start : start + WINDOW].mean()),
            }
        )
    return pd.DataFrame(rows)


def summarise(frames: dict[str, pd.DataFrame], undrifted: dict[str, list[pd.DataFrame]], results: dict, facts: dict):
    """The numbers of the report per mode (see the module doc)."""
    per_segment = SEGMENT // WINDOW
    target = 1.0 / facts["m"]
    summary = {}
    for mode, frame in frames.items():
        reference = float(np.mean([f.reduction.mean() for f in undrifted[mode]]))
        segments = frame.reduction.to_numpy().reshape(-1, per_segment)
        after = [float(s.mean()) for s in segments[1:]]
        recover = []
        for number, (kind, _, _) in enumerate(DRIFT[: len(segments) - 1], 1):
            reached = np.flatnonzero(segments[number] >= 0.8 * reference)
            recover.append(int(reached[0]) + 1 if kind == "abrupt" and len(reached) else None)
        off_target = np.abs(frame.pass_rate.to_numpy()[1:] / target - 1.0)
        alarms = results[mode]["alarms"]
        first_alarm = [
            min([w - number * per_segment for w in alarms if w > number * per_segment] or [None], key=lambda x: x or 0)
            for number in range(1, len(segments))
        ]
        undrifted_alarms = sum(len(r) for r in results[mode]["undrifted_alarms"])
        undrifted_windows = sum(len(f) for f in undrifted[mode])
        summary[mode] = {
            "undrifted_reduction": reference,
            "reduction_after_switch": after,
            "recovery_share": [value / reference for value in after],
            "windows_to_recover": recover,
            "max_pass_rate_off_target": float(off_target.max()),
            "windows_off_target_10pct": int((off_target > 0.10).sum()),
            "windows_to_first_alarm": first_alarm,
            "undrifted_false_alarms": f"{undrifted_alarms}/{undrifted_windows}",
            "undrifted_false_alarm_rate": undrifted_alarms / undrifted_windows,
            "texts_per_second": results[mode]["texts_per_second"],
        }
    return summary


def bench_dataset(name: str, args: argparse.Namespace, folder: Path) -> dict:
    started = time.perf_counter()
    data = load(name)
    model, facts = fit_filter(data, args.real_kl, folder / name / "filter", args.filter)
    log.info("%s: filter fitted in %.1fs (M %.3g)", name, time.perf_counter() - started, facts["m"])
    codes = facts["test_codes"]
    mixes = label_mixes(facts["general_test"], args.segments, args.drift_seed)
    drifting = draw_stream(codes, mixes, seed=1 + args.drift_seed)
    steady = [draw_stream(codes, [mixes[0]] * args.segments, seed=100 + i) for i in range(args.undrifted_streams)]
    settings = AdaptSettings()
    half = args.segments * SEGMENT // 2
    extra = {
        kind: draw_stream(
            codes, [mixes[0]] * (args.segments // 2) + [(mix, mix)] * (args.segments // 2), seed=50 + args.drift_seed
        )
        for kind, mix in second_half_mixes(facts["general_test"], facts["real"], args.drift_seed).items()
    }
    late = {"drifting": {}, **{kind: {} for kind in extra}}
    results, frames, undrifted = {}, {}, {}
    for mode in args.modes:
        result = run_mode(model, mode, [data["test"][i] for i in drifting], facts["trusted"], settings)
        frames[mode] = windows(codes[drifting], result, facts["real"], facts["m"])
        steady_results = [
            run_mode(model, mode, [data["test"][i] for i in rows], facts["trusted"], settings) for rows in steady
        ]
        undrifted[mode] = [
            windows(codes[rows], r, facts["real"], facts["m"]) for rows, r in zip(steady, steady_results, strict=True)
        ]
        late["drifting"][mode] = late_kl(codes[drifting], result["accept"], facts["real"], len(drifting) - SEGMENT)
        for kind, rows in extra.items():
            accept = run_mode(model, mode, [data["test"][i] for i in rows], facts["trusted"], settings)["accept"]
            late[kind][mode] = late_kl(codes[rows], accept, facts["real"], half)
        results[mode] = {
            "restarts_undrifted": [r["restarts"] for r in steady_results],
            "alarms": result["alarms"],
            "undrifted_alarms": [r["alarms"] for r in steady_results],
            "texts_per_second": len(drifting) / result["seconds"],
        }
        log.info(
            "%s %s: %.0f texts/s, alarms at windows %s", name, mode, results[mode]["texts_per_second"], result["alarms"]
        )
    whole = model.accept_probs(data["test"])
    k = len(facts["labels"])
    accepted = np.bincount(codes, weights=whole, minlength=k) / whole.sum()
    test_kl = float(kl_divergence(facts["general_test"], facts["real"], EPSILON))
    return {
        "dataset": name,
        "labels": facts["labels"],
        "m": facts["m"],
        "kl_general_test_real": test_kl,
        "test_split_reduction": 1.0 - float(kl_divergence(accepted, facts["real"], EPSILON)) / test_kl,
        "segment_mix_kl_from_general_test": [float(kl_divergence(end, facts["general_test"])) for _, end in mixes],
        "summary": summarise(frames, undrifted, results, facts),
        "late_kl": late,
        "late_kl_unfiltered": {
            "drifting": late_kl(codes[drifting], np.ones(len(drifting)), facts["real"], len(drifting) - SEGMENT),
            **{k: late_kl(codes[r], np.ones(len(r)), facts["real"], half) for k, r in extra.items()},
        },
        "restarts_undrifted": {mode: results[mode]["restarts_undrifted"] for mode in results},
        "windows": {mode: frame.to_dict(orient="list") for mode, frame in frames.items()},
        "seconds": time.perf_counter() - started,
    }


# ---- report ---------------------------------------------------------------------------------------


def markdown(report: list[dict]) -> str:
    lines = []
    for entry in report:
        lines += [
            f"### {entry['dataset']} (M {entry['m']:.3g}, KL(general_test||real) {entry['kl_general_test_real']:.3g}, "
            f"whole test split reduction {entry['test_split_reduction']:.3f})",
            "",
            "| mode | undrifted windowed reduction | after switch 1 / 2 / 3 (share of undrifted) | windows to recover "
            "(abrupt) | max pass rate off target | windows > ±10% | windows to first alarm | false alarms "
            "(undrifted) | texts/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode, s in entry["summary"].items():
            after = " / ".join(
                f"{v:.3f} ({r:.2f})" for v, r in zip(s["reduction_after_switch"], s["recovery_share"], strict=True)
            )
            lines.append(
                f"| {mode} | {s['undrifted_reduction']:.3f} | {after} | {s['windows_to_recover']} | "
                f"{100 * s['max_pass_rate_off_target']:.1f}% | {s['windows_off_target_10pct']} | "
                f"{s['windows_to_first_alarm']} | {s['undrifted_false_alarms']} | {s['texts_per_second']:.0f} |"
            )
        modes = list(entry["summary"])
        lines += ["", "late-stream KL(accepted||real) (drifting: the last segment; flood, 6x: the second half):", ""]
        lines += ["| stream | unfiltered | " + " | ".join(modes) + " |", "|---" * (len(modes) + 2) + "|"]
        for kind, values in entry["late_kl"].items():
            lines.append(
                f"| {kind} | {entry['late_kl_unfiltered'][kind]:.3f} | "
                + " | ".join(f"{values[m]:.3f}" for m in modes)
                + " |"
            )
        lines += ["", f"restarts on the undrifted streams: {entry['restarts_undrifted']}"]
        oracle = entry["windows"]["none"]["kl_oracle"]
        unfiltered = entry["windows"]["none"]["kl_unfiltered"]
        lines += [
            "",
            "windowed KL(unfiltered||real): " + ", ".join(f"{v:.3f}" for v in unfiltered),
            "",
            "windowed KL(oracle||real): " + ", ".join(f"{v:.3f}" for v in oracle),
            "",
        ]
        for mode in entry["windows"]:
            lines.append(
                f"windowed KL(accepted||real), {mode}: "
                + ", ".join(f"{v:.3f}" for v in entry["windows"][mode]["kl_accepted"])
            )
            lines.append("")
    return "\n".join(lines)


def figure(report: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report), figsize=(5.5 * len(report), 4), squeeze=False)
    for ax, entry in zip(axes[0], report, strict=True):
        first = next(iter(entry["windows"].values()))
        ends = np.array(first["window"]) * WINDOW
        ax.plot(ends, first["kl_unfiltered"], "k--", label="unfiltered")
        ax.plot(ends, first["kl_oracle"], "k:", label="oracle")
        for mode, frame in entry["windows"].items():
            ax.plot(ends, frame["kl_accepted"], marker="o", markersize=3, label=mode)
        for switch in range(SEGMENT, int(ends[-1]), SEGMENT):
            ax.axvline(switch, color="grey", alpha=0.3)
        ax.set(title=entry["dataset"], xlabel="stream item", ylabel="KL(accepted || real), per 500 items")
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="demo,audiocaps,ag_news")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--filter", default=DEFAULT_FILTER, help="the filter fitted and adapted (a text filter)")
    parser.add_argument("--real_kl", type=float, default=0.6, help="KL(general_train || real split): moderate")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--drift_seed", type=int, default=0, help="another direction of every drift (tilt seeds)")
    parser.add_argument("--undrifted_streams", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "runs" / "bench_drift"))
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("semcal").setLevel(logging.WARNING)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        report = [bench_dataset(name, args, Path(folder)) for name in args.datasets.split(",")]
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds": time.perf_counter() - started,
    }
    (output / "bench_drift.json").write_text(json.dumps({"meta": meta, "args": vars(args), "report": report}, indent=1))
    (output / "bench_drift.md").write_text(markdown(report))
    figure(report, output / "windowed_kl.png")
    print(markdown(report))
    print(f"total {meta['seconds']:.0f}s -> {output}")


if __name__ == "__main__":
    main()
