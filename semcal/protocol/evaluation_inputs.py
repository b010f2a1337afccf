"""The evaluation's inputs, read and checked: labels and texts of the data set's splits, and
the two models' per-token log-probs of general_test (and of held-out general_train texts,
and optionally a matched control model's of both) joined into per-token differences; the
held-out general_train rows (those the held-out score files list, else data.heldout_mask's
with the stages' defaults) with their labels and real_train membership.

Surprises are not silent: rows a score file lacks, texts with a NaN or infinite log-prob
(left out of the evaluation), and real_train labels that general_train lacks each become a
warning in results.json and summary.md and one log line. Problems no evaluation can
survive (duplicate or foreign text ids, different tokens in the two files, every text
broken) are UserErrors.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal.core.errors import UserError
from semcal.filter import calibration
from semcal.filter.fit_data import FitData, Items
from semcal.lm.scoring import DEFAULT_EVAL_FRACTION, DEFAULT_SPLIT_SEED, check_same_tokens
from semcal.protocol.evaluation_config import EvaluationConfig
from semcal.store import files, score_files
from semcal.store.data import (
    GENERAL_TEST,
    GENERAL_TRAIN,
    general_rows_of,
    get_split,
    heldout_mask,
    labels_of,
    load_dataset_dict,
    real_split_name,
    texts_of,
)

log = logging.getLogger(__name__)

SCORE_FILES = (
    "general_scores_csv",
    "real_scores_csv",
    "general_heldout_csv",
    "real_heldout_csv",
    "control_scores_csv",
    "control_heldout_csv",
)


@dataclass
class EvaluationInputs:
    """What the evaluation reads. Per-text arrays follow the evaluated general_test texts (sorted
    by text_id); label codes index `labels`; `real` and `general` are real_train's and
    general_train's label distributions. Held-out rows: the general_train rows the held-out
    score files list, else data.heldout_mask's. General_test labels (`test_codes`) are for the
    oracle and the measurement only: `fit_data` gives the filters everything else."""

    labels: list[str]
    text_ids: np.ndarray
    test_codes: np.ndarray
    test_texts: list[str]
    tokens: list[list[str]] | None  # None without score files
    diffs: list[np.ndarray] | None  # per token: log p_real - log p_general
    real: np.ndarray
    general: np.ndarray
    m: float
    general_train_texts: list[str]
    real_train_texts: list[str]
    real_general_rows: np.ndarray | None = None  # the general_train row of each real_train row (distort's column)
    heldout_ids: np.ndarray | None = None  # held-out general_train rows
    heldout_diffs: list[np.ndarray] | None = None  # None without held-out score files
    general_train_codes: np.ndarray | None = None  # label code of every general_train row
    real_train_codes: np.ndarray | None = None
    control_diffs: list[np.ndarray] | None = None  # per token: log p_real - log p_control (matched control)
    control_heldout_diffs: list[np.ndarray] | None = None  # the same for the held-out rows


def fit_data(inputs: EvaluationInputs, config: EvaluationConfig) -> FitData:
    """The filters' view of the evaluation: general_train's rows with their real membership
    (a marked subset), or general_train followed by the real split (pooled) when the real split
    does not say which general_train rows it holds; general_test as the stream."""
    n_general = len(inputs.general_train_texts)
    stream = Items(list(inputs.test_texts), inputs.tokens, inputs.diffs, inputs.control_diffs)
    heldout = np.zeros(n_general, dtype=bool)
    heldout[inputs.heldout_ids] = True
    heldout_items = Items(
        [inputs.general_train_texts[i] for i in inputs.heldout_ids],
        diffs=inputs.heldout_diffs,
        control_diffs=inputs.control_heldout_diffs,
    )
    common = {
        "stream": stream,
        "m": inputs.m,
        "labels": inputs.labels,
        "models": model_records(config),
        "embedding_model": config.embedding_model,
        "top_p": config.top_p,
        "seed": config.seed,
        "sources_train_only": True,
    }
    if inputs.real_general_rows is not None:
        is_real = np.isin(np.arange(n_general), inputs.real_general_rows)
        return FitData(
            inputs.general_train_texts,
            is_real,
            heldout,
            form="subset",
            label_codes=inputs.general_train_codes,
            heldout_items=heldout_items,
            **common,
        )
    n_real = len(inputs.real_train_texts)
    real_heldout = heldout_mask(np.arange(n_real), n_real, DEFAULT_EVAL_FRACTION, DEFAULT_SPLIT_SEED)
    held_real = [text for text, held in zip(inputs.real_train_texts, real_heldout, strict=True) if held]
    return FitData.pooled(
        inputs.general_train_texts,
        inputs.real_train_texts,
        (heldout, real_heldout),
        (inputs.general_train_codes, inputs.real_train_codes),
        heldout_items=Items(heldout_items.texts + held_real),  # the real rows have no scores: no LM diffs
        **common,
    )


def model_records(config: EvaluationConfig) -> dict[str, Any]:
    """The models the score files were made with (their records), by role: what a saved
    language-model filter needs to compute the same scores of new texts."""
    score_files = {"general": config.general_scores_csv, "real": config.real_scores_csv}
    score_files["control"] = config.control_scores_csv
    models = {}
    for role, scores in score_files.items():
        record = files.read_record(Path(scores).parent) if scores else None
        if not record or "model" not in record.get("config", {}):
            continue
        models[role] = {
            "path": record["config"]["model"],
            "gguf_file": record["config"].get("gguf_file"),
            "weights_fingerprint": record.get("weights_fingerprint"),
            "tokenizer_fingerprint": record.get("tokenizer_fingerprint"),
            "framing": record.get("framing"),
            "max_length": record.get("max_length"),
        }
    return models


def load_inputs(config: EvaluationConfig) -> tuple[EvaluationInputs, dict[str, Any]]:
    """Read the data set and the score files, join and check them. Returns the filters' inputs
    and the facts results.json reports (join, counts, warnings, fingerprints)."""
    real_split = real_split_name(config.distortion)
    dataset = load_dataset_dict(config.dataset_name)
    splits = {split: _read_split(dataset, split, config) for split in (GENERAL_TRAIN, GENERAL_TEST, real_split)}
    (train_texts, train_labels), (test_texts, test_labels), (real_texts, real_labels) = splits.values()
    real_rows = general_rows_of(get_split(dataset, real_split), real_split, len(train_texts))
    warnings: list[str] = []
    if has_language_model_scores(config):
        test = _joined(config, ("general_scores_csv", "real_scores_csv"), GENERAL_TEST, len(test_texts), warnings)
    else:
        test = _unscored(len(test_texts))
    heldout = None
    if config.general_heldout_csv and config.real_heldout_csv:
        heldout = _joined(
            config, ("general_heldout_csv", "real_heldout_csv"), GENERAL_TRAIN, len(train_texts), warnings
        )
    heldout_ids = heldout["ids"] if heldout else _default_heldout_rows(len(train_texts))
    control = _control(config, test["ids"], heldout_ids if heldout else None, (len(test_texts), len(train_texts)))
    labels = sorted(set(train_labels) | set(test_labels) | set(real_labels))
    code_of = {label: code for code, label in enumerate(labels)}
    warnings += _labels_general_train_lacks(real_labels, train_labels, real_split)
    for warning in warnings:
        log.warning("%s", warning)
    inputs = EvaluationInputs(
        labels=labels,
        text_ids=test["ids"],
        test_codes=np.array([code_of[label] for label in test_labels[test["ids"]]], dtype=np.int64),
        test_texts=[test_texts[i] for i in test["ids"]],
        tokens=test["tokens"],
        diffs=test["diffs"],
        real=calibration.label_distribution([code_of[y] for y in real_labels], len(labels)),
        general=calibration.label_distribution([code_of[y] for y in train_labels], len(labels)),
        m=calibration.ratio_m(len(train_texts), len(real_texts)),
        general_train_texts=train_texts,
        real_train_texts=real_texts,
        real_general_rows=real_rows,
        heldout_ids=heldout_ids,
        heldout_diffs=None if heldout is None else heldout["diffs"],
        general_train_codes=np.array([code_of[label] for label in train_labels], dtype=np.int64),
        real_train_codes=np.array([code_of[label] for label in real_labels], dtype=np.int64),
        control_diffs=control[0],
        control_heldout_diffs=control[1],
    )
    counts = {"general_train": len(train_texts), "general_test": len(test_texts), "real_train": len(real_texts)}
    counts |= {"evaluated": len(test["ids"]), "heldout": 0 if heldout is None else len(heldout["ids"])}
    facts = {
        "join": {
            **({"general_test": test["join"]} if test["join"] else {}),
            **({"heldout": heldout["join"]} if heldout else {}),
        },
        "excluded_nonfinite": {"general_test": test["nonfinite"], "heldout": heldout["nonfinite"] if heldout else 0},
        "counts": counts,
        "general_test_distribution": calibration.label_distribution([code_of[y] for y in test_labels], len(labels)),
        "warnings": warnings,
        **_fingerprints(config, splits, real_rows),
    }
    return inputs, facts


def has_language_model_scores(config: EvaluationConfig) -> bool:
    """Whether the evaluation reads the two language models' scores of general_test (else only texts and labels)."""
    return bool(config.general_scores_csv and config.real_scores_csv)


