"""`semcal fit` with labels on AG News: the pass rate from the label distributions, and the
default's source (joint) against tfidf.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_fit_labels.py

Trusted: the AG News test texts, each kept with probability 0.1 / 0.8 / 0.4 / 0.1 by label
(seed 0); stream: the 8,000 train texts; label column label_name in both. Per source, one
`semcal fit` (fresh output under --root): the pass rate it chose, KL(accepted‖trusted) of
the held-out stream's labels before and after, the two-sample AUC and the wall time.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from semcal.core import console
from semcal.fit.fit import FitConfig, fit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news"
KEEP = {1: 0.1, 2: 0.8, 3: 0.4, 4: 0.1}  # per label: the chance a test text is trusted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/bench_fit_labels")
    parser.add_argument("--sources", default="tfidf,joint")
    args = parser.parse_args()
    console.setup(False)
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    news = pd.read_csv(SHARED / "test.csv")
    keep = np.random.default_rng(0).random(len(news)) < news["label"].map(KEEP).to_numpy()
    news[keep][["text", "label_name"]].to_csv(root / "real.csv", index=False)
    print(
        "| source | filter | pass rate (from) | KL before → after | deception reduction | two-sample AUC before → after | s |"
    )
    print("|---|---|---|---|---|---|---|")
    for source in args.sources.split(","):
        started = time.perf_counter()
        config = FitConfig(
            real=str(root / "real.csv"),
            general=str(SHARED / "train_8k.csv"),
            label_column="label_name",
            source=source,
            output=str(root / source),
        )
        results = fit(config)
        labels = results["labels"]
        print(
            f"| {source} | {results['filter']} | {results['pass_rate_target']:.3f} ({results['pass_rate_from']}) "
            f"| {labels['kl_before']:.3f} → {labels['kl_after']:.3f} | {labels['deception_reduction']:.3f} "
            f"| {results['two_sample_auc_before']:.3f} → {results['two_sample_auc_after']:.3f} "
            f"| {time.perf_counter() - started:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
