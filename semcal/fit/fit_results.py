"""What `semcal fit` found (fit_results.json of semcal.fit.fit), typed: fit_report and fit_check read
these attributes, never the file's keys. `write` and `read` are the only way to the file (semcal.store.schema)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcal.reports.results import PerItemBlock
from semcal.store import schema

SCHEMA_VERSION = 1
STAGE = "fit"
FIX = "re-run `semcal fit` with the same settings"
NAME = "fit_results.json"


@dataclass
class FitCounts:
    real: int
    general: int
    real_heldout: int
    general_heldout: int


@dataclass
class LabelDistributions:
    """Label distributions of the held-out rows: trusted, stream, accepted stream (expected)."""

    real: dict[str, float]
    stream: dict[str, float]
    accepted: dict[str, float]


@dataclass
class LabelCheck:
    distributions: LabelDistributions
    kl_before: float
    kl_after: float
    deception_reduction: float
    kl_epsilon: float


@dataclass
class TrustedShare:
    estimate: float
    interval: list[float]  # [low, high]
    level: float
    method: str


@dataclass
class FitResults:
    stage: str
    filter: str
    config: dict[str, Any]  # the fit's settings
    counts: FitCounts
    M: float
    pass_rate_target: float
    pass_rate_heldout_stream: float
    effective_sample_share: float
    two_sample_auc_before: float
    two_sample_auc_after: float
    calibration: dict[str, Any]  # the filter's link
    stats: dict[str, Any]  # the filter's fit statistics
    per_item: PerItemBlock
    pass_rate_from: str
    trusted_share: TrustedShare
    overlap_share: float
    advice: list[str]
    figures: list[str]
    labels: LabelCheck | None = None  # with labels only
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """As fit_results.json holds it (NaN null, ±inf "inf" / "-inf")."""
        return schema.to_dict(self)


def from_dict(data: Any, where: str = "fit results") -> FitResults:
    return schema.from_dict(FitResults, data, where, FIX)


def write(path: str | Path, results: FitResults) -> Path:
    return schema.write(path, results)


def read(path: str | Path) -> FitResults:
    """fit_results.json, checked: a fit's, of this schema version, every field there."""
    return schema.read(path, FitResults, STAGE, SCHEMA_VERSION, FIX)