def _unscored(n_rows: int) -> dict[str, Any]:
    """Without score files every general_test row is evaluated, in order, with no tokens to explain:
    filters that read no language-model scores (TF-IDF, n-grams, ...) need nothing else."""
    return {"ids": np.arange(n_rows, dtype=np.int64), "diffs": None, "tokens": None, "join": None, "nonfinite": 0}


def _default_heldout_rows(n_general_train: int) -> np.ndarray:
    """Without held-out score files: the rows every model of the data set holds out by default."""
    rows = np.arange(n_general_train)
    return rows[heldout_mask(rows, n_general_train, DEFAULT_EVAL_FRACTION, DEFAULT_SPLIT_SEED)]


def _control(config: EvaluationConfig, test_ids: np.ndarray, heldout_ids: np.ndarray | None, n_rows: tuple[int, int]):
    """Per token log p_real - log p_control of the evaluated texts and of the held-out rows
    (None, None without control files). The control files must cover every one of them."""
    if not (config.control_scores_csv and config.control_heldout_csv) or heldout_ids is None:
        return None, None
    pairs = (("control_scores_csv", "real_scores_csv"), ("control_heldout_csv", "real_heldout_csv"))
    splits = (GENERAL_TEST, GENERAL_TRAIN)
    return tuple(
        _control_diffs(config, names, split, n, ids)
        for names, split, n, ids in zip(pairs, splits, n_rows, (test_ids, heldout_ids), strict=True)
    )


