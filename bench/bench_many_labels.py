"""The default filter's source on a data set with hundreds of labels: AudioCaps by top_label.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_many_labels.py [--label_column=top_label]

general: the 16,634 AudioCaps train captions, labelled by `--label_column` (top_label: 276
values); real: a marked subset drawn per label with probability w(y) / max w (at least 0.02),
w from a Dirichlet(0.5) (seed 0); 20% of the rows held out; the test captions as the stream.
Prints the labels, the posterior columns the joint source kept and the wall time of
`Filter.fit("joint", "labmom", ...)`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from semcal.filter.filtering import Filter
from semcal.filter.fit_data import FitData, Items

AUDIOCAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "audiocaps_labeled" / "audiocaps_labeled.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label_column", default="top_label")
    args = parser.parse_args()
    captions = pd.read_csv(AUDIOCAPS)
    train, test = captions[captions.split == "train"], captions[captions.split == "test"]
    labels = sorted(set(train[args.label_column]))
    codes = np.array([labels.index(value) for value in train[args.label_column]])
    rng = np.random.default_rng(0)
    weight = rng.dirichlet(np.full(len(labels), 0.5))
    is_real = rng.random(len(codes)) < np.clip(weight[codes] / weight.max(), 0.02, 1.0)
    heldout = rng.random(len(codes)) < 0.2
    data = FitData(
        train.caption.tolist(),
        is_real,
        heldout,
        Items(test.caption.tolist()),
        m=len(codes) / is_real.sum(),
        labels=labels,
        label_codes=codes,
    )
    started = time.perf_counter()
    fitted = Filter.fit("joint", "labmom", data)
    print(
        f"{len(labels)} labels, {int(is_real.sum())} real rows of {len(codes)}: joint_labmom fitted in "
        f"{time.perf_counter() - started:.0f} s with {len(fitted.source.posterior.classes)} posterior columns"
    )


if __name__ == "__main__":
    main()
