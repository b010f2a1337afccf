"""The whole pipeline in order, the results table, and the demo.

`semcal run` runs distort, fine-tunes the general model and one real model per split,
scores general_test (and the held-out general_train texts) with each, and evaluates each
split, all inside one run folder:

    RUN_DIR/data/                   the data set with its real_train_<split> splits
    RUN_DIR/models/general/         the general model; RUN_DIR/models/real_<split>/ the real ones
    RUN_DIR/scores/<split>.<model>.csv   per-token log-probs
    RUN_DIR/evaluation/<split>/     results.json, summary.md, per_text.csv, figure
    RUN_DIR/results_table.md, .csv  the paper-style table

A stage whose output already carries a record of the same settings is skipped, so a
crashed or extended run continues without redoing work. Settings of the stages that the
pipeline does not set itself pass through as `finetune_settings=name=value,...` (and
`score_settings`, `evaluation_settings`), typed by the stage's own config.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from semcal import data, files, report
from semcal.config import UserError, apply_overrides, config_to_dict
from semcal.distort import DistortConfig, distort
from semcal.evaluation import EvaluationConfig, evaluate
from semcal.lm import FinetuneConfig, finetune
from semcal.scoring import ScoreConfig, score_split


@dataclass
class PipelineConfig:
    dataset_name: str = (
        "runs/demo/source"  # the input data set (see distort.py): file(s), save_to_disk folder or Hub id
    )
    run_dir: str = "runs/demo"  # folder that receives every stage's output
    text_column: str = "text"  # column holding the captions
    label_column: str = "label"  # column holding each caption's label
    label_map: str | None = None  # fine-to-coarse label map (label_maps/ name or JSON path)
    split_column: str = "split"  # for a single data file: the column naming each row's split
    splits: list[str] = field(default_factory=lambda: ["baseline", "mild", "moderate", "severe"])  # real splits
    targets: dict[str, float] = field(
        default_factory=lambda: {"baseline": 0.0, "mild": 0.25, "moderate": 0.6, "severe": 0.8}
    )  # target KL(general || real) of each split
    distort_strategy: str = "tilt"  # tilt or max_subset (see distort.py)
    base_model: str = "scratch"  # every model's base: scratch (GPT-2 trained from nothing), a Hub id/folder, or .gguf
    init_real_from_general: bool = True  # start each real model from the trained general model (false: the paper)
    seed: int = 0  # training seed of every model (the distortion and the evaluation keep their own seeds)
    distort_settings: dict[str, str] = field(default_factory=dict)  # other distort settings, name=value
    finetune_settings: dict[str, str] = field(default_factory=dict)  # other finetune settings, name=value
    score_settings: dict[str, str] = field(default_factory=dict)  # other score settings, name=value
    evaluation_settings: dict[str, str] = field(default_factory=dict)  # other evaluation settings, name=value


@dataclass
class DemoConfig:
    run_dir: str = "runs/demo"  # where the synthetic data set and every output go
    n_train: int = 3000  # synthetic general_train captions
    n_test: int = 1000  # synthetic general_test captions
    seed: int = 0  # seed of the synthetic data and of training


def _with_settings(config: Any, settings: dict[str, str], where: str) -> Any:
    try:
        return apply_overrides(config, [f"--{name}={value}" for name, value in settings.items()])
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def _up_to_date(folder: Path, config: Any) -> bool:
    """True when `folder` holds a finished output of a stage run with exactly `config`."""
    record = files.read_record(folder)
    return record is not None and record.get("config") == config_to_dict(config)


class _Progress:
    """One line per stage: what runs, whether it was skipped, how long it took."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0

    def stage(self, name: str, record_folder: Path, config: Any, run: Callable[[], Any]) -> None:
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {name}"
        if _up_to_date(record_folder, config):
            print(f"{prefix}: up to date, skipped")
            return
        print(f"{prefix} ...", flush=True)
        started = time.perf_counter()
        run()
        print(f"{prefix}: done in {time.perf_counter() - started:.1f}s", flush=True)