def _control_diffs(config: EvaluationConfig, names: tuple[str, str], split: str, n_rows: int, ids: np.ndarray):
    joined = _joined(config, names, split, n_rows, warnings=[])  # the real file's gaps are reported already
    where = {int(text_id): row for row, text_id in enumerate(joined["ids"])}
    lacking = [int(text_id) for text_id in ids if int(text_id) not in where]
    if lacking:
        raise UserError(
            f"{names[0]} lacks {len(lacking)} of the {len(ids)} {split} texts the evaluation uses (first ids "
            f"{lacking[:5]}, or their log-probs are not finite): score the same texts with the control model."
        )
    return [joined["diffs"][where[int(text_id)]] for text_id in ids]


def _read_split(dataset: Any, split: str, config: EvaluationConfig) -> tuple[list[str], np.ndarray]:
    part = get_split(dataset, split)
    return texts_of(part, split, config.text_column), labels_of(part, split, config.label_column, config.label_map)


def _joined(config: EvaluationConfig, names: tuple[str, str], split: str, n_rows: int, warnings: list[str]):
    """Both models' scores of the texts of `split` (general_test: all its rows; general_train: the
    held-out rows), joined. Rows lacking from either file and texts with a non-finite log-prob
    are reported in `warnings` and left out."""
    general, real = (_read_scores(getattr(config, name), name) for name in names)
    ids, diffs, tokens, join = join_scores(general, real, n_rows, split)
    if split == GENERAL_TEST:
        expected, which = np.arange(n_rows), f"{split} rows"
    else:  # which rows are held out is the models' choice: each file should have the other's
        expected, which = np.union1d(general["text_id"], real["text_id"]), "held-out rows the two files list"
    for name, table in zip(names, (general, real), strict=True):
        lacking = np.setdiff1d(expected, table["text_id"])
        if lacking.size:
            warnings.append(
                f"{name} lacks {lacking.size} of {expected.size} {which} (first ids {lacking[:5].tolist()})"
            )
    finite = np.array([np.isfinite(d).all() for d in diffs], dtype=bool)
    if not finite.any():
        raise UserError(
            f"every text of {split} joined from {names[0]} and {names[1]} has a NaN or infinite log-prob: the scores "
            "are broken (a diverged model?). Re-run token_sequence_probs with working models."
        )
    if not finite.all():
        warnings.append(
            f"{int((~finite).sum())} of {finite.size} {split} texts have a NaN or infinite log-prob in {names[0]} or "
            f"{names[1]} (first ids {ids[~finite][:5].tolist()}); they are left out of the evaluation"
        )
    keep = np.flatnonzero(finite)
    return {
        "ids": ids[keep],
        "diffs": [diffs[i] for i in keep],
        "tokens": [tokens[i] for i in keep],
        "join": join,
        "nonfinite": int((~finite).sum()),
    }


