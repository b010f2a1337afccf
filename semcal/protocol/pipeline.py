"""The whole pipeline in order, the results table, and the demo.

`semcal run` runs distort, fine-tunes the general model and one real model per split,
scores general_test (and the held-out general_train texts) with each, and evaluates each
split, all inside one run folder whose paths semcal.protocol.layout.RunLayout names (data/, models/,
scores/, evaluation/<split>/, results_table.md/.csv).

A stage whose output already carries a record of the same settings is skipped, so a
crashed or extended run continues without redoing work. Settings of the stages that the
pipeline does not set itself pass through as `finetune_settings=name=value,...` (and
`score_settings`, `evaluation_settings`), typed by the stage's own config.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from semcal.core import console, distributed
from semcal.core.config import apply_settings, config_to_dict, to_arguments
from semcal.core.errors import UserError
from semcal.filter import filters
from semcal.lm.finetune import FinetuneConfig, finetune
from semcal.lm.scoring import ScoreConfig, score_split
from semcal.protocol.distort import DistortConfig, distort
from semcal.protocol.evaluation import EvaluationConfig, evaluate
from semcal.protocol.evaluation_inputs import SCORE_FILES
from semcal.protocol.layout import FIGURE_STEM, GENERAL_MODEL, RunLayout, control_model_name, real_model_name
from semcal.reports import report
from semcal.reports import results as result_file
from semcal.reports.results import EvaluationResults
from semcal.store import data, files, runstate
from semcal.store.runstate import StageOutput

log = logging.getLogger(__name__)


CONTROLS = ("none", "matched")


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
    control: str = "none"  # matched: also a control model per split, on uniform general_train rows as many as real's
    seed: int = 0  # training seed of every model (the distortion and the evaluation keep their own seeds)
    distort_settings: dict[str, str] = field(default_factory=dict)  # other distort settings, name=value
    finetune_settings: dict[str, str] = field(default_factory=dict)  # other finetune settings, name=value
    score_settings: dict[str, str] = field(default_factory=dict)  # other score settings, name=value
    evaluation_settings: dict[str, str] = field(default_factory=dict)  # other evaluation settings, name=value
    overwrite: bool = False  # replace finished data and models of this run made with other settings
    nproc_per_node: int = 1  # processes (GPUs) on this machine: >1 relaunches the run under torchrun


@dataclass
class DemoConfig:
    run_dir: str = "runs/demo"  # where the synthetic data set and every output go
    n_train: int = 3000  # synthetic general_train captions
    n_test: int = 1000  # synthetic general_test captions
    seed: int = 0  # seed of the synthetic data and of training
    nproc_per_node: int = 1  # processes (GPUs) on this machine: >1 relaunches the demo under torchrun


@dataclass
class HeldSplit:
    """A real split the data set already holds: kept as it is, never distorted."""

    name: str  # the split's name in the run, e.g. custom for real_train_custom
    rows: int
    unmatched: int  # rows without a general_train row: no general_train_row column, no membership


def held_real_splits(config: PipelineConfig) -> dict[str, HeldSplit]:
    """The run's splits whose real_train_<split> the data set already holds, and whether each row is
    known in general_train (distort's column, or a match by text and label that distort repeats)."""
    dataset_dict = data.load_dataset_dict(config.dataset_name, split_column=config.split_column)
    held = {}
    for name in config.splits:
        split = dataset_dict.get(data.real_split_name(name))
        if split is None:
            continue
        unmatched = 0
        if data.GENERAL_ROW_COLUMN not in split.column_names:
            general = data.get_split(dataset_dict, data.GENERAL_TRAIN)
            rows = data.match_general_rows(
                split, data.real_split_name(name), general, config.text_column, config.label_column
            )
            unmatched = int((rows < 0).sum())
        held[name] = HeldSplit(name, len(split), unmatched)
    return held


def _stage_configs(config: PipelineConfig, held: dict[str, HeldSplit]) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """Every stage's config for this run, built before any work so a bad setting costs nothing."""
    unknown = [split for split in config.splits if split not in config.targets and split not in held]
    if not config.splits or unknown:
        raise UserError(
            f"splits {unknown or '(none)'} have no target KL: give each split a target, e.g. "
            f"--targets=mild=0.25,severe=0.8 (targets now: {config.targets}), or a real_train_<split> in the data set."
        )
    if config.control not in CONTROLS:
        raise UserError(f"control={config.control!r} is not one of {', '.join(CONTROLS)}.")
    evaluation_configs = _evaluation_configs(config)
    if not any(needs_language_models(c) for c in evaluation_configs):
        return _distort_config(config, held), [], [], [_without_scores(c) for c in evaluation_configs]
    finetune_configs = _finetune_configs(config)
    return (
        _distort_config(config, held),
        finetune_configs,
        _score_configs(config, finetune_configs),
        evaluation_configs,
    )


def needs_language_models(evaluation_config: EvaluationConfig) -> bool:
    """Whether an evaluation reads language-model scores, so the run must fine-tune and score.

    The one place this is decided: THE filter reads them when its source does
    (semcal.filter.filters.needs_language_models), and the candidates include filters that do.
    """
    return evaluation_config.candidates or filters.needs_language_models(evaluation_config.filter)


def _without_scores(evaluation_config: EvaluationConfig) -> EvaluationConfig:
    """The evaluation of a run that trains no language models: it reads texts and labels only."""
    return replace(evaluation_config, **dict.fromkeys(SCORE_FILES))


def _distort_config(config: PipelineConfig, held: dict[str, HeldSplit]) -> DistortConfig:
    """Distort draws every split the data set does not hold; it keeps and reports the held ones."""
    return apply_settings(
        DistortConfig(
            dataset_name=config.dataset_name,
            output_dir=str(RunLayout(config.run_dir).data),
            label_column=config.label_column,
            text_column=config.text_column,
            label_map=config.label_map,
            split_column=config.split_column,
            targets={split: config.targets[split] for split in config.splits if split not in held},
            strategy=config.distort_strategy,
            controls=config.control == "matched",
            overwrite=config.overwrite,
        ),
        config.distort_settings,
        "distort_settings",
    )


def _finetune_configs(config: PipelineConfig) -> list[FinetuneConfig]:
    """The general model first, then one real model per split (started from the general one by default),
    and with control=matched one control model per split, trained the same way on its control split."""
    layout = RunLayout(config.run_dir)
    general_dir = str(layout.general_model)
    targets = [(data.GENERAL_TRAIN, general_dir)]
    targets += [(data.real_split_name(split), str(layout.real_model(split))) for split in config.splits]
    if config.control == "matched":
        targets += [(data.control_split_name(split), str(layout.control_model(split))) for split in config.splits]
    return [
        apply_settings(
            FinetuneConfig(
                dataset_name=str(layout.data),
                split_name=split_name,
                text_column=config.text_column,
                base_model=config.base_model,
                init_from=general_dir if split_name != data.GENERAL_TRAIN and config.init_real_from_general else None,
                output_dir=model_dir,
                tokenizer_dir=str(layout.tokenizer),
                seed=config.seed,
                overwrite=config.overwrite,
            ),
            config.finetune_settings,
            "finetune_settings",
        )
        for split_name, model_dir in targets
    ]


def _score_configs(config: PipelineConfig, finetune_configs: list[FinetuneConfig]) -> list[ScoreConfig]:
    """Each model scores general_test and the held-out general_train rows."""
    layout = RunLayout(config.run_dir)
    return [
        apply_settings(
            ScoreConfig(
                dataset_name=str(layout.data),
                split_name=split_name,
                text_column=config.text_column,
                model=model.output_dir,
                output_dir=str(layout.score_dir(scored, Path(model.output_dir).name)),
                heldout_only=scored == "heldout",
                overwrite=config.overwrite,
            ),
            config.score_settings,
            "score_settings",
        )
        for model in finetune_configs
        for scored, split_name in (("general_test", data.GENERAL_TEST), ("heldout", data.GENERAL_TRAIN))
    ]


def _evaluation_configs(config: PipelineConfig) -> list[EvaluationConfig]:
    layout = RunLayout(config.run_dir)

    def scores(scored: str, model_name: str) -> str:
        return str(layout.score_file(scored, model_name))

    return [
        apply_settings(
            EvaluationConfig(
                dataset_name=str(layout.data),
                distortion=split,
                text_column=config.text_column,
                label_column=config.label_column,
                label_map=config.label_map,
                general_scores_csv=scores("general_test", GENERAL_MODEL),
                real_scores_csv=scores("general_test", real_model_name(split)),
                general_heldout_csv=scores("heldout", GENERAL_MODEL),
                real_heldout_csv=scores("heldout", real_model_name(split)),
                **(
                    {
                        "control_scores_csv": scores("general_test", control_model_name(split)),
                        "control_heldout_csv": scores("heldout", control_model_name(split)),
                    }
                    if config.control == "matched"
                    else {}
                ),
                output_dir=str(layout.evaluation_dir(split)),
                overwrite=config.overwrite,
            ),
            config.evaluation_settings,
            "evaluation_settings",
        )
        for split in config.splits
    ]


def run_pipeline(config: PipelineConfig) -> Path:
    """Run every stage in order inside run_dir; each stage skips itself when its output is up to date.

    Under a launcher (or with nproc_per_node > 1, which starts one) every process runs this:
    fine-tuning and scoring share their work, the other stages run on the main process.
    """
    held = held_real_splits(config)
    distort_config, finetune_configs, score_configs, evaluation_configs = _stage_configs(config, held)
    run_dir = Path(config.run_dir)
    runstate.check_writable(run_dir)
    if _relaunched("run", config):
        return run_dir
    for split in held.values():
        log.info(
            "run: the data set holds %s (%d rows): it is used as it is, not distorted (no target needed)",
            data.real_split_name(split.name),
            split.rows,
        )
    if not finetune_configs:
        log.info(
            "run: filter=%s with candidates=false reads no language-model scores: no model is fine-tuned or scored",
            evaluation_configs[0].filter,
        )
    # Each stage is looked up by its module-level name when called, so a test can replace one.
    steps: list[tuple[Callable[[Any], Any], Any]] = [(lambda c: distort(c), distort_config)]
    steps += [(lambda c: finetune(c), c) for c in finetune_configs]
    steps += [(lambda c: score_split(c), c) for c in score_configs]
    steps += [(lambda c: evaluate(c), c) for c in evaluation_configs]
    started = time.perf_counter()
    with runstate.hold_lock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        if distributed.is_main():
            files.write_record(run_dir, "run", config_to_dict(config))
        for number, (stage, stage_config) in enumerate(steps, 1):
            with console.stage_prefix(f"[{number}/{len(steps)}] "):
                stage(stage_config)
        table = write_table([run_dir], RunLayout(run_dir).results_table)
    figures = ", ".join(str(Path(c.output_dir) / f"{FIGURE_STEM}.png") for c in evaluation_configs)
    log.info(
        "\n%s\nrun: finished in %.0fs; results in %s; figures: %s",
        table,
        time.perf_counter() - started,
        run_dir,
        figures,
    )
    return run_dir


def _relaunched(command: str, config: Any) -> bool:
    """nproc_per_node > 1 in a single process: run `semcal COMMAND` again under torchrun, one
    process per GPU (or CPU processes over gloo); True once that finished."""
    if config.nproc_per_node < 1:
        raise UserError(f"nproc_per_node must be at least 1 (got {config.nproc_per_node}).")
    if config.nproc_per_node == 1 or distributed.world_size() > 1:
        return False
    arguments = ["-m", "semcal", command, *to_arguments(config)]
    if console.is_verbose():
        arguments.append("--verbose")
    log.info("%s: starting %d processes (torchrun %s)", command, config.nproc_per_node, " ".join(arguments))
    returncode = distributed.launch(config.nproc_per_node, arguments)
    if returncode:
        raise UserError(
            f"the {config.nproc_per_node} processes of `semcal {command}` failed (exit code {returncode}); their "
            "messages are above. Finished stages are kept: run the same command again to continue."
        )
    return True


def collect_results(run_dirs: Sequence[Path]) -> list[tuple[str, EvaluationResults]]:
    """Every evaluation's results.json under the run folders, in split order of each run, with the
    name of its run folder."""
    results = []
    for run_dir in run_dirs:
        layout = RunLayout(run_dir)
        splits = layout.evaluated_splits()
        if not splits:
            raise UserError(
                f"{run_dir} holds no {layout.results('*').relative_to(run_dir)}: run `semcal run` (or evaluate) first."
            )
        results.extend((Path(run_dir).name, result_file.read(layout.results(split))) for split in splits)
    return results


@distributed.main_process_only
def write_table(run_dirs: Sequence[Path], output_stem: Path) -> str:
    """The paper-style table of the run folders' evaluations, as Markdown and CSV."""
    collected = collect_results(run_dirs)
    labels, results = [label for label, _ in collected], [result for _, result in collected]
    rows = [
        report.results_table_row(result, dataset_label=label) for result, label in zip(results, labels, strict=True)
    ]
    table = report.format_table(rows)
    warnings = report.table_warnings(results, labels)
    if warnings:  # beside the numbers they qualify, in the file and on the screen
        table += "\nWarnings:\n\n" + "".join(f"- {warning}\n" for warning in warnings)
    files.write_text(output_stem.with_suffix(".md"), table + "\n")
    numeric = [
        report.results_table_row(result, dataset_label=label, numeric=True)
        for result, label in zip(results, labels, strict=True)
    ]
    files.write_csv(output_stem.with_suffix(".csv"), pd.DataFrame(numeric))
    return table


def table_main(argv: Sequence[str]) -> int:
    """`semcal table RUN_DIR... [--output STEM]`: collect evaluations into one table."""
    parser = argparse.ArgumentParser(prog="semcal table", description=table_main.__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders written by `semcal run`")
    parser.add_argument("--output", type=Path, default=None, help="path stem of the .md and .csv written")
    args = parser.parse_args(list(argv))
    default = RunLayout(args.run_dirs[0] if len(args.run_dirs) == 1 else Path("runs")).results_table
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
    from semcal.protocol.demo_data import generate_demo

    run_dir = Path(config.run_dir)
    layout = RunLayout(run_dir)
    if _relaunched("demo", config):
        return run_dir

    @distributed.main_process_only
    def write_source() -> Path:
        source = StageOutput("demo data", layout.demo_source, what="demo data")
        identity = runstate.identity("demo data", config, inputs={}, ignore=("run_dir", "nproc_per_node"))
        if not source.up_to_date(identity):
            with source.building(identity) as staging:
                generate_demo(config.n_train, config.n_test, config.seed).save_to_disk(str(staging))
                source.finish(config, summary=f"{config.n_train} + {config.n_test} SYNTHETIC captions", synthetic=True)
        return source.path

    write_source()
    return run_pipeline(
        PipelineConfig(
            dataset_name=str(layout.demo_source),
            run_dir=str(run_dir),
            seed=config.seed,
            finetune_settings=dict(DEMO_FINETUNE_SETTINGS),
        )
    )
