"""Speed of the vectorised Monte Carlo (semcal.filter.calibration.monte_carlo) against a per-run
pandas loop like the paper's evaluation script, on the same statistics.

Texts: the AudioCaps test split (4820 captions, labels `top_category`, 7 values). The real
set is a label-tilted subset of the train split, as distort makes it; acceptance
probabilities are synthetic: min(1, exp(s) / M) with s = the true label log-ratio plus
N(0, 1) noise (a filter of realistic quality, no language model needed).

The pandas loop runs fewer runs (--slow_runs) and its time is scaled per run to --runs. Both
draw the same uniforms from the same seed (one rng.random(n_texts) per run, in order), so the
first --slow_runs runs must give identical per-run KL, TVD and pass rate: checked before timing.

    .venv/bin/python bench/bench_montecarlo.py                 # 1000 runs vectorised, 50 in the loop
    .venv/bin/python bench/bench_montecarlo.py --runs=1000 --slow_runs=100 --repeats=5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from semcal.filter import calibration

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "audiocaps_labeled" / "audiocaps_labeled.csv"


def make_inputs(csv_path: Path, seed: int):
    """general_test labels, a real_train label table, and synthetic acceptance probabilities."""
    table = pd.read_csv(csv_path, usecols=["split", "top_category"])
    test_labels = table.loc[table["split"] == "test", "top_category"].to_numpy(dtype=object)
    train_labels = table.loc[table["split"] == "train", "top_category"].to_numpy(dtype=object)
    labels = sorted(set(train_labels) | set(test_labels))
    rng = np.random.default_rng(seed)
    keep_share = dict(zip(labels, rng.uniform(0.05, 0.9, size=len(labels)), strict=True))
    real_train = train_labels[rng.random(train_labels.size) < np.array([keep_share[y] for y in train_labels])]
    m = calibration.ratio_m(train_labels.size, real_train.size)
    general_share = pd.Series(train_labels).value_counts(normalize=True)
    real_share = pd.Series(real_train).value_counts(normalize=True)
    log_ratio = np.array([np.log(real_share[y] / general_share[y]) for y in test_labels])
    scores = log_ratio + rng.normal(0.0, 1.0, size=test_labels.size)
    return labels, test_labels, real_train, scores, m


def paper_style_loop(test_labels, real_train_labels, scores, m, n_runs, seed):
    """Per-run pandas rejection sampling with the statistics of the paper's script."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"label": test_labels, "clipped_diff": scores})
    real_train = pd.DataFrame({"label": real_train_labels})
    kls, tvds, pass_rates, freqs_per_run = [], [], [], []
    for _ in range(n_runs):
        run = frame.copy()
        run["accept_prob"] = np.exp(run["clipped_diff"] - np.log(m)).clip(upper=1.0)
        run["keep"] = rng.random(len(run)) < run["accept_prob"]
        filtered = run[run["keep"]]
        freqs_real = real_train["label"].value_counts(normalize=True).sort_index()
        freqs_filtered = filtered["label"].value_counts(normalize=True).sort_index()
        labels = sorted(set(freqs_real.index).union(freqs_filtered.index))
        real = freqs_real.reindex(labels, fill_value=0).to_numpy()
        kept = freqs_filtered.reindex(labels, fill_value=0).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            kls.append(float(np.sum(np.where(kept != 0, kept * np.log(kept / real), 0.0))))
        tvds.append(0.5 * float(np.sum(np.abs(real - kept))))
        pass_rates.append(len(filtered) / len(run))
        freqs_per_run.append(freqs_filtered)
    all_labels = sorted(set().union(*(f.index for f in freqs_per_run)))
    mean_freqs = sum(f.reindex(all_labels, fill_value=0) for f in freqs_per_run) / n_runs
    return np.array(kls), np.array(tvds), np.array(pass_rates), mean_freqs


def vectorised(labels, test_labels, real_train_labels, accept_by_filter, n_runs, seed):
    code_of = {label: code for code, label in enumerate(labels)}
    codes = np.array([code_of[y] for y in test_labels])
    real = calibration.label_distribution(np.array([code_of[y] for y in real_train_labels]), len(labels))
    return calibration.monte_carlo(accept_by_filter, codes, real, n_runs, seed)


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--runs", type=int, default=1000, help="runs of the vectorised Monte Carlo")
    parser.add_argument("--slow_runs", type=int, default=50, help="runs of the pandas loop (time scaled per run)")
    parser.add_argument("--repeats", type=int, default=3, help="timings taken of each; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    labels, test_labels, real_train, scores, m = make_inputs(args.csv, args.seed)
    accept = calibration.accept_probs(scores, m)

    # Same statistics: the loop's runs equal the first slow_runs vectorised runs, draw for draw.
    kls, tvds, pass_rates, mean_freqs = paper_style_loop(test_labels, real_train, scores, m, args.slow_runs, args.seed)
    check = vectorised(labels, test_labels, real_train, {"f": accept}, args.slow_runs, args.seed)["f"]
    np.testing.assert_allclose(check.kl, kls, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(check.tvd, tvds, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(check.pass_rate, pass_rates, rtol=0, atol=0)
    np.testing.assert_allclose(check.mean_distribution, mean_freqs.reindex(labels).to_numpy(), rtol=1e-9)

    loop_times = timed(
        lambda: paper_style_loop(test_labels, real_train, scores, m, args.slow_runs, args.seed), args.repeats
    )
    one_filter = timed(lambda: vectorised(labels, test_labels, real_train, {"f": accept}, args.runs, args.seed), 3)
    # what the evaluation stage does: no filter, 4 score variants, oracle, classifier on the same draws
    seven = {f"f{i}": np.clip(accept * (0.5 + 0.1 * i), 0, 1) for i in range(7)}
    seven_filters = timed(lambda: vectorised(labels, test_labels, real_train, seven, args.runs, args.seed), 3)

    loop_per_run = statistics.median(loop_times) / args.slow_runs
    fast = statistics.median(one_filter)
    result = {
        "texts": int(test_labels.size),
        "labels": len(labels),
        "runs_vectorised": args.runs,
        "runs_pandas_loop": args.slow_runs,
        "pandas_loop_s_per_run": loop_per_run,
        "pandas_loop_s_scaled_to_runs": loop_per_run * args.runs,
        "vectorised_s": fast,
        "vectorised_s_7_filters": statistics.median(seven_filters),
        "speedup": loop_per_run * args.runs / fast,
        "same_statistics_checked_runs": args.slow_runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}",
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n{args.runs} runs over {test_labels.size} texts, {len(labels)} labels: vectorised {fast * 1000:.0f} ms "
        f"(7 filters on the same draws: {result['vectorised_s_7_filters'] * 1000:.0f} ms); pandas loop "
        f"{loop_per_run * 1000:.2f} ms/run = {result['pandas_loop_s_scaled_to_runs']:.1f} s scaled "
        f"(measured on {args.slow_runs} runs) -> {result['speedup']:.0f}x"
    )


if __name__ == "__main__":
    main()