def _read_scores(path: str, name: str) -> pd.DataFrame:
    try:
        return score_files.read_token_log_probs(path)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"{name}: {err}") from None


def join_scores(
    general: pd.DataFrame, real: pd.DataFrame, n_rows: int, split: str
) -> tuple[np.ndarray, list[np.ndarray], list[list[str]], dict[str, int]]:
    """Join the general and real model's per-token tables on text_id.

    Returns the joined text ids (sorted), per-text differences d = log p_real - log p_general,
    the tokens, and a report of how many rows each side lost. Refuses duplicate ids, ids that
    are not rows of `split` (0..n_rows-1), and rows whose token sequences differ
    (scoring.check_same_tokens).
    """
    for side, table in (("general", general), ("real", real)):
        duplicated = table["text_id"][table["text_id"].duplicated()]
        if len(duplicated):
            raise UserError(
                f"the {side} model's scores of {split} list text_id {int(duplicated.iloc[0])} more than once "
                f"({len(duplicated)} duplicates): was the file written twice into? Re-run token_sequence_probs."
            )
        outside = table["text_id"][(table["text_id"] < 0) | (table["text_id"] >= n_rows)]
        if len(outside):
            raise UserError(
                f"the {side} model's scores hold text_id {int(outside.iloc[0])}, but {split} has rows 0..{n_rows - 1}: "
                "the scores belong to another split or data set."
            )
    try:
        check_same_tokens(general, real)
    except UserError as err:  # name the split: "text_id 5" -> "text_id 5 of general_test"
        named = re.sub(r"^text_id (\d+)", rf"text_id \1 of {split}", str(err), count=1)
        raise UserError(named if named != str(err) else f"{split}: {err}") from None
    merged = general.merge(real, on="text_id", how="inner", suffixes=("_general", "_real")).sort_values("text_id")
    diffs = [
        calibration.token_differences(real_lp, general_lp)
        for real_lp, general_lp in zip(merged["log_probs_real"], merged["log_probs_general"], strict=True)
    ]
    report_ = {
        "general_rows": len(general),
        "real_rows": len(real),
        "joined_rows": len(merged),
        "general_lost": len(general) - len(merged),
        "real_lost": len(real) - len(merged),
        "split_rows_not_scored": n_rows - len(merged),
    }
    return merged["text_id"].to_numpy(dtype=np.int64), diffs, list(merged["tokens_general"]), report_


def _labels_general_train_lacks(real_labels: np.ndarray, train_labels: np.ndarray, real_split: str) -> list[str]:
    counts = pd.Series(real_labels).value_counts()
    absent = sorted(set(counts.index) - set(train_labels))
    if not absent:
        return []
    named = ", ".join(f"{label!r} ({counts[label]} texts)" for label in absent[:10])
    return [
        f"{real_split} has labels that general_train lacks: {named}. A real set should be drawn from general_train's "
        "distribution; the oracle accepts no text of these labels, so no filter can reach real_train's distribution"
    ]


def _fingerprints(config: EvaluationConfig, splits: dict[str, Any], real_rows: np.ndarray | None) -> dict[str, Any]:
    """What was read: each score file's hash and path (results.json) and the hashes alone (identity)."""
    score_files = {name: getattr(config, name) for name in SCORE_FILES if getattr(config, name)}
    hashes = {name: files.fingerprint_file(path) for name, path in score_files.items()}
    data = {
        split: files.fingerprint_texts(f"{text}\t{label}" for text, label in zip(texts, labels, strict=True))
        for split, (texts, labels) in splits.items()
    }
    data["real_general_rows"] = None if real_rows is None else files.fingerprint_texts(map(str, real_rows))
    if config.embedding_model:
        data["embedding_model"] = _folder_fingerprint(Path(config.embedding_model))
    return {
        "inputs": {name: {"path": score_files[name], "sha256_16": sha} for name, sha in hashes.items()} | data,
        "fingerprints": {name: hashes.get(name) for name in SCORE_FILES} | data,
    }


def _folder_fingerprint(folder: Path) -> str:
    """A hash of every file of a model folder (its names and contents)."""
    paths = sorted(path for path in folder.rglob("*") if path.is_file())
    return files.fingerprint_texts(f"{path.relative_to(folder)}\t{files.fingerprint_file(path)}" for path in paths)