def _stage_configs(config: PipelineConfig) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """Every stage's config for this run, built before any work so a bad setting costs nothing."""
    run_dir = Path(config.run_dir)
    data_dir = str(run_dir / "data")
    unknown = [split for split in config.splits if split not in config.targets]
    if not config.splits or unknown:
        raise UserError(
            f"splits {unknown or '(none)'} have no target KL: give each split a target, e.g. "
            f"--targets=mild=0.25,severe=0.8 (targets now: {config.targets})."
        )
    distort_config = _with_settings(
        DistortConfig(
            dataset_name=config.dataset_name,
            output_dir=data_dir,
            label_column=config.label_column,
            label_map=config.label_map,
            split_column=config.split_column,
            targets={split: config.targets[split] for split in config.splits},
            strategy=config.distort_strategy,
        ),
        config.distort_settings,
        "distort_settings",
    )
    general_dir = str(run_dir / "models" / "general")
    finetune_configs = [
        _with_settings(
            FinetuneConfig(
                dataset_name=data_dir,
                split_name=split_name,
                text_column=config.text_column,
                base_model=config.base_model,
                init_from=general_dir if split_name != data.GENERAL_TRAIN and config.init_real_from_general else None,
                output_dir=model_dir,
                tokenizer_dir=str(run_dir / "models" / "tokenizer"),
                seed=config.seed,
            ),
            config.finetune_settings,
            "finetune_settings",
        )
        for split_name, model_dir in [(data.GENERAL_TRAIN, general_dir)]
        + [(data.real_split_name(split), str(run_dir / "models" / f"real_{split}")) for split in config.splits]
    ]
    score_configs = [
        _with_settings(
            ScoreConfig(
                dataset_name=data_dir,
                split_name=split_name,
                text_column=config.text_column,
                model=model.output_dir,
                output_dir=str(run_dir / "scores" / f"{scored}.{Path(model.output_dir).name}"),
                heldout_only=scored == "heldout",
            ),
            config.score_settings,
            "score_settings",
        )
        for model in finetune_configs
        for scored, split_name in (("general_test", data.GENERAL_TEST), ("heldout", data.GENERAL_TRAIN))
    ]

    def scores(scored: str, model_name: str) -> str:
        return str(run_dir / "scores" / f"{scored}.{model_name}" / "token_log_probs.csv")

    evaluation_configs = [
        _with_settings(
            EvaluationConfig(
                dataset_name=data_dir,
                split_name=split,
                text_column=config.text_column,
                label_column=config.label_column,
                label_map=config.label_map,
                general_scores_csv=scores("general_test", "general"),
                real_scores_csv=scores("general_test", f"real_{split}"),
                general_heldout_csv=scores("heldout", "general"),
                real_heldout_csv=scores("heldout", f"real_{split}"),
                output_dir=str(run_dir / "evaluation" / split),
            ),
            config.evaluation_settings,
            "evaluation_settings",
        )
        for split in config.splits
    ]
    return distort_config, finetune_configs, score_configs, evaluation_configs


def run_pipeline(config: PipelineConfig) -> Path:
    """Run every stage in order inside run_dir, skipping those already done with the same settings."""
    distort_config, finetune_configs, score_configs, evaluation_configs = _stage_configs(config)
    run_dir = Path(config.run_dir)
    files.write_record(run_dir, "run", config_to_dict(config))
    progress = _Progress(1 + len(finetune_configs) + len(score_configs) + len(evaluation_configs))
    started = time.perf_counter()
    progress.stage("distort", Path(distort_config.output_dir), distort_config, lambda: distort(distort_config))
    for finetune_config in finetune_configs:
        name = f"finetune {Path(finetune_config.output_dir).name} on {finetune_config.split_name}"
        progress.stage(name, Path(finetune_config.output_dir), finetune_config, lambda c=finetune_config: finetune(c))
    for score_config in score_configs:
        name = f"score {Path(score_config.output_dir).name}"
        progress.stage(name, Path(score_config.output_dir), score_config, lambda c=score_config: score_split(c))
    for evaluation_config in evaluation_configs:
        name = f"evaluate {evaluation_config.split_name}"
        progress.stage(
            name, Path(evaluation_config.output_dir), evaluation_config, lambda c=evaluation_config: evaluate(c)
        )
    table = write_table([run_dir], run_dir / "results_table")
    print(f"\n{table}\n")
    print(f"run: finished in {time.perf_counter() - started:.0f}s; results in {run_dir}")
    for evaluation_config in evaluation_configs:
        print(
            f"  figure ({evaluation_config.split_name}): {Path(evaluation_config.output_dir) / 'label_distributions.png'}"
        )
    return run_dir


