"""Where everything of a run lives: one object for every path inside a run folder.

`semcal run` writes, and `table`, `explain` and `animate` read, this layout:

    RUN_DIR/source/                            (semcal demo) the synthetic data set it runs on
    RUN_DIR/data/                              the data set with its real_train_<split> splits
    RUN_DIR/models/general/, real_<split>/, control_<split>/, tokenizer/
    RUN_DIR/scores/<scored>.<model>/token_log_probs.csv   scored: general_test or heldout
    RUN_DIR/evaluation/<split>/                results.json, summary.md, per_text.csv, figure,
                                               filter/, explain.html, stream.gif
    RUN_DIR/results_table.md, .csv             the paper-style table

Only the names live here; making the folders is each stage's business (semcal.store.runstate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The files of one evaluation folder (the evaluation stage writes them wherever its output_dir is).
RESULTS_NAME = "results.json"
PER_TEXT_NAME = "per_text.csv"
FIGURE_STEM = "label_distributions"
# Kept equal to semcal.filter.filtering.FOLDER_NAME, which this module does not import: reading a
# layout should not load the filter code (numpy, scikit-learn) that `animate` never needs.
FILTER_FOLDER = "filter"
PAGE_NAME = "explain.html"
STREAM_NAME = "stream.gif"
SCORES_NAME = "token_log_probs.csv"
# What a score folder's first part names: general_test rows, or the held-out general_train rows.
SCORED = ("general_test", "heldout")
GENERAL_MODEL = "general"
SPLIT_ORDER = ("baseline", "mild", "moderate", "severe")  # the paper's splits, in the order tables list them


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder; nothing is created or checked on construction."""

    run_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))  # a str is welcome too

    @classmethod
    def of_evaluation(cls, evaluation_dir: str | Path) -> RunLayout:
        """The run an evaluation folder RUN_DIR/evaluation/<split> belongs to."""
        return cls(Path(evaluation_dir).parent.parent)

    # ---- data and models ----

    @property
    def demo_source(self) -> Path:
        """The synthetic data set `semcal demo` writes before running on it."""
        return self.run_dir / "source"

    @property
    def data(self) -> Path:
        return self.run_dir / "data"

    @property
    def models(self) -> Path:
        return self.run_dir / "models"

    @property
    def tokenizer(self) -> Path:
        return self.models / "tokenizer"

    def model(self, name: str) -> Path:
        """A model folder by its name: general, real_<split> or control_<split>."""
        return self.models / name

    @property
    def general_model(self) -> Path:
        return self.model(GENERAL_MODEL)

    def real_model(self, split: str) -> Path:
        return self.model(real_model_name(split))

    def control_model(self, split: str) -> Path:
        return self.model(control_model_name(split))

    # ---- scores ----

    @property
    def scores(self) -> Path:
        return self.run_dir / "scores"

    def score_dir(self, scored: str, model_name: str) -> Path:
        """The score stage's output folder of `model_name`'s scores of `scored` (one of SCORED)."""
        if scored not in SCORED:
            raise ValueError(f"scored must be one of {SCORED}, not {scored!r}")
        return self.scores / f"{scored}.{model_name}"

    def score_file(self, scored: str, model_name: str) -> Path:
        return self.score_dir(scored, model_name) / SCORES_NAME

    def score_file_named(self, folder_name: str) -> Path:
        """The score file in scores/<folder_name>/ (a results.json names its score folders by path)."""
        return self.scores / folder_name / SCORES_NAME

    # ---- evaluations and what is made from them ----

    @property
    def evaluation(self) -> Path:
        return self.run_dir / "evaluation"

    def evaluation_dir(self, split: str) -> Path:
        return self.evaluation / split

    def results(self, split: str) -> Path:
        return self.evaluation_dir(split) / RESULTS_NAME

    def per_text(self, split: str) -> Path:
        return self.evaluation_dir(split) / PER_TEXT_NAME

    def figure(self, split: str) -> Path:
        return self.evaluation_dir(split) / f"{FIGURE_STEM}.png"

    def filter_dir(self, split: str) -> Path:
        return self.evaluation_dir(split) / FILTER_FOLDER

    def explain_page(self, split: str) -> Path:
        return self.evaluation_dir(split) / PAGE_NAME

    def stream_gif(self, split: str) -> Path:
        return self.evaluation_dir(split) / STREAM_NAME

    def evaluated_splits(self) -> list[str]:
        """The splits with a results.json, the paper's splits first in their order, then by name."""
        if not self.evaluation.is_dir():
            return []
        found = [path.parent.name for path in self.evaluation.glob(f"*/{RESULTS_NAME}")]
        rank = {split: number for number, split in enumerate(SPLIT_ORDER)}
        return sorted(found, key=lambda split: (rank.get(split, len(rank)), split))

    def split_folders(self) -> list[str]:
        """Every folder under evaluation/, finished or not (to list what --split may name)."""
        if not self.evaluation.is_dir():
            return []
        return sorted(path.name for path in self.evaluation.iterdir() if path.is_dir())

    @property
    def results_table(self) -> Path:
        """The table's path stem: results_table.md and results_table.csv."""
        return self.run_dir / "results_table"


def real_model_name(split: str) -> str:
    return f"real_{split}"


def control_model_name(split: str) -> str:
    return f"control_{split}"
