"""The language models of a filter fitted from two corpora (`semcal fit --source=clipped|sum`):
trained and scored the way the pipeline does, in a folder beside the filter.

    OUTPUT.models/data/                 the two corpora as one data set: general_train (the stream
                                        sample) and real_train_fit (the trusted corpus, its own rows)
    OUTPUT.models/models/general/       fine-tuned on the stream sample
    OUTPUT.models/models/real/          fine-tuned on the trusted corpus, from the same base (not from the
                                        general model: the trusted texts may be stream texts it trained on)
    OUTPUT.models/scores/<split>.<model>/   the held-out rows of each corpus under each model

Each is a stage output of its own (semcal.store.runstate): finished ones are skipped when run again,
an interrupted fine-tuning resumes. The filter folder names the models relative to itself, so
the two folders move together. Held-out rows are the fit's (chosen by text, written as each
split's `heldout` column): no model trained on the rows the calibration is fitted on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from semcal.core.config import apply_settings
from semcal.core.errors import UserError
from semcal.filter.fit_data import Items
from semcal.store import files, score_files
from semcal.store.data import GENERAL_TRAIN, HELDOUT_COLUMN

log = logging.getLogger(__name__)

REAL_SPLIT = "real_train_fit"
ROLES = ("general", "real")


def models_folder(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.name}.models")


def train_and_score(
    config: Any, general: list[str], real: list[str], heldout: np.ndarray
) -> tuple[Items, dict[str, Any]]:
    """Fine-tune the general and the real model, score the held-out rows of both corpora with both;
    returns the held-out rows (general's, then real's, each in row order) with their per-token
    differences log p_real - log p_general, and the models' records (filters.model records).
    `heldout`: per row of general then real, held out (the fit's choice by text): each split
    carries it as its `heldout` column, which fine-tuning and scoring read."""
    import datasets

    from semcal.lm.finetune import FinetuneConfig, finetune
    from semcal.lm.scoring import ScoreConfig, score_split
    from semcal.protocol.evaluation_inputs import join_scores, model_records

    work = models_folder(config.output)
    data_dir = work / "data"
    splits = {GENERAL_TRAIN: general, REAL_SPLIT: real}
    held = {GENERAL_TRAIN: heldout[: len(general)], REAL_SPLIT: heldout[len(general) :]}
    files.save_dataset_dict(
        datasets.DatasetDict(
            {
                name: datasets.Dataset.from_dict({"text": list(texts), HELDOUT_COLUMN: held[name].tolist()})
                for name, texts in splits.items()
            }
        ),
        data_dir,
    )
    held_out = {"eval_fraction": config.heldout_fraction, "split_seed": config.seed}
    model_dirs = {role: work / "models" / role for role in ROLES}
    for role, split in zip(ROLES, splits, strict=True):
        settings = FinetuneConfig(
            dataset_name=str(data_dir),
            split_name=split,
            base_model=config.base_model,
            output_dir=str(model_dirs[role]),
            tokenizer_dir=str(work / "models" / "tokenizer"),
            seed=config.seed,
            **held_out,
        )
        finetune(apply_settings(settings, config.finetune_settings, "finetune_settings"))
    scores: dict[tuple[str, str], str] = {}
    for split in splits:
        for role in ROLES:
            score_config = ScoreConfig(
                dataset_name=str(data_dir),
                split_name=split,
                model=str(model_dirs[role]),
                heldout_only=True,
                output_dir=str(work / "scores" / f"{split}.{role}"),
                **held_out,
            )
            scores[split, role] = str(score_split(score_config))
    diffs: list[np.ndarray] = []
    tokens: list[list[str]] = []
    texts: list[str] = []
    for split, corpus in splits.items():
        general_scores, real_scores = (score_files.read_token_log_probs(scores[split, role]) for role in ROLES)
        ids, split_diffs, split_tokens, _ = join_scores(general_scores, real_scores, len(corpus), split)
        broken = [int(i) for i, d in zip(ids, split_diffs, strict=True) if not np.isfinite(d).all()]
        if broken:
            raise UserError(
                f"the language models give a NaN or infinite log-prob for {len(broken)} held-out {split} texts (first "
                f"rows {broken[:5]}): the fine-tuning diverged; fit again with other finetune_settings."
            )
        texts += [corpus[i] for i in ids]
        diffs += split_diffs
        tokens += split_tokens
    records = SimpleNamespace(
        general_scores_csv=scores[GENERAL_TRAIN, "general"],
        real_scores_csv=scores[GENERAL_TRAIN, "real"],
        control_scores_csv=None,
    )
    return Items(texts, tokens, diffs), model_records(records)
