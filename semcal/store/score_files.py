"""The per-token log-prob CSV (token_sequence_probs.py's output, and the paper's): its columns
and its checked reader. The scoring stage writes it through semcal.store.files' chunked writer."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal.core.errors import UserError
from semcal.store.files import read_csv

TOKEN_LOG_PROB_COLUMNS = ["text_id", "total_log_prob", "avg_log_prob", "word_probabilities"]


def read_token_log_probs(path: str | Path) -> pd.DataFrame:
    """Read a per-token log-prob CSV (token_sequence_probs.py output, or the paper's).

    `word_probabilities` holds (token, log_prob) pairs, as JSON (ours) or as a Python
    literal (the paper's files), parsed with `ast.literal_eval`, never `eval`. Returns
    text_id, total_log_prob, avg_log_prob, tokens (list of str), log_probs (float array).
    A cell of another form is a UserError naming the file and row.
    """


    table = read_csv(path, keep_default_na=False)
    missing = [c for c in TOKEN_LOG_PROB_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(
            f"{path} lacks columns {missing} (has {list(table.columns)}); is it a token_sequence_probs output?"
        )
    tokens, log_probs = [], []
    for row_number, cell in enumerate(table["word_probabilities"]):
        pairs = _token_pairs(cell)
        if pairs is None:
            raise UserError(
                f"{path}, row {row_number + 1} (text_id {table['text_id'].iloc[row_number]}): word_probabilities is "
                f'not of the form [[token, log_prob], ...], e.g. [["a", -2.1], ["dog", -5.3]] (got '
                f"{str(cell)[:60]!r}). Re-run token_sequence_probs for this file."
            )
        tokens.append([str(token) for token, _ in pairs])
        log_probs.append(np.asarray([log_prob for _, log_prob in pairs], dtype=np.float64))
    return pd.DataFrame(
        {
            "text_id": table["text_id"].astype(int),
            "total_log_prob": table["total_log_prob"].astype(float),
            "avg_log_prob": table["avg_log_prob"].astype(float),
            "tokens": tokens,
            "log_probs": log_probs,
        }
    )


def _token_pairs(cell: Any) -> list[tuple[Any, float]] | None:
    """The (token, log_prob) pairs of one word_probabilities cell; None when it is not of that form."""

    try:
        pairs = json.loads(cell)
    except (json.JSONDecodeError, RecursionError, TypeError):
        try:
            pairs = ast.literal_eval(cell)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        return None
    try:
        return [(token, float(log_prob)) for token, log_prob in pairs]
    except (TypeError, ValueError):  # a log_prob that is not a number
        return None
