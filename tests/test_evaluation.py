import dataclasses
import json
import math

import datasets
import numpy as np
import pandas as pd
import pytest

from semcal import calibration, files, report
from semcal.cli import main
from semcal.config import UserError
from semcal.evaluation import EvaluationConfig, evaluate

LABELS = ["car", "cat", "dog"]
GENERAL_SHARES = [0.2, 0.5, 0.3]
FILLER = "loud quiet near far small big sound noise outside inside morning night water street".split()


def _texts(labels, rng):
    return [f"a {label} " + " ".join(rng.choice(FILLER, size=rng.integers(3, 8))) for label in labels]


def _build_dataset(folder):
    """general_train / general_test and real splits that are subsets of general_train, as distort makes them."""
    rng = np.random.default_rng(0)
    train_labels = rng.choice(LABELS, size=900, p=GENERAL_SHARES)
    test_labels = rng.choice(LABELS, size=300, p=GENERAL_SHARES)
    train_texts, test_texts = _texts(train_labels, rng), _texts(test_labels, rng)
    keep_share = {"car": 0.9, "cat": 0.1, "dog": 0.4}

    def subset(rows):
        rows = np.sort(rows)
        return datasets.Dataset.from_dict(
            {
                "text": [train_texts[i] for i in rows],
                "label": [str(train_labels[i]) for i in rows],
                "general_train_row": rows.tolist(),
            }
        )

    mild = np.flatnonzero(rng.random(900) < np.array([keep_share[y] for y in train_labels]))
    baseline = rng.choice(900, size=360, replace=False)
    no_car = np.flatnonzero((train_labels != "car") & (rng.random(900) < 0.5))
    splits = {
        "general_train": datasets.Dataset.from_dict({"text": train_texts, "label": list(map(str, train_labels))}),
        "general_test": datasets.Dataset.from_dict({"text": test_texts, "label": list(map(str, test_labels))}),
        "real_train_mild": subset(mild),
        "real_train_baseline": subset(baseline),
        "real_train_nocar": subset(no_car),
    }
    files.save_dataset_dict(datasets.DatasetDict(splits), folder)
    return splits


def _write_scores(path, texts, label_log_ratio=None, drop=(), seed=0):
    """A per-token log-prob CSV. Token log-probs are random; the REAL model's differ from the
    general model's only on the label word, by `label_log_ratio[label]` (None: not at all)."""
    rng = np.random.default_rng(seed)
    rows = []
    for text_id, text in enumerate(texts):
        tokens = text.split()
        log_probs = rng.normal(-3.0, 1.0, size=len(tokens))  # drawn before dropping: same stream for every file
        if text_id in drop:
            continue
        if label_log_ratio is not None:
            log_probs[1] += label_log_ratio[tokens[1]]  # tokens[1] is the label word
        pairs = [[token, float(lp)] for token, lp in zip(tokens, log_probs, strict=True)]
        rows.append([text_id, float(log_probs.sum()), float(log_probs.mean()), json.dumps(pairs)])
    files.write_csv(path, pd.DataFrame(rows, columns=files.TOKEN_LOG_PROB_COLUMNS))
    return path


def _label_log_ratio(splits, real_split):
    general = pd.Series(splits["general_train"]["label"]).value_counts(normalize=True)
    real = pd.Series(splits[real_split]["label"]).value_counts(normalize=True)
    return {label: math.log(real[label] / general[label]) for label in LABELS}


