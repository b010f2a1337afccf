"""The same work as `semcal filter` with a tfidf filter, in plain pandas + scikit-learn: the bar
that bench_filter.py --scale compares semcal against (issue 27).

Reads the CSV, TF-IDF transform (the filter's vocabulary and idf), linear score, the filter's
calibration link and acceptance min(1, exp(s) / M), a seeded uniform draw, and writes a CSV of
id, acceptance and decision. Only a tfidf filter with a linear link (semcal fit's default
without labels) is read; nothing of semcal is imported.

    python bench/plain_sklearn_filter.py FILTER_DIR INPUT.csv TEXT_COLUMN OUTPUT.csv
"""

from __future__ import annotations

import json
import sys
import time

started = time.perf_counter()

import numpy as np  # noqa: E402  (imports are part of the timed work)
import pandas as pd  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from scipy.special import expit  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402


def main(folder: str, source: str, text_column: str, output: str) -> None:
    spec = json.load(open(f"{folder}/filter.json"))
    state, link = spec["source_state"], spec["calibration"]
    if spec["source"] != "tfidf" or link["link"] != "linear":
        raise SystemExit("plain_sklearn_filter.py reads a tfidf filter with a linear link (semcal fit without labels)")
    arrays = load_file(f"{folder}/{state['arrays']}")
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, vocabulary=json.load(open(f"{folder}/{state['vocabulary']}"))
    )
    vectorizer.idf_ = arrays["idf"]
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    p_real = np.clip(
        expit(vectorizer.transform(table[text_column]) @ arrays["coef"] + arrays["intercept"][0]), 1e-12, 1 - 1e-12
    )
    prior = state["prior"]
    if state["form"] == "subset":
        log_ratio = np.log(p_real) - np.log(prior)
    else:
        log_ratio = np.log(p_real) - np.log1p(-p_real) + np.log((1 - prior) / prior)
    score = link["temperature"] * log_ratio + link["shift"]
    accept = np.exp(np.minimum(0.0, score - np.log(spec["m"])))
    decision = np.random.default_rng(0).random(len(accept)) < accept
    pd.DataFrame({"id": np.arange(1, len(accept) + 1), "accept_prob": accept, "decision": decision}).to_csv(
        output, index=False
    )
    print(f"plain sklearn: {len(accept)} items in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main(*sys.argv[1:5])
