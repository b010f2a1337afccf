"""The `semcal` command: each pipeline stage as a subcommand taking `--name=value` settings.

    semcal distort --dataset_name=data.csv --label_column=top_category
    semcal STAGE --help        lists the stage's settings, their defaults and meaning
    semcal STAGE --verbose     also shows the libraries' own logging and progress bars
    semcal STAGE --threads=N   threads of the numeric libraries (default: the cores this process may use)

Each stage maps to a top-level script that runs the same code with the same settings.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from semcal.core import console, threads
from semcal.core.config import apply_overrides, settings_help, thread_limit
from semcal.core.errors import UserError

# subcommand: (module, stage function, config class, the script that runs the same stage)
STAGES: dict[str, tuple[str, str, str, str]] = {
    "distort": ("semcal.protocol.distort", "distort", "DistortConfig", "distort.py"),
    "caption-images": ("semcal.captioning.captioning", "caption_images", "ImageCaptionConfig", "florence_captioning.py"),
    "caption-audio": ("semcal.captioning.captioning", "caption_audio", "AudioCaptionConfig", "qwen_audio_captioning.py"),
    "finetune": ("semcal.lm.finetune", "finetune", "FinetuneConfig", "finetune_gpt2.py"),
    "score": ("semcal.lm.scoring", "score_split", "ScoreConfig", "token_sequence_probs.py"),
    "evaluate": ("semcal.protocol.evaluation", "evaluate", "EvaluationConfig", "semantic_calibration_evaluation.py"),
    "fit": ("semcal.fit.fit", "fit", "FitConfig", "fit_filter.py"),
    "filter": ("semcal.stream.filter_stream", "filter_texts", "FilterConfig", "filter.py"),
    "run": ("semcal.protocol.pipeline", "run_pipeline", "PipelineConfig", ""),
    "demo": ("semcal.protocol.pipeline", "demo", "DemoConfig", ""),
}

# Commands that take positional arguments rather than a stage config: (module, function).
COMMANDS: dict[str, tuple[str, str]] = {
    "labelmap": ("semcal.store.labelmap", "main"),
    "table": ("semcal.protocol.pipeline", "table_main"),
    "animate": ("semcal.protocol.animate", "main"),
    "explain": ("semcal.protocol.explain", "main"),
}


def usage() -> str:
    lines = [
        "usage: semcal COMMAND [--name=value ...] [--verbose] [--threads=N]",
        "",
        "stages (same settings as the script named):",
    ]
    for name, (_, _, _, script) in STAGES.items():
        lines.append(f"  {name:<16}{script}")
    lines.append("")
    lines.append("other commands:")
    for name in COMMANDS:
        lines.append(f"  {name}")
    lines.append("")
    lines.append("`semcal COMMAND --help` lists a command's settings.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]
    console.setup(verbose)
    thread_setting, argv = threads.split_option(argv)
    if not argv:
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    stages, commands = STAGES, COMMANDS
    try:
        with threads.limited(thread_limit(thread_setting)):  # before any numeric library loads
            return _dispatch(command, rest, stages, commands)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(command: str, rest: list[str], stages: dict, commands: dict) -> int:
    if command in commands:
        module, function = commands[command]
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    if command not in stages:
        print(f"error: unknown command {command!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function, config_name, _ = stages[command]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    if any(a in ("-h", "--help") for a in rest):
        notes = getattr(module, "HELP_NOTES", "")  # what the settings alone do not say (a stage's output)
        text = f"usage: semcal {command} [--name=value ...]\n\nsettings:\n{settings_help(config_cls)}"
        print(f"{text}\n\n{notes}" if notes else text)
        return 0
    getattr(module, function)(apply_overrides(config_cls(), rest))
    return 0