def collect_results(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Every evaluation's results.json under the run folders, in split order of each run."""
    split_order = {split: rank for rank, split in enumerate(["baseline", "mild", "moderate", "severe"])}
    results = []
    for run_dir in run_dirs:
        paths = sorted(
            Path(run_dir).glob("evaluation/*/results.json"),
            key=lambda path: (split_order.get(path.parent.name, len(split_order)), path.parent.name),
        )
        if not paths:
            raise UserError(f"{run_dir} holds no evaluation/*/results.json: run `semcal run` (or evaluate) first.")
        results.extend(files.read_json(path) | {"run_dir": str(run_dir)} for path in paths)
    return results


def write_table(run_dirs: Sequence[Path], output_stem: Path) -> str:
    """The paper-style table of the run folders' evaluations, as Markdown and CSV."""
    results = collect_results(run_dirs)
    rows = [report.results_table_row(result, dataset_label=Path(result["run_dir"]).name) for result in results]
    table = report.format_table(rows)
    files.write_text(output_stem.with_suffix(".md"), table + "\n")
    numeric = [report.results_table_row(r, dataset_label=Path(r["run_dir"]).name, numeric=True) for r in results]
    files.write_csv(output_stem.with_suffix(".csv"), pd.DataFrame(numeric))
    return table


def table_main(argv: Sequence[str]) -> int:
    """`semcal table RUN_DIR... [--output STEM]`: collect evaluations into one table."""
    parser = argparse.ArgumentParser(prog="semcal table", description=table_main.__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders written by `semcal run`")
    parser.add_argument("--output", type=Path, default=None, help="path stem of the .md and .csv written")
    args = parser.parse_args(list(argv))
    default = args.run_dirs[0] / "results_table" if len(args.run_dirs) == 1 else Path("runs") / "results_table"
    output = args.output or default
    print(write_table(args.run_dirs, output))
    print(f"\ntable: written to {output.with_suffix('.md')} and {output.with_suffix('.csv')}")
    return 0


# Small enough that the whole demo (5 models, 10 scorings, 4 evaluations) runs in minutes on 2 CPUs.
DEMO_FINETUNE_SETTINGS = {
    "n_layer": "2",
    "n_embd": "128",
    "n_head": "4",
    "vocab_size": "1024",
    "max_length": "64",
    "num_epochs": "3",
    "batch_size": "32",
}


def demo(config: DemoConfig) -> Path:
    """Generate the synthetic demo data set and run the whole pipeline on it."""
    from semcal.demo_data import generate_demo

    run_dir = Path(config.run_dir)
    source = run_dir / "source"
    if not _up_to_date(source, config):
        print(f"demo: generating {config.n_train} + {config.n_test} SYNTHETIC captions in {source}")
        files.save_dataset_dict(generate_demo(config.n_train, config.n_test, config.seed), source)
        files.write_record(source, "demo data", config_to_dict(config), synthetic=True)
    return run_pipeline(
        PipelineConfig(
            dataset_name=str(source),
            run_dir=str(run_dir),
            seed=config.seed,
            finetune_settings=dict(DEMO_FINETUNE_SETTINGS),
        )
    )
