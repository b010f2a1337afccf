"""What a filter is fitted on, and the items it scores.

A filter estimates r(x) = p_real(x) / p_general(x) from two corpora and calibrates it on
rows it did not train on. Both ways of getting the corpora give one `FitData`:

- the research protocol (semcal evaluate): the real split is drawn from general_train and
  its rows are marked (`form="subset"`): the rows are general_train's, `is_real` marks the
  members, and P(member | x) = r(x) / M exactly;
- two corpora of a user (semcal fit), or a real split that is not a marked subset
  (`form="pooled"`): the rows are the general (stream) rows followed by the real rows,
  and P(real | x) / P(general | x) = r(x) * n_real / n_general.

Rows are split into training rows (the sources fit on them) and held-out rows (the
calibrations fit on them). With `sources_train_only` (semcal fit and the evaluation) no
source sees a held-out row, so the held-out log-ratios a calibration is fitted on are
out-of-sample: the cross-fitted sources (joint, the label posterior) fit on the training
rows only and score the held-out rows as they score new items. `stream` holds the items whose pass rate is normalised to 1/M:
general_test in the evaluation, the held-out general rows in semcal fit.

`Items` are texts to score, with what was precomputed for them (the language models'
per-token differences read from score files): a source reads what it needs, and computes
the rest (loads its models) only when it is missing. `Scored` is what a filter says of items.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

FORMS = ("subset", "pooled")


@dataclass
class Items:
    """Texts to score. `tokens` / `diffs`: per text, the scored tokens and log p_real - log
    p_general (None: the source computes them); `control_diffs`: log p_real - log p_control."""

    texts: list[str]
    tokens: list[list[str]] | None = None
    diffs: list[np.ndarray] | None = None
    control_diffs: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: np.ndarray) -> Items:
        """The items at `rows` (indices or a boolean mask), with what was precomputed for them."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)

        def pick(values):
            return None if values is None else [values[i] for i in rows]

        return Items(pick(self.texts), pick(self.tokens), pick(self.diffs), pick(self.control_diffs))


@dataclass
class Scored:
    """Per text: the score s(x), the acceptance, and the tokens (or n-grams) that pushed the score
    up and down most, e.g. "'dog' +1.230; 'barks' +0.410"."""

    scores: np.ndarray
    accept: np.ndarray
    tokens_up: list[str]
    tokens_down: list[str]


@dataclass
class FitData:
    """The rows a filter is fitted on (see the module docstring). Per-row arrays follow `texts`."""

    texts: list[str]
    is_real: np.ndarray  # bool per row: a member of the real corpus
    heldout: np.ndarray  # bool per row: held out for the calibration (the sources train on the rest)
    stream: Items  # the unlabeled items whose pass rate is 1/M
    m: float
    form: str = "subset"
    labels: list[str] | None = None  # label names; label_codes index them
    label_codes: np.ndarray | None = None  # per row (None: no labels)
    heldout_items: Items | None = None  # the held-out rows as Items, with their precomputed scores if any
    models: dict[str, Any] | None = None  # the language models' records (semcal.filter.sources.model_records)
    embedding_model: str | None = None  # a sentence-encoder folder (the embedding source)
    top_p: float = 0.75  # the clipped score's share of the total |difference|
    seed: int = 0
    sources_train_only: bool = False  # no source fits on a held-out row (see the module docstring)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # fitted sources, shared by filters

    @classmethod
    def pooled(
        cls,
        general: list[str],
        real: list[str],
        heldout: tuple[np.ndarray, np.ndarray],
        label_codes: tuple[np.ndarray, np.ndarray] | None = None,
        **options: Any,
    ) -> FitData:
        """Two corpora as one: the general rows, then the real rows. `heldout` and `label_codes`
        give each corpus's own (general's, real's); `options` the other fields."""
        is_real = np.concatenate([np.zeros(len(general), dtype=bool), np.ones(len(real), dtype=bool)])
        codes = None if label_codes is None else np.concatenate(label_codes)
        return cls(
            list(general) + list(real), is_real, np.concatenate(heldout), form="pooled", label_codes=codes, **options
        )

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS} (got {self.form!r})")
        self.is_real = np.asarray(self.is_real, dtype=bool)
        self.heldout = np.asarray(self.heldout, dtype=bool)
        if self.heldout_items is None:
            self.heldout_items = Items([self.texts[i] for i in self.heldout_rows])

    # ---- rows ---------------------------------------------------------------------------------

    @property
    def in_general(self) -> np.ndarray:
        """Rows of the general corpus: every row of a subset, the non-real rows of a pooled corpus."""
        return np.ones(len(self.texts), dtype=bool) if self.form == "subset" else ~self.is_real

    @property
    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.heldout)

    @property
    def heldout_rows(self) -> np.ndarray:
        return np.flatnonzero(self.heldout)

    @property
    def heldout_is_real(self) -> np.ndarray:
        return self.is_real[self.heldout]

    @property
    def heldout_in_general(self) -> np.ndarray:
        """Which held-out rows are general rows: the ones a calibration weights by acceptance."""
        return self.in_general[self.heldout]

    @property
    def prior(self) -> float:
        """The real rows' share of the training rows (a classifier's class prior)."""
        return float(self.is_real[self.train_rows].mean())

    def texts_of(self, rows: np.ndarray) -> list[str]:
        return [self.texts[i] for i in rows]

    def training_part(self) -> FitData:
        """The training rows alone (none held out): what a source with sources_train_only fits on."""
        return self.keep_rows(~self.heldout)

    def keep_rows(self, keep: np.ndarray) -> FitData:
        """These rows only (a boolean mask), with their precomputed held-out scores, the same stream,
        and no cached sources."""
        rows = np.flatnonzero(keep)
        kept_heldout = np.asarray(keep, dtype=bool)[self.heldout]
        return replace(
            self,
            texts=self.texts_of(rows),
            is_real=self.is_real[rows],
            heldout=self.heldout[rows],
            label_codes=None if self.label_codes is None else self.label_codes[rows],
            heldout_items=self.heldout_items.select(kept_heldout),
            cache={},
        )

    # ---- what is there ------------------------------------------------------------------------

    def has(self, need: str) -> bool:
        """Whether an input a source or calibration needs is there (filters.NEEDS_HELP says what gives it)."""
        heldout_items, stream = self.heldout_items, self.stream
        if need == "lm":
            return stream.diffs is not None
        if need == "heldout":
            return heldout_items.diffs is not None and len(heldout_items.diffs) > 0
        if need == "membership":
            return _both(self.heldout_is_real)
        if need == "heldout_rows":
            return _both(self.heldout_is_real) and _both(self.is_real[self.train_rows])
        if need == "control":
            return stream.control_diffs is not None and heldout_items.control_diffs is not None
        if need == "embedding":
            return self.embedding_model is not None
        if need == "labels":
            return self.label_codes is not None and len(np.unique(self.label_codes[self.in_general])) >= 2
        raise ValueError(f"unknown need {need!r}")


def _both(is_real: np.ndarray) -> bool:
    return bool(is_real.any()) and not bool(is_real.all())


def text_position(texts: list[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per text from the text itself and the seed: equal texts get equal numbers,
    so a text found in both corpora is held out (or put in a fold) on both sides at once."""
    key = str(seed).encode()
    digests = [
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest() for text in texts
    ]
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.float64) / 2.0**64
