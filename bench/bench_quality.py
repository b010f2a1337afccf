"""Quality of the filters on real captions: the paper-style table, mean ± std over training seeds.

Runs `semcal run` on AudioCaps (label top_category) and AG News (label label) at baseline,
mild, moderate and severe, once per training seed, then aggregates every score variant
that the evaluation measures with the oracle and the classifier references. The paper's
exact method (real models trained separately, clipped score, no normalisation) runs once
per data set, on the first seed, beside the default (real models fine-tuned from the
general model).

    .venv/bin/python bench/bench_quality.py                       # both data sets, seeds 0 1 2
    .venv/bin/python bench/bench_quality.py --datasets=audiocaps --seeds=0

Each (data set, seed) is one run folder under runs/quality/; finished stages are skipped,
so an interrupted benchmark continues where it stopped. The distortion seed stays 0: the
seeds vary the language models' training only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from semcal.pipeline import PipelineConfig, run_pipeline

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "audiocaps": dict(
        dataset_name=str(SHARED / "audiocaps_labeled" / "audiocaps_labeled.csv"),
        text_column="caption",
        label_column="top_category",
    ),
    "ag_news": dict(
        dataset_name=f"general_train={SHARED / 'ag_news' / 'train_8k.csv'},general_test={SHARED / 'ag_news' / 'test.csv'}",
        text_column="text",
        label_column="label",
    ),
}
SPLITS = ["baseline", "mild", "moderate", "severe"]
# Small enough for 2 CPU cores: 30 trainings (2 data sets x 3 seeds x 5 models) in under an hour.
FINETUNE_SETTINGS = {
    "n_layer": "2",
    "n_embd": "128",
    "n_head": "4",
    "vocab_size": "2048",
    "max_length": "96",
    "num_epochs": "3",
    "batch_size": "32",
}


def run_one(name: str, seed: int, run_dir: Path, init_real_from_general: bool) -> Path:
    started = time.perf_counter()
    run_pipeline(
        PipelineConfig(
            **DATASETS[name],
            run_dir=str(run_dir),
            splits=SPLITS,
            seed=seed,
            init_real_from_general=init_real_from_general,
            finetune_settings=dict(FINETUNE_SETTINGS),
        )
    )
    print(f"bench_quality: {run_dir.name} in {time.perf_counter() - started:.0f}s", flush=True)
    return run_dir


def run_all(datasets: list[str], seeds: list[int], root: Path) -> tuple[dict[str, dict[int, Path]], dict[str, Path]]:
    """The default pipeline for every seed, and the paper's exact method (real models trained
    separately, not from the general model) for the first seed."""
    run_dirs: dict[str, dict[int, Path]] = {}
    paper_dirs: dict[str, Path] = {}
    for name in datasets:
        for seed in seeds:
            run_dirs.setdefault(name, {})[seed] = run_one(name, seed, root / f"{name}-seed{seed}", True)
        paper_dirs[name] = run_one(name, seeds[0], root / f"{name}-paper-seed{seeds[0]}", False)
    return run_dirs, paper_dirs


def _mean_std(values: list[float]) -> str:
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not finite.size:
        return "n/a"
    std = finite.std(ddof=1) if finite.size > 1 else 0.0
    return f"{finite.mean():.3g} ± {std:.2g}"


def _pct(values: list[float | None]) -> str:
    finite = [100 * v for v in values if v is not None and np.isfinite(v)]
    return _mean_std(finite) if finite else "n/a"


def summarise(run_dirs: dict[str, dict[int, Path]], paper_dirs: dict[str, Path]) -> str:
    """Markdown: the main table (default vs paper vs references) and the levers table."""
    lines = [
        "| data set | split | KL(general‖real) | KL(filtered‖real), default | deception reduction, default (%) "
        "| paper's method, seed 0 (%) | oracle (%) | classifier (%) | default / oracle | pass rate default (%) | 1/M (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    levers: dict[str, dict[str, list[float]]] = {}
    baseline_ratios: dict[str, dict[str, list[float]]] = {}
    for name, by_seed in run_dirs.items():
        for split in SPLITS:
            results = [json.loads((d / "evaluation" / split / "results.json").read_text()) for d in by_seed.values()]
            default = [r["filters"]["semcal"] for r in results]
            paper_results = json.loads((paper_dirs[name] / "evaluation" / split / "results.json").read_text())
            paper = [paper_results["variants"][paper_results["paper_variant"]]]
            oracle = [r["filters"]["oracle"] for r in results]
            classifier = [r["filters"].get("classifier", {}) for r in results]
            if split == "baseline":
                reduction = lambda block: _mean_std([b.get("kl_ratio") for b in block]) + " (KL ×)"  # noqa: E731
                for r in results:
                    for variant, block in r["variants"].items():
                        baseline_ratios.setdefault(name, {}).setdefault(variant, []).append(block["kl_ratio"])
                share = "–"
            else:
                reduction = lambda block: _pct([b.get("deception_reduction") for b in block])  # noqa: E731
                share = _mean_std(
                    [d["deception_reduction"] / o["deception_reduction"] for d, o in zip(default, oracle, strict=True)]
                )
                for r in results:
                    for variant, block in r["variants"].items():
                        ratio = block["deception_reduction"] / r["filters"]["oracle"]["deception_reduction"]
                        levers.setdefault(variant, {}).setdefault(f"{name} {split}", []).append(ratio)
            lines.append(
                f"| {name} | {split} | {_mean_std([r['kl_general'] for r in results])} "
                f"| {_mean_std([d['kl_mean'] for d in default])} | {reduction(default)} | {reduction(paper)} "
                f"| {reduction(oracle)} | {reduction(classifier)} | {share} "
                f"| {_pct([d['pass_rate_mean'] for d in default])} | {_pct([1 / r['M'] for r in results])} |"
            )
    columns = sorted({key for per_variant in levers.values() for key in per_variant})
    lines += [
        "",
        "Share of the oracle's deception reduction reached by each score variant (mean ± std over seeds):",
        "",
        "| variant | " + " | ".join(columns) + " | baseline KL × (" + ", ".join(run_dirs) + ") |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for variant, per_split in sorted(levers.items()):
        baseline = ", ".join(_mean_std(baseline_ratios[name].get(variant, [])) for name in run_dirs)
        lines.append(
            f"| {variant} | " + " | ".join(_mean_std(per_split.get(c, [])) for c in columns) + f" | {baseline} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="audiocaps,ag_news")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/quality")
    args = parser.parse_args()
    started = time.perf_counter()
    run_dirs, paper_dirs = run_all(args.datasets.split(","), [int(s) for s in args.seeds.split(",")], Path(args.root))
    table = summarise(run_dirs, paper_dirs)
    Path(args.root, "quality.md").write_text(table + "\n")
    print(f"\n{table}\n\nbench_quality: {time.perf_counter() - started:.0f}s in all; table in {args.root}/quality.md")


if __name__ == "__main__":
    main()