@pytest.fixture(scope="module")
def mild_run(tmp_path_factory):
    """One full evaluation on the mild split, with held-out files; shared by the checks below."""
    root = tmp_path_factory.mktemp("evaluation")
    splits = _build_dataset(root / "data")
    ratio = _label_log_ratio(splits, "real_train_mild")
    test_texts = splits["general_test"]["text"]
    heldout_texts = splits["general_train"]["text"][:200]
    config = EvaluationConfig(
        dataset_name=str(root / "data"),
        split_name="mild",
        general_scores_csv=str(_write_scores(root / "general.csv", test_texts, drop={7}, seed=1)),
        # the real model's file: same tokens and general log-probs (same seed), plus the true label ratio
        real_scores_csv=str(_write_scores(root / "real.csv", test_texts, ratio, drop={3, 4}, seed=1)),
        general_heldout_csv=str(_write_scores(root / "general_heldout.csv", heldout_texts, seed=2)),
        real_heldout_csv=str(_write_scores(root / "real_heldout.csv", heldout_texts, ratio, seed=2)),
        score="clipped",  # the paper's exact method: its acceptance must equal the oracle's here
        normalize="none",
        n_runs=300,
        seed=3,
        output_dir=str(root / "out"),
    )
    results = evaluate(config)
    return results, config, splits, root / "out"


def test_evaluate_writes_every_output(mild_run):
    results, config, _, output_dir = mild_run
    for name in ("results.json", "summary.md", "per_text.csv", "label_distributions.png", "label_distributions.pdf"):
        assert (output_dir / name).stat().st_size > 0, name
    record = files.read_record(output_dir)
    assert record["stage"] == "evaluate" and record["config"] == dataclasses.asdict(config)
    text = (output_dir / "results.json").read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    assert json.loads(text) == results
    assert results["inputs"]["general_scores_csv"]["sha256_16"] == files.fingerprint_file(config.general_scores_csv)
    summary = (output_dir / "summary.md").read_text()
    assert "population standard deviation" in summary and "oracle" in summary


def test_evaluate_join_and_counts(mild_run):
    results, _, splits, output_dir = mild_run
    join = results["join"]["general_test"]
    assert join == {
        "general_rows": 299,
        "real_rows": 298,
        "joined_rows": 297,
        "general_lost": 2,  # ids 3 and 4 are missing from the real file
        "real_lost": 1,  # id 7 is missing from the general file
        "split_rows_not_scored": 3,
    }
    per_text = pd.read_csv(output_dir / "per_text.csv")
    assert len(per_text) == results["counts"]["evaluated"] == 297
    assert not {3, 4, 7} & set(per_text["text_id"])
    assert list(per_text["label"]) == [splits["general_test"]["label"][i] for i in per_text["text_id"]]
    assert results["M"] == pytest.approx(900 / len(splits["real_train_mild"]))


def test_evaluate_numbers_are_consistent(mild_run):
    results, _, splits, output_dir = mild_run
    per_text = pd.read_csv(output_dir / "per_text.csv")
    labels = results["labels"]
    assert labels == LABELS
    codes = np.array([labels.index(y) for y in per_text["label"]])
    real = np.array([results["distributions"]["real_train"][y] for y in labels])
    evaluated = calibration.label_distribution(codes, 3)
    assert results["kl_general"] == pytest.approx(calibration.kl_divergence(evaluated, real))
    assert results["kl_general"] > 0.1 and not results["kl_general_is_zero"]
    filters = results["filters"]
    # no filter: every run keeps everything
    assert filters["no_filter"]["kl_mean"] == pytest.approx(results["kl_general"])
    assert filters["no_filter"]["kl_std"] == 0.0 and filters["no_filter"]["pass_rate_mean"] == 1.0
    # the real model knows the true label ratio, so the paper's score equals the oracle's acceptance
    np.testing.assert_allclose(per_text["accept_prob"], per_text["oracle_accept_prob"], rtol=1e-9)
    np.testing.assert_allclose(per_text["score"], per_text["score_clipped"])
    assert filters["semcal"]["variant"] == "clipped"
    assert filters["semcal"]["kl_mean"] == pytest.approx(filters["oracle"]["kl_mean"], rel=1e-9)  # same draws
    assert filters["oracle"]["deception_reduction"] > 0.9
    for name in ("semcal", "oracle", "classifier"):
        block = filters[name]
        assert block["deception_reduction"] == pytest.approx(1 - block["kl_mean"] / results["kl_general"])
        assert block["pass_rate_mean"] == pytest.approx(block["accept_prob_mean"], abs=0.02)
        assert sum(block["expected_distribution"].values()) == pytest.approx(1.0)
    # the classifier is a real, weaker reference: valid probabilities that still move toward real
    assert per_text["classifier_accept_prob"].between(0, 1).all()
    assert 0.2 < filters["classifier"]["deception_reduction"] < filters["oracle"]["deception_reduction"] + 0.05
    # every variant is measured; held-out normalisation makes exp(score) average 1 over held-out texts
    assert set(results["variants"]) == {
        "clipped",
        "sum",
        "clipped_heldout",
        "sum_heldout",
        "clipped_logistic",
        "sum_logistic",
        "clipped_matched",
        "sum_matched",
    }
    heldout = results["variants"]["sum_heldout"]
    heldout_labels = splits["general_train"]["label"][:200]
    ratio = _label_log_ratio(splits, "real_train_mild")
    assert heldout["shift"] == pytest.approx(calibration.log_mean_exp(np.array([ratio[y] for y in heldout_labels])))
    assert results["variants"]["sum"]["kl_mean"] == pytest.approx(filters["semcal"]["kl_mean"])


