"""Per-item calibration (Brier, ECE, AUC, sn34 on held-out rows) and the deception reduction of
each decision mode (sample, threshold, top), on the demo, AudioCaps and AG News, 3 seeds.

    .venv/bin/python bench/bench_item_calibration.py                      # all, seeds 0 1 2
    .venv/bin/python bench/bench_item_calibration.py --datasets=ag_news --seeds=0

- AudioCaps and AG News: text filters only (no language model is trained): distort with
  distortion seed 0, 1, 2 (each seed draws another tilt direction and other real rows), then
  the evaluation with every candidate whose inputs are there (tfidf_labmom, the default then;
  tfidf_likelihood; classifier; label_posterior; tfidf_mom; ngram_labmom). The paper's method
  (`clipped`) needs language models and is not measured here.
- demo: `semcal demo` with seed 0, 1, 2 (the synthetic data and the training seed), which
  trains small language models and measures every filter, the paper's `clipped` among them.

Writes --root/bench_item_calibration.md and .json; finished stages are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import DATASETS  # noqa: E402  (the same data sets and columns)

from semcal.protocol.distort import DistortConfig, distort  # noqa: E402
from semcal.protocol.evaluation import EvaluationConfig, evaluate  # noqa: E402
from semcal.protocol.pipeline import DemoConfig, demo  # noqa: E402

SPLITS = ("mild", "moderate", "severe")
FILTERS = ("tfidf_labmom", "tfidf_likelihood", "classifier", "clipped")
METRICS = ("brier", "ece", "roc_auc", "sn34")
MODES = ("sample", "threshold", "top")


def run_text_only(name: str, seed: int, root: Path) -> dict[str, dict]:
    """Distort (seed) and evaluate each split with every text filter; results by split."""
    spec = DATASETS[name]
    data = root / f"{name}-seed{seed}" / "data"
    distort(
        DistortConfig(
            dataset_name=spec["dataset_name"],
            output_dir=str(data),
            label_column=spec["label_column"],
            text_column=spec["text_column"],
            seed=seed,
        )
    )
    results = {}
    for split in SPLITS:
        config = EvaluationConfig(
            dataset_name=str(data),
            distortion=split,
            text_column=spec["text_column"],
            label_column=spec["label_column"],
            general_scores_csv=None,
            real_scores_csv=None,
            general_heldout_csv=None,
            real_heldout_csv=None,
            output_dir=str(root / f"{name}-seed{seed}" / "evaluation" / split),
        )
        results[split] = evaluate(config)
    return results


def run_demo(seed: int, root: Path) -> dict[str, dict]:
    run_dir = demo(DemoConfig(run_dir=str(root / f"demo-seed{seed}"), seed=seed))
    return {split: json.loads((run_dir / "evaluation" / split / "results.json").read_text()) for split in SPLITS}


def _mean_std(values: list) -> str:
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not finite.size:
        return "n/a"
    return f"{finite.mean():.3g} ± {finite.std(ddof=1) if finite.size > 1 else 0.0:.2g}"


def rows(all_results: dict[str, list[dict[str, dict]]]) -> tuple[list[str], list[str]]:
    """Markdown rows of the per-item table and the decision-mode table."""
    items, modes = [], []
    for name, seeds in all_results.items():
        for split in SPLITS:
            per_seed = [seed_results[split] for seed_results in seeds]
            for filter_name in ("constant", *FILTERS):
                blocks = [
                    r["per_item"]["reference"]
                    if filter_name == "constant"
                    else r["per_item"]["filters"].get(filter_name)
                    for r in per_seed
                ]
                if any(block is None for block in blocks):
                    continue
                cells = [_mean_std([b[m] for b in blocks]) for m in METRICS]
                items.append(f"| {name} | {split} | {filter_name} | " + " | ".join(cells) + " |")
                if filter_name == "constant":
                    continue
                decisions = [r["decisions"]["filters"][filter_name] for r in per_seed]
                cells = [
                    _mean_std([100 * _or_nan(d[mode]["deception_reduction"]) for d in decisions]) for mode in MODES
                ]
                sample_expected = _mean_std(
                    [100 * _or_nan(d["sample"]["expected_deception_reduction"]) for d in decisions]
                )
                pass_rates = " / ".join(_mean_std([100 * d[mode]["pass_rate"] for d in decisions]) for mode in MODES)
                modes.append(
                    f"| {name} | {split} | {filter_name} | {cells[0]} ({sample_expected}) | {cells[1]} | {cells[2]} | "
                    f"{pass_rates} | {_mean_std([100 / r['M'] for r in per_seed])} |"
                )
    return items, modes


def _or_nan(value) -> float:
    return float("nan") if value is None else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="demo,audiocaps,ag_news")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/bench_item_calibration")
    args = parser.parse_args()
    root = Path(args.root)
    seeds = [int(s) for s in args.seeds.split(",")]
    all_results: dict[str, list[dict[str, dict]]] = {}
    times = {}
    for name in args.datasets.split(","):
        started = time.perf_counter()
        all_results[name] = [run_demo(s, root) if name == "demo" else run_text_only(name, s, root) for s in seeds]
        times[name] = round(time.perf_counter() - started, 1)
        print(f"bench_item_calibration: {name} done in {times[name]}s", flush=True)
    items, modes = rows(all_results)
    lines = [
        f"seeds {args.seeds}; mean ± std over seeds; wall time per data set (s): {times}",
        "",
        "| data set | split | filter | Brier | ECE | AUC | sn34 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *items,
        "",
        "| data set | split | filter | sample (expected) | threshold | top | pass rate sample / threshold / top (%) | "
        "1/M (%) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *modes,
    ]
    (root / "bench_item_calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
