"""`semcal filter`'s settings and the checks both engines (this process, Ray) make of them:
apart from either engine, so both import them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from semcal.core.config import below_minimum
from semcal.core.errors import UserError
from semcal.filter import decisions

ENGINES = ("local", "ray")


@dataclass
class FilterConfig:
    filter: str = "runs/demo/evaluation/mild/filter"  # a saved filter: RUN_DIR/evaluation/<split>/filter
    input: str = "-"  # CSV / JSONL / Parquet file, a text file (one text a line), a media folder, or - (stdin)
    output: str = "-"  # a .csv or .jsonl file (an existing one is replaced when the run succeeds), or - (standard output, JSON lines)
    text_column: str = "text"  # the field holding each item's text (CSV, JSONL, Parquet)
    id_column: str | None = None  # the field holding each item's id; none: its row or line number (from 1)
    input_format: str | None = None  # csv / jsonl / parquet / text; none: by extension (standard input: jsonl)
    encoding: str = "utf-8"  # the text encoding of the input (CSV, JSONL, text, standard input), e.g. latin-1
    stream: bool = False  # read JSON lines from standard input as they come; write each batch at once
    batch_size: int = 32  # streaming: texts scored together (1: a decision per line as it arrives); files: 16384
    seed: int = 0  # seed of the decisions' draws: the same seed and id (or text) give the same decision
    decision: str = "sample"  # sample (seeded draw below accept_prob), threshold (accept_prob >= tau) or top
    rate: float | None = None  # threshold / top: the share of the stream to pass; none: the filter's 1/M
    max_false_rejection: float | None = None  # threshold: tau rejects at most this share of held-out real rows
    window: int = decisions.DEFAULT_WINDOW  # top: items ranked together (decisions come once a window is full)
    top_tokens: int = 3  # per item, how many tokens pushing the score up and down to list (0: none)
    captions_from: str | None = None  # input a media folder: the captioning output (RUN/captions/<name>) to caption as
    adapt: str = "none"  # follow a drifting stream: none, rate (pass rate), prior (label prior, EM), refit
    alarm: str = "none"  # drift alarms: none, auto, prior (label prior's KL) or mean_log_ratio
    adapt_settings: dict[str, str] = field(default_factory=dict)  # window=500,update_every=25,trusted=PATH,...
    engine: str = (
        "local"  # local (this process) or ray: Parquet / JSONL partitions on a Ray cluster (semcal.stream.filter_ray)
    )
    ray_address: str | None = None  # engine=ray: an existing cluster (e.g. ray://head:10001); none: a local one
    workers: int = 2  # engine=ray: filter actors, each loading the filter once


def check_not_input(config: FilterConfig) -> None:
    """An output that is the input would replace the texts by the decisions: refused before any work."""
    from semcal.store import files  # pandas with it: not at import, so `semcal filter --help` stays light

    if config.output != "-" and config.input != "-" and files.same_path(config.output, config.input):
        raise UserError(
            f"output={config.output} is the input file itself: writing the decisions there would destroy the "
            "input; choose another output file."
        )


def check_common(config: FilterConfig) -> None:
    """The settings both engines read."""
    problems = below_minimum(config, {"batch_size": 1, "top_tokens": 0, "seed": 0, "window": 1, "workers": 1})
    if problems:
        raise UserError("; ".join(problems) + ".")
    if config.engine not in ENGINES:
        raise UserError(f"engine={config.engine!r} is not one of {', '.join(ENGINES)}.")
    decisions.check_settings(config.decision, config.rate, config.max_false_rejection)
    if not str(config.filter).strip():
        raise UserError(
            "filter is empty: set it to a saved filter folder (semcal fit --output, or RUN/evaluation/<split>/filter)."
        )
