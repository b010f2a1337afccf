"""Make the 'real' splits: label-distorted subsets of general_train at a target KL.

A real split is drawn without replacement from general_train so that its label
distribution q has KL(p_general || q) equal to a target. The paper's code shuffled a
frequency list and retried, often failing; here the search is deterministic:

- strategy `tilt` (default): q(y) is proportional to p(y) * exp(lam * r_y), with one seeded
  random score r_y per label; KL grows monotonically with lam, so lam is found by root finding
  (scipy's brentq).
- strategy `max_subset`: among distributions at the target KL, the one that keeps the
  most rows. Its optimum keeps every row of some labels and the same share w of the
  others (the Lagrange conditions force one common w), so it searches over which labels
  to thin and solves for w.

For a given q, the subset is as large as the per-label counts allow: N = min_y n_y / q_y.
The KL that is checked against the target is the one of the integer counts drawn.
The baseline split (target 0) is a uniform random subset of `baseline_fraction`.

A real split the data set already holds (the paper's Hub data sets ship theirs) is kept as
it is and reported beside the drawn ones (KL, rows, M; strategy `held`); a target naming it
is refused rather than silently replacing it. When it lacks the general_train_row column,
each of its rows is matched to a general_train row by text and label; if some rows match
none, it gets no such column and the filters that need real_train membership cannot use it.

The output folder is a distort output (semcal.store.runstate): a second run with other settings
is refused unless overwrite=true, since it would drop the real splits of the first.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semcal.core import distributed
from semcal.core.errors import UserError
from semcal.filter import calibration
from semcal.protocol.distort_plan import STRATEGIES, Infeasible, SplitPlan, label_scores, plan_split, realised_kl
from semcal.reports import report
from semcal.store import data, files, runstate
from semcal.store.runstate import StageOutput

log = logging.getLogger(__name__)


@dataclass
class DistortConfig:
    dataset_name: str = "runs/demo/data"  # input data set: a save_to_disk folder, CSV/Parquet/JSONL file(s) or a Hub id
    output_dir: str = ""  # data-set folder to write; empty = add the splits to dataset_name (a save_to_disk folder)
    label_column: str = "label"  # column holding each row's label
    text_column: str = "text"  # column holding the texts: matches a held real split's rows to general_train
    label_map: str | None = (
        None  # fine-to-coarse label map (a label_maps/ name or a JSON path) applied before distorting
    )
    split_column: str = "split"  # for a single data file: the column naming each row's split
    targets: dict[str, float] = field(
        default_factory=lambda: {"baseline": 0.0, "mild": 0.25, "moderate": 0.6, "severe": 0.8}
    )  # real splits to make: name=target KL(p_general || q); target 0 = uniform random subset
    baseline_fraction: float = 0.4  # size of a target-0 split as a share of general_train
    strategy: str = "tilt"  # tilt: towards labels of a seeded random score; max_subset: keep the most rows
    tolerance: float = 0.02  # accepted relative error of the achieved KL
    seed: int = 0  # makes the label scores and the drawn rows reproducible
    controls: bool = False  # also write control_train_<name>: uniform rows of general_train, as many as each real split
    overwrite: bool = False  # replace an earlier distort output of other settings in output_dir


def draw_rows(plan: SplitPlan, labels: np.ndarray, label_order: list[str], config: DistortConfig) -> np.ndarray:
    """general_train row indices of the split, ascending; seeded per split name."""
    rng = np.random.default_rng([config.seed, zlib.crc32(plan.name.encode())])
    if plan.target_kl == 0:
        size = int(round(config.baseline_fraction * len(labels)))
        return np.sort(rng.choice(len(labels), size=size, replace=False))
    rows = [
        rng.choice(np.flatnonzero(labels == label), size=int(count), replace=False)
        for label, count in zip(label_order, plan.counts, strict=True)
    ]
    return np.sort(np.concatenate(rows))


def _validate(config: DistortConfig) -> None:
    if config.strategy not in STRATEGIES:
        raise UserError(f"strategy must be one of {', '.join(STRATEGIES)} (got {config.strategy!r}).")
    if not 0 < config.baseline_fraction <= 1:
        raise UserError(f"baseline_fraction must be in (0, 1] (got {config.baseline_fraction}).")
    if config.tolerance <= 0:
        raise UserError(f"tolerance must be positive (got {config.tolerance}).")
    if config.seed < 0:
        raise UserError(
            f"seed must be 0 or more (got {config.seed}); numpy's random generator takes no negative seeds."
        )


def _output_dir(config: DistortConfig) -> Path:
    if config.output_dir:
        return Path(config.output_dir).expanduser()
    source = Path(config.dataset_name).expanduser()
    if source.is_dir() and (source / "dataset_dict.json").exists():
        return source
    raise UserError(
        f"{config.dataset_name} is not a save_to_disk folder, so the new splits cannot be added to it: "
        "set output_dir to the data-set folder to write."
    )


# Settings that say where things are: what dataset_name and label_map hold is fingerprinted instead.
_NOT_IDENTITY = ("dataset_name", "output_dir", "label_map", "split_column", "overwrite", "text_column")


def _inputs(config: DistortConfig, dataset_dict) -> dict[str, str]:
    """Fingerprints of the data read: every split but those this run makes, and the label map."""
    made = {data.real_split_name(name) for name in config.targets}
    inputs = {split: data.fingerprint_dataset(dataset_dict[split]) for split in dataset_dict if split not in made}
    if config.label_map:
        mapping = data.load_label_map(config.label_map)
        inputs["label_map"] = files.fingerprint_texts(f"{fine}\t{coarse}" for fine, coarse in sorted(mapping.items()))
    if any(
        data.GENERAL_ROW_COLUMN not in dataset_dict[split].column_names for split in held_splits(config, dataset_dict)
    ):
        inputs["held_rows_matched_by"] = [config.text_column, config.label_column]
    return inputs


def held_splits(config: DistortConfig, dataset_dict) -> list[str]:
    """The real splits the data set holds that no target names: kept as they are and reported."""
    made = {data.real_split_name(name) for name in config.targets}
    return sorted(split for split in dataset_dict if split.startswith(data.real_split_name("")) and split not in made)


def _refuse_replacing(config: DistortConfig, dataset_dict, in_place: bool) -> None:
    """A target naming a split the data set holds would replace it: refused, unless distort rewrites
    its own folder with overwrite=true (which replaces that folder's earlier draws by intent)."""
    held = [name for name in config.targets if data.real_split_name(name) in dataset_dict]
    if held and not (in_place and config.overwrite):
        raise UserError(
            f"the data set already holds {', '.join(data.real_split_name(name) for name in held)}: drop "
            f"{', '.join(held)} from targets to keep and report it as it is, or remove it from the data set "
            "to draw a new one."
        )
    if not config.targets and not held_splits(config, dataset_dict):
        raise UserError("targets is empty: name at least one real split, e.g. --targets=mild=0.25.")


@distributed.main_process_only
def distort(config: DistortConfig) -> Path:
    """Add real_train_<name> splits to the data set; write counts, summary and chart beside them."""
    _validate(config)
    output_dir = _output_dir(config)
    source = Path(config.dataset_name).expanduser()
    in_place = source.is_dir() and source.resolve() == output_dir.resolve()
    output = StageOutput(
        "distort",
        output_dir,
        what="distort",
        protect=True,
        keep_files=in_place,  # the source's own files stay beside the splits
        overwrite=config.overwrite,
        noun="distorted data set",
    )
    dataset_dict = data.load_dataset_dict(config.dataset_name, split_column=config.split_column)
    general = data.get_split(dataset_dict, data.GENERAL_TRAIN)
    labels = data.labels_of(general, data.GENERAL_TRAIN, config.label_column, config.label_map)
    identity = runstate.identity("distort", config, _inputs(config, dataset_dict), ignore=_NOT_IDENTITY)
    if output.up_to_date(identity):
        return output.path
    _refuse_replacing(config, dataset_dict, in_place)
    label_order = sorted(set(labels))
    general_counts = data.label_counts(labels, label_order).to_numpy()
    scores = label_scores(len(label_order), config.seed)
    plans, problems = [], []
    for name, target in config.targets.items():
        try:
            plans.append(plan_split(name, float(target), general_counts, config.strategy, config.tolerance, scores))
        except Infeasible as reason:
            problems.append(f"{data.real_split_name(name)} (target KL {target}): {reason}")
    if problems:
        raise UserError("cannot make every real split; nothing was written.\n  " + "\n  ".join(problems))

    with output.building(identity) as staging:
        counts_table, summary = _draw_splits(config, dataset_dict, labels, label_order, plans)
        counts_table, summary = _report_held(config, dataset_dict, labels, counts_table, summary)
        _write(staging, config, dataset_dict, counts_table, summary)
        made = ", ".join(
            f"{row.split} {row.rows} rows ({'held, ' if row.strategy == HELD else ''}KL {row.achieved_kl:.3f})"
            for row in summary.itertuples()
        )
        output.finish(
            config,
            summary=f"{len(summary)} real splits in {output.path}: {made}",
            label_scores=dict(zip(label_order, scores.tolist(), strict=True)),
            splits=summary.to_dict(orient="records"),
        )
    return output.path


def _draw_splits(
    config: DistortConfig, dataset_dict, labels: np.ndarray, label_order: list[str], plans: list[SplitPlan]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add each planned split to `dataset_dict`; returns the label counts and the per-split summary."""
    general = dataset_dict[data.GENERAL_TRAIN]
    general_counts = data.label_counts(labels, label_order).to_numpy()
    counts_table = pd.DataFrame({"label": label_order, "general_train_count": general_counts})
    counts_table["general_train_freq"] = general_counts / general_counts.sum()
    summary_rows = []
    for plan in plans:
        split = data.real_split_name(plan.name)
        rows = draw_rows(plan, labels, label_order, config)
        dataset_dict[split] = general.select(rows).add_column(data.GENERAL_ROW_COLUMN, rows.tolist())
        if config.controls:
            control_rows = _control_rows(len(general), len(rows), config.seed, plan.name)
            dataset_dict[data.control_split_name(plan.name)] = general.select(control_rows).add_column(
                data.GENERAL_ROW_COLUMN, control_rows.tolist()
            )
        drawn = data.label_counts(labels[rows], label_order).to_numpy()
        counts_table[f"{split}_count"] = drawn
        counts_table[f"{split}_freq"] = drawn / drawn.sum()
        summary_rows.append(
            {
                "split": split,
                "target_kl": plan.target_kl,
                "achieved_kl": realised_kl(general_counts, drawn),
                "rows": int(len(rows)),
                "M": len(general) / len(rows),
                "strategy": "uniform" if plan.target_kl == 0 else config.strategy,
                "general_train_rows": "drawn",
            }
        )
    return counts_table, pd.DataFrame(summary_rows)


HELD = "held"  # the strategy column of a split the data set held


def _report_held(
    config: DistortConfig, dataset_dict, labels: np.ndarray, counts_table: pd.DataFrame, summary: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each held real split: its general_train rows (own column or matched), its control when
    asked for, and its counts and summary row (KL over every label either split shows)."""
    general = dataset_dict[data.GENERAL_TRAIN]
    rows_of_summary = []
    for split in held_splits(config, dataset_dict):
        name = split.removeprefix(data.real_split_name(""))
        rows = _held_general_rows(config, dataset_dict, split)
        held_labels = data.labels_of(dataset_dict[split], split, config.label_column, config.label_map)
        if config.controls:
            control_rows = _control_rows(len(general), len(held_labels), config.seed, name)
            control = general.select(control_rows).add_column(data.GENERAL_ROW_COLUMN, control_rows.tolist())
            dataset_dict[data.control_split_name(name)] = control
        drawn = data.label_counts(held_labels, counts_table["label"]).to_numpy()
        counts_table[f"{split}_count"] = drawn
        counts_table[f"{split}_freq"] = drawn / drawn.sum() if drawn.sum() else drawn
        every_label = sorted(set(labels) | set(held_labels))
        p, q = (data.label_counts(values, every_label).to_numpy() for values in (labels, held_labels))
        rows_of_summary.append(
            {
                "split": split,
                "target_kl": float("nan"),
                "achieved_kl": calibration.kl_divergence(p / p.sum(), q / q.sum()),
                "rows": len(held_labels),
                "M": len(general) / len(held_labels),
                "strategy": HELD,
                "general_train_rows": rows,
            }
        )
    if rows_of_summary:
        summary = pd.concat([summary, pd.DataFrame(rows_of_summary)], ignore_index=True)
    return counts_table, summary


def _held_general_rows(config: DistortConfig, dataset_dict, split: str) -> str:
    """Give a held split its general_train_row column when it lacks one and every row matches a
    general_train row by text and label; says where its rows came from (the summary's column)."""
    general, held = dataset_dict[data.GENERAL_TRAIN], dataset_dict[split]
    if data.GENERAL_ROW_COLUMN in held.column_names:
        data.general_rows_of(held, split, len(general))  # refuses rows outside general_train
        return "own column"
    rows = data.match_general_rows(held, split, general, config.text_column, config.label_column)
    unmatched = rows < 0
    if unmatched.any():
        log.warning(
            "distort: %d of %d rows of %s match no general_train row by %s and %s (first rows %s), so it gets no "
            "%s column: real_train is then no subset of general_train, and the filters that need its membership "
            "(joint_labmom, the default, and the other label-moment filters) cannot run; add the column yourself "
            "or use a real split drawn from general_train",
            int(unmatched.sum()),
            len(rows),
            split,
            config.text_column,
            config.label_column,
            np.flatnonzero(unmatched)[:5].tolist(),
            data.GENERAL_ROW_COLUMN,
        )
        return f"{int(unmatched.sum())} unmatched: none"
    dataset_dict[split] = held.add_column(data.GENERAL_ROW_COLUMN, rows.tolist())
    return "matched by text and label"


def _control_rows(n_general: int, n_rows: int, seed: int, name: str) -> np.ndarray:
    """Uniform random general_train rows, sorted: the matched control of a real split of n_rows.

    Seeded by the distortion seed and the split's name, so each split's control is fixed.
    """
    rng = np.random.default_rng([seed, *name.encode("utf-8")])
    return np.sort(rng.choice(n_general, size=n_rows, replace=False))


def _write(folder: Path, config: DistortConfig, dataset_dict, counts_table: pd.DataFrame, summary: pd.DataFrame):
    """The data set with its new splits, the counts and summary tables and the chart, into `folder`."""
    files.save_dataset_dict(dataset_dict, folder)
    files.write_csv(folder / "distortion_counts.csv", counts_table)
    files.write_csv(folder / "distortion_summary.csv", summary)
    frequencies = counts_table.set_index("label")[[c for c in counts_table.columns if c.endswith("_freq")]]
    frequencies.columns = [c.removesuffix("_freq") for c in frequencies.columns]
    figure = report.plot_label_distributions(
        frequencies,
        f"Label distributions of general_train and the real splits ({config.label_column})",
        "general_train",
    )
    files.save_figure(figure, folder / "label_distributions")
    for line in summary.to_string(index=False, float_format=lambda value: f"{value:.4f}").splitlines():
        log.debug("distort: %s", line)
