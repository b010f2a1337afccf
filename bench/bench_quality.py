"""Quality of every filter on real captions and the demo: mean ± std over training seeds.

Runs `semcal run` with `control=matched` on AudioCaps (label top_category), AG News (label
label_name) and the synthetic demo, at baseline, mild, moderate and severe, once per
training seed, with the same model sizes and defaults for every data set. Every filter the
evaluation measures (references, the language models' score variants, the matched-control
variants, the density-ratio estimators) is aggregated as its share of the oracle's
deception reduction, its pass rate against 1/M and, on the baseline split, its KL ratio.
The paper's exact method (real models trained separately, clipped score, no normalisation)
runs once per data set, on the first seed.

    .venv/bin/python bench/bench_quality.py                       # all data sets, seeds 0 1 2
    .venv/bin/python bench/bench_quality.py --datasets=audiocaps --seeds=0

Each (data set, seed) is one run folder under --root; finished stages are skipped, so an
interrupted benchmark continues where it stopped. `--seeds` vary the language models'
training; `--distort_seeds` the distortion's direction (which labels the real splits favour:
distort's seed, default 0), each direction its own run folder ("d1", "d2" in the tables). Wall time per run is reported with the control
models' share (their fine-tuning and scoring) separately, since the default needs none.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from semcal.protocol.demo_data import generate_demo
from semcal.protocol.evaluation import EvaluationConfig, evaluate
from semcal.protocol.evaluation_inputs import SCORE_FILES
from semcal.protocol.pipeline import PipelineConfig, run_pipeline
from semcal.store import files

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
        label_column="label_name",
    ),
    "demo": dict(dataset_name="", text_column="text", label_column="label"),  # generated under --root
}
SPLITS = ["baseline", "mild", "moderate", "severe"]
# Small enough for 2 CPU cores; the same for every data set.
FINETUNE_SETTINGS = {
    "n_layer": "2",
    "n_embd": "128",
    "n_head": "4",
    "vocab_size": "2048",
    "max_length": "96",
    "num_epochs": "3",
    "batch_size": "32",
}


def run_one(
    name: str, seed: int, root: Path, paper: bool = False, distort_seed: int = 0, text_only: bool = False
) -> dict:
    """One `semcal run`; returns its folder and wall times (all, and the control models' part).

    text_only: no language model is trained; every filter that needs none is measured."""
    spec = dict(DATASETS[name])
    if name == "demo":
        source = root / "demo-source"
        if not source.exists():
            files.save_dataset_dict(generate_demo(3000, 1000, seed=0), source)
        spec["dataset_name"] = str(source)
    direction = f"-d{distort_seed}" if distort_seed else ""
    run_dir = root / f"{name}{direction}-{'paper-' if paper else ''}{'text' if text_only else f'seed{seed}'}"
    started = time.perf_counter()
    evaluation_settings = {"filter": "clipped"} if paper else {}
    run_pipeline(
        PipelineConfig(
            **spec,
            run_dir=str(run_dir),
            splits=SPLITS,
            seed=seed,
            init_real_from_general=not paper,
            control="none" if paper or text_only else "matched",
            distort_settings={"seed": str(distort_seed)},
            finetune_settings=dict(FINETUNE_SETTINGS),
            evaluation_settings={"candidates": "false"} if text_only else evaluation_settings,
        )
    )
    if text_only:  # the run measured THE filter alone: measure every candidate that needs no language model
        for split in SPLITS:
            evaluate(
                EvaluationConfig(
                    dataset_name=str(run_dir / "data"),
                    distortion=split,
                    text_column=spec["text_column"],
                    label_column=spec["label_column"],
                    **dict.fromkeys(SCORE_FILES),
                    output_dir=str(run_dir / "evaluation" / split),
                )
            )
    wall = time.perf_counter() - started

    def stage_seconds(patterns: tuple[str, ...]) -> float:
        # From the stages' records, so a resumed or re-evaluated run still reports what it cost.
        folders = [folder for pattern in patterns for folder in run_dir.glob(pattern)]
        return sum(
            (files.read_record(folder) or {}).get("wall_time_s", 0.0)
            for folder in folders
            if folder.is_dir() and not folder.name.startswith(".")  # not the lock files beside them
        )

    control = stage_seconds(("models/control_*", "scores/*.control_*"))
    stages = stage_seconds(("data", "models/*", "scores/*", "evaluation/*"))
    evaluations = stage_seconds(("evaluation/*",))
    print(f"bench_quality: {run_dir.name}: stages {stages:.0f}s, of it control models {control:.0f}s", flush=True)
    return {"run_dir": run_dir, "wall_s": wall, "stages_s": stages, "control_s": control, "evaluation_s": evaluations}


def _mean_std(values: list[float | None], scale: float = 1.0) -> str:
    finite = np.array([scale * v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not finite.size:
        return "n/a"
    std = finite.std(ddof=1) if finite.size > 1 else 0.0
    return f"{finite.mean():.3g} ± {std:.2g}"


def _blocks(results: dict) -> dict[str, dict]:
    """Every measured filter's results block by name: the chosen one as "default", then the rest."""
    blocks = {"default": results["filters"]["semcal"]}
    blocks |= {name: block for name, block in results["filters"].items() if name != "semcal"}
    blocks |= {name: block for name, block in results["variants"].items() if name not in blocks}
    return blocks


def summarise(runs: dict[str, list[dict]], paper_runs: dict[str, dict]) -> str:
    """Markdown: share of the oracle per filter and split, pass rate / (1/M), baseline KL ratio, times."""
    share: dict[str, dict[str, list[float]]] = {}
    pass_ratio: dict[str, dict[str, list[float]]] = {}
    for name, seed_runs in [*runs.items(), *((f"{n} (paper)", [r]) for n, r in paper_runs.items())]:
        for split in SPLITS:
            for run in seed_runs:
                results = json.loads((run["run_dir"] / "evaluation" / split / "results.json").read_text())
                oracle = results["filters"]["oracle"]
                for filter_name, block in _blocks(results).items():
                    key = f"{name} {split}"
                    if split == "baseline":
                        value = block.get("kl_ratio")
                        share.setdefault(filter_name, {}).setdefault(key, []).append(value)
                        share.setdefault(filter_name, {}).setdefault(f"{name} oracle ×", []).append(oracle["kl_ratio"])
                    elif block.get("deception_reduction") is not None:
                        value = block["deception_reduction"] / oracle["deception_reduction"]
                        share.setdefault(filter_name, {}).setdefault(key, []).append(value)
                    pass_ratio.setdefault(filter_name, {}).setdefault(name, []).append(
                        block["pass_rate_mean"] * results["M"]
                    )
    columns = [f"{name} {split}" for name in [*runs, *(f"{n} (paper)" for n in paper_runs)] for split in SPLITS]
    lines = [
        "Share of the oracle's deception reduction (baseline: KL(filtered‖real) / KL(general‖real)), "
        "mean ± std over seeds; pass × M is the pass rate as a multiple of 1/M (min–max over splits and seeds).",
        "",
        "| filter | " + " | ".join(columns) + " | pass × M |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for filter_name, per_column in share.items():
        ratios = [v for values in pass_ratio[filter_name].values() for v in values]
        lines.append(
            f"| {filter_name} | "
            + " | ".join(_mean_std(per_column.get(c, [])) for c in columns)
            + f" | {min(ratios):.2f}–{max(ratios):.2f} |"
        )
    lines += [
        "",
        "| run | all stages (s) | of it control models (s) | of it the 4 evaluations (s) |",
        "|---|---|---|---|",
    ]
    for seed_runs in [*runs.values(), *([r] for r in paper_runs.values())]:
        lines += [
            f"| {r['run_dir'].name} | {r['stages_s']:.0f} | {r['control_s']:.0f} | {r['evaluation_s']:.0f} |"
            for r in seed_runs
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="demo,audiocaps,ag_news")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/quality")
    parser.add_argument("--distort_seeds", default="0", help="distortion directions: distort's seed, e.g. 0,1,2")
    parser.add_argument("--text_only", action="store_true", help="no language models: the filters that need none")
    parser.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True, help="the paper's method too")
    args = parser.parse_args()
    root, seeds = Path(args.root), [int(s) for s in args.seeds.split(",")]
    directions = [int(s) for s in args.distort_seeds.split(",")]
    started = time.perf_counter()
    runs = {
        f"{name} d{direction}" if len(directions) > 1 else name: [
            run_one(name, seed, root, distort_seed=direction, text_only=args.text_only)
            for seed in (seeds[:1] if args.text_only else seeds)
        ]
        for name in args.datasets.split(",")
        for direction in directions
    }
    paper = args.paper and not args.text_only
    paper_runs = {name: run_one(name.split()[0], seeds[0], root, paper=True) for name in runs} if paper else {}
    table = summarise(runs, paper_runs)
    Path(root, "quality.md").write_text(table + "\n")
    print(f"\n{table}\n\nbench_quality: {time.perf_counter() - started:.0f}s in all; table in {root}/quality.md")


if __name__ == "__main__":
    main()
