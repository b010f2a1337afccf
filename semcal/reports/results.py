"""An evaluation's results (results.json of semcal.protocol.evaluation), typed: every reader (report,
explain, animate, item_report, pipeline) reads these attributes, never the file's keys.

`write` and `read` are the only way to the file; NaN and infinities are handled once (semcal.store.schema).
A results.json of another schema version is refused with how to regenerate it. The per-item
block (PerItemBlock) is shared with fit_results.json (semcal.fit.fit_results).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcal.store import schema

SCHEMA_VERSION = 1
STAGE = "evaluate"
FIX = "re-run `semcal evaluate` (or `semcal run` on its run folder)"


@dataclass
class ReliabilityBin:
    rows: int
    mean_forecast: float
    observed: float  # share of real-split members among the bin's rows


@dataclass
class ItemMetrics:
    """Per-item metrics of one forecast of membership (semcal.protocol.item_metrics)."""

    rows: int
    members: int
    brier: float
    log_loss: float
    roc_auc: float
    mcc: float
    mcc_threshold: float
    ece: float
    sn34: float
    mean_forecast: float
    reliability: list[ReliabilityBin]
    forecast: float | None = None  # the constant reference's forecast


@dataclass
class PerItemBlock:
    """Each filter's acceptance of held-out rows as a forecast of membership (semcal.protocol.item_evaluation)."""

    rows: str
    filters: dict[str, ItemMetrics]
    note: str | None = None  # why there are no metrics
    form: str | None = None
    conversion: str | None = None
    heldout_used_by_calibrations: bool | None = None
    reference: ItemMetrics | None = None
    skipped: dict[str, str] | None = None  # filter -> why it has no metrics


@dataclass
class ModeResult:
    """One decision mode of one filter on the evaluated texts."""

    pass_rate: float
    kl: float
    deception_reduction: float | None
    kl_expected: float | None = None  # sample: the KL of the expected filtered distribution
    expected_deception_reduction: float | None = None  # sample
    tau: float | None = None  # threshold


@dataclass
class DecisionModes:
    sample: ModeResult
    threshold: ModeResult
    top: ModeResult


@dataclass
class DecisionsBlock:
    """Each decision mode's deception reduction beside sampling (semcal.protocol.item_evaluation.decision_modes)."""

    rate: float
    window: int
    texts: str
    note: str
    filters: dict[str, DecisionModes]


@dataclass
class FilterResult:
    """One measured filter: Monte Carlo statistics, expected figures, score statistics; what differs
    by filter (its link, its calibration's fit, estimator parameters) in `stats`."""

    kl_mean: float
    kl_std: float
    kl_infinite_runs: int
    tvd_mean: float
    tvd_std: float
    pass_rate_mean: float
    pass_rate_std: float
    empty_runs: int
    n_runs: int
    accept_prob_mean: float
    expected_kl: float
    expected_tvd: float
    expected_distribution: dict[str, float]
    mean_distribution: dict[str, float]
    kl_ratio: float
    deception_reduction: float | None  # None: not applicable (KL(general||real) about 0 or infinite)
    infinite_kl_labels: list[str]
    filter_name: str | None = None  # THE filter's block (`semcal`) names it
    kind: str | None = None
    log_ratio: str | None = None  # the source, for a fitted filter
    score_mean: float | None = None
    score_std: float | None = None
    test_log_mean_exp: float | None = None  # 0 when exp(score) averages 1 on the test texts
    stats: dict[str, Any] = schema.merged()


@dataclass
class Counts:
    general_train: int
    general_test: int
    real_train: int
    evaluated: int
    heldout: int


@dataclass
class Excluded:
    """Texts left out for a NaN or infinite log-prob."""

    general_test: int
    heldout: int


@dataclass
class Join:
    """How many rows of a pair of score files met in the join."""

    general_rows: int
    real_rows: int
    joined_rows: int
    general_lost: int
    real_lost: int
    split_rows_not_scored: int


@dataclass
class Joins:
    """The joins of the score files read: of general_test's, and of the held-out texts' when read."""

    general_test: Join | None = None
    heldout: Join | None = None


@dataclass
class InputFile:
    path: str
    sha256_16: str


@dataclass
class Distributions:
    real_train: dict[str, float]
    general_train: dict[str, float]
    general_test: dict[str, float]
    evaluated: dict[str, float]


@dataclass
class MonteCarlo:
    n_runs: int
    seed: int
    std: str
    common_random_numbers: str
    pass_rate_unit: str


@dataclass
class Outputs:
    results: str
    summary: str
    per_text: str
    figures: list[str]
    reliability: list[str]


@dataclass
class EvaluationResults:
    stage: str
    dataset_name: str
    distortion: str
    real_split: str
    label_column: str
    filter_name: str
    paper_filter: str
    config: dict[str, Any]  # the evaluation's settings
    join: Joins
    excluded_nonfinite: Excluded
    counts: Counts
    warnings: list[str]
    inputs: dict[str, InputFile | str | None]  # score files (path and hash), data fingerprints
    M: float
    ideal_pass_rate: float
    labels: list[str]
    distributions: Distributions
    kl_general: float
    tvd_general: float
    kl_general_is_zero: bool
    kl_note: str
    filters: dict[str, FilterResult]  # `semcal` is THE filter, then references and calibrated filters
    variants: dict[str, FilterResult]
    monte_carlo: MonteCarlo
    real_rows: str  # subset: marked rows of general_train; pooled: a corpus of its own
    per_item: PerItemBlock
    decisions: DecisionsBlock
    outputs: Outputs | None = None  # set when written
    elapsed_s: float | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def chosen(self) -> FilterResult:
        """THE filter's block."""
        return self.filters["semcal"]

    def to_dict(self) -> dict[str, Any]:
        """As results.json holds it (NaN null, ±inf "inf" / "-inf")."""
        return schema.to_dict(self)


def from_dict(data: Any, where: str = "results") -> EvaluationResults:
    """Results from results.json's form (or the same dict built in memory)."""
    return schema.from_dict(EvaluationResults, data, where, FIX)


def write(path: str | Path, results: EvaluationResults) -> Path:
    return schema.write(path, results)


def read(path: str | Path) -> EvaluationResults:
    """results.json, checked: an evaluation's, of this schema version, every field there."""
    return schema.read(path, EvaluationResults, STAGE, SCHEMA_VERSION, FIX)