def test_results_table_row_and_markdown(mild_run):
    results = mild_run[0]
    row = report.results_table_row(results, dataset_label="toy")
    assert list(row) == [
        "data set",
        "split",
        "KL(general||real)",
        "KL(filtered||real)",
        "deception reduction (%)",
        "pass rate (%)",
        "oracle reduction (%)",
        "classifier reduction (%)",
    ]
    assert row["data set"] == "toy" and row["split"] == "mild"
    assert row["deception reduction (%)"] == f"{100 * results['filters']['semcal']['deception_reduction']:.1f}"
    assert " ± " in row["KL(filtered||real)"]
    numeric = report.results_table_row(results, numeric=True, variants=("sum",))
    assert numeric["oracle_reduction_pct"] == pytest.approx(100 * results["filters"]["oracle"]["deception_reduction"])
    assert numeric["sum_reduction_pct"] == pytest.approx(100 * results["variants"]["sum"]["deception_reduction"])
    table = report.format_table([row, row])
    assert table.count("\n") == 4 and table.startswith("| data set | split |")
    over_seeds = report.results_table_row_over_seeds([results, results])
    assert over_seeds["oracle reduction (%)"].endswith("± 0.0")


def test_evaluate_refuses_mismatched_tokens(mild_run, tmp_path):
    _, config, splits, _ = mild_run
    texts = list(splits["general_test"]["text"])
    other = texts.copy()
    other[5] = other[5] + " extra"
    real = _write_scores(tmp_path / "real.csv", other, seed=1)
    with pytest.raises(UserError, match="text_id 5 of general_test"):
        evaluate(dataclasses.replace(config, real_scores_csv=str(real), output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_baseline_split_reports_kl_values_not_a_reduction(mild_run, tmp_path):
    _, config, splits, _ = mild_run
    texts = splits["general_test"]["text"]
    results = evaluate(
        dataclasses.replace(
            config,
            split_name="baseline",
            general_scores_csv=str(_write_scores(tmp_path / "g.csv", texts, seed=1)),
            real_scores_csv=str(_write_scores(tmp_path / "r.csv", texts, seed=1)),
            general_heldout_csv=None,
            real_heldout_csv=None,
            classifier=False,
            n_runs=50,
            output_dir=str(tmp_path / "out"),
        )
    )
    assert results["kl_general_is_zero"] and "about 0" in results["kl_note"]
    assert results["filters"]["semcal"]["deception_reduction"] is None
    assert "classifier" not in results["filters"] and set(results["variants"]) == {"clipped", "sum"}
    # identical models: every text scores 0 and is accepted with 1/M
    assert results["filters"]["semcal"]["accept_prob_mean"] == pytest.approx(1 / results["M"])
    assert results["filters"]["semcal"]["kl_ratio"] == pytest.approx(
        results["filters"]["semcal"]["kl_mean"] / results["kl_general"]
    )
    row = report.results_table_row(results)
    assert row["deception reduction (%)"].startswith("n/a (KL≈0") and row["classifier reduction (%)"] == "—"


def test_infinite_kl_is_reported_plainly_and_epsilon_smooths_it(mild_run, tmp_path):
    _, config, splits, _ = mild_run
    texts = splits["general_test"]["text"]
    settings = dict(
        split_name="nocar",
        general_scores_csv=str(_write_scores(tmp_path / "g.csv", texts, seed=1)),
        real_scores_csv=str(_write_scores(tmp_path / "r.csv", texts, seed=1)),
        general_heldout_csv=None,
        real_heldout_csv=None,
        classifier=False,
        n_runs=20,
    )
    results = evaluate(dataclasses.replace(config, **settings, output_dir=str(tmp_path / "raw")))
    semcal = results["filters"]["semcal"]
    assert results["kl_general"] == "inf" and semcal["kl_mean"] == "inf" and semcal["kl_infinite_runs"] == 20
    assert semcal["infinite_kl_labels"] == ["car"] and semcal["deception_reduction"] is None
    assert results["filters"]["oracle"]["kl_infinite_runs"] == 0  # the oracle never passes a car
    assert "infinite" in results["kl_note"] and "car" in (tmp_path / "raw" / "summary.md").read_text()
    smoothed = evaluate(dataclasses.replace(config, **settings, kl_epsilon=1e-3, output_dir=str(tmp_path / "eps")))
    assert isinstance(smoothed["kl_general"], float) and isinstance(smoothed["filters"]["semcal"]["kl_mean"], float)
    assert smoothed["filters"]["oracle"]["deception_reduction"] > 0.9


def test_settings_are_checked_before_any_work(tmp_path):
    scores = _write_scores(tmp_path / "s.csv", ["a cat here"])
    base = EvaluationConfig(
        dataset_name=str(tmp_path / "missing"),
        general_scores_csv=str(scores),
        real_scores_csv=str(scores),
        general_heldout_csv=None,
        real_heldout_csv=None,
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(UserError, match="normalize=heldout needs"):
        evaluate(dataclasses.replace(base, normalize="heldout"))
    with pytest.raises(UserError, match="normalize=logistic needs"):
        evaluate(dataclasses.replace(base, normalize="logistic"))
    with pytest.raises(UserError, match="real_heldout_csv is not"):
        evaluate(dataclasses.replace(base, general_heldout_csv=str(scores)))
    with pytest.raises(UserError, match="real_scores_csv=.*does not exist"):
        evaluate(dataclasses.replace(base, real_scores_csv=str(tmp_path / "nope.csv")))
    with pytest.raises(UserError, match="score='mean'"):
        evaluate(dataclasses.replace(base, score="mean"))
    with pytest.raises(UserError, match="top_p"):
        evaluate(dataclasses.replace(base, top_p=2.0))
    assert not (tmp_path / "out").exists()
    # the command line prints the message and exits 2, no traceback
    assert main(["evaluate", f"--general_scores_csv={tmp_path / 'nope.csv'}"]) == 2


def test_logistic_variant_learns_membership_from_heldout_texts(mild_run):
    results, _, _, _ = mild_run
    variants = results["variants"]
    assert {"sum_logistic", "clipped_logistic", "sum_heldout"} <= set(variants)
    fit = variants["sum_logistic"]["fit"]
    # the real file adds the true log ratio log(q/p) to the general log-probs, so the fitted
    # P(real | x) = sigmoid(a + b * score) must weigh the score positively, of order 1
    assert 0.5 < fit["slope"] < 2.5 and fit["heldout_texts"] == 200
    assert variants["sum_logistic"]["deception_reduction"] > 0.8
    assert variants["sum_logistic"]["pass_rate_mean"] == pytest.approx(1 / results["M"], rel=0.25)
