import dataclasses
import json
import math

import datasets
import numpy as np
import pandas as pd
import pytest

from semcal.cli.cli import main
from semcal.core import console
from semcal.core.errors import UserError
from semcal.filter import calibration
from semcal.protocol.evaluation import EvaluationConfig, evaluate
from semcal.reports import report
from semcal.reports import results as result_file
from semcal.store import files, score_files

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
    files.write_csv(path, pd.DataFrame(rows, columns=score_files.TOKEN_LOG_PROB_COLUMNS))
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
        distortion="mild",
        general_scores_csv=str(_write_scores(root / "general.csv", test_texts, drop={7}, seed=1)),
        # the real model's file: same tokens and general log-probs (same seed), plus the true label ratio
        real_scores_csv=str(_write_scores(root / "real.csv", test_texts, ratio, drop={3, 4}, seed=1)),
        general_heldout_csv=str(_write_scores(root / "general_heldout.csv", heldout_texts, seed=2)),
        real_heldout_csv=str(_write_scores(root / "real_heldout.csv", heldout_texts, ratio, seed=2)),
        filter="clipped",  # the paper's exact method: its acceptance must equal the oracle's here
        candidates=False,  # the calibrated filters are checked in test_calibrated_filters.py
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
    assert filters["semcal"]["filter_name"] == "clipped" and filters["semcal"]["kind"] == "variant"
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
    assert -heldout["link"]["shift"] == pytest.approx(
        calibration.log_mean_exp(np.array([ratio[y] for y in heldout_labels]))
    )
    assert results["variants"]["sum"]["kl_mean"] == pytest.approx(filters["semcal"]["kl_mean"])


def test_results_table_row_and_markdown(mild_run):
    results = mild_run[0]
    row = report.results_table_row(result_file.from_dict(results), dataset_label="toy")
    assert list(row) == [
        "data set",
        "split",
        "KL(general||real)",
        "KL(filtered||real)",
        "deception reduction (%)",
        "pass rate (%)",
        "Brier (constant)",
        "oracle reduction (%)",
        "classifier reduction (%)",
    ]
    assert row["data set"] == "toy" and row["split"] == "mild"
    per_item = results["per_item"]
    brier, constant = per_item["filters"][results["filter_name"]]["brier"], per_item["reference"]["brier"]
    assert row["Brier (constant)"] == f"{report.format_number(brier, 3)} ({report.format_number(constant, 3)})"
    assert row["deception reduction (%)"] == f"{100 * results['filters']['semcal']['deception_reduction']:.1f}"
    assert " ± " in row["KL(filtered||real)"]
    numeric = report.results_table_row(result_file.from_dict(results), numeric=True, variants=("sum",))
    assert numeric["oracle_reduction_pct"] == pytest.approx(100 * results["filters"]["oracle"]["deception_reduction"])
    assert numeric["brier"] == pytest.approx(brier) and numeric["brier_constant"] == pytest.approx(constant)
    assert numeric["sum_reduction_pct"] == pytest.approx(100 * results["variants"]["sum"]["deception_reduction"])
    table = report.format_table([row, row])
    assert table.count("\n") == 4 and table.startswith("| data set | split |")


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
            distortion="baseline",
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
    row = report.results_table_row(result_file.from_dict(results))
    assert row["deception reduction (%)"].startswith("n/a (KL≈0") and row["classifier reduction (%)"] == "—"


def test_infinite_kl_is_reported_plainly_and_epsilon_smooths_it(mild_run, tmp_path):
    _, config, splits, _ = mild_run
    texts = splits["general_test"]["text"]
    settings = dict(
        distortion="nocar",
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
    with pytest.raises(UserError, match="filter=clipped_heldout needs general_heldout_csv"):
        evaluate(dataclasses.replace(base, filter="clipped_heldout"))
    with pytest.raises(UserError, match="filter=sum_logistic needs general_heldout_csv"):
        evaluate(dataclasses.replace(base, filter="sum_logistic"))
    with pytest.raises(UserError, match="real_heldout_csv is not"):
        evaluate(dataclasses.replace(base, general_heldout_csv=str(scores)))
    with pytest.raises(UserError, match="real_scores_csv=.*does not exist"):
        evaluate(dataclasses.replace(base, real_scores_csv=str(tmp_path / "nope.csv")))
    with pytest.raises(UserError, match="filter='mean_stream' is not a filter"):
        evaluate(dataclasses.replace(base, filter="mean_stream"))
    with pytest.raises(UserError, match="top_p"):
        evaluate(dataclasses.replace(base, top_p=2.0))
    assert not (tmp_path / "out").exists()
    # the command line prints the message and exits 2, no traceback
    assert main(["evaluate", f"--general_scores_csv={tmp_path / 'nope.csv'}"]) == 2


def test_logistic_variant_learns_membership_from_heldout_texts(mild_run):
    results, _, _, _ = mild_run
    variants = results["variants"]
    assert {"sum_logistic", "clipped_logistic", "sum_heldout"} <= set(variants)
    link = variants["sum_logistic"]["link"]
    # the real file adds the true log ratio log(q/p) to the general log-probs, so the fitted
    # P(real | x) = sigmoid(a + b * score) must weigh the score positively, of order 1
    assert link["link"] == "logistic" and 0.5 < link["slope"] < 2.5
    assert variants["sum_logistic"]["heldout_texts"] == 200
    assert variants["sum_logistic"]["deception_reduction"] > 0.8
    assert variants["sum_logistic"]["pass_rate_mean"] == pytest.approx(1 / results["M"], rel=0.25)


# ---- run-state: the output folder is built beside and swapped in ---------------------------


def _quick(config, tmp_path, **changes):
    """A fast evaluation of the mild split: no held-out files, no classifier, few runs."""
    settings = dict(general_heldout_csv=None, real_heldout_csv=None, classifier=False, n_runs=20)
    return dataclasses.replace(config, **{**settings, "output_dir": str(tmp_path / "out"), **changes})


def test_evaluate_refuses_the_data_folder(mild_run, tmp_path):
    _, config, _, _ = mild_run
    data = tmp_path / "data"
    _build_dataset(data)
    files.write_record(data, "distort", {"note": "the data set's own record"})
    with pytest.raises(UserError, match="'distort' stage"):
        evaluate(_quick(config, tmp_path, dataset_name=str(data), output_dir=str(data)))
    assert files.read_record(data)["stage"] == "distort" and not (data / "results.json").exists()


def test_a_second_evaluation_into_the_same_folder_is_refused(mild_run, tmp_path, monkeypatch):
    _, config, _, _ = mild_run
    first, second = _quick(config, tmp_path), _quick(config, tmp_path, n_runs=30)
    real_monte_carlo, refused = calibration.monte_carlo, []

    def second_evaluation_meanwhile(*args, **kwargs):
        monkeypatch.setattr(calibration, "monte_carlo", real_monte_carlo)
        with pytest.raises(UserError, match="being written") as err:
            evaluate(second)
        refused.append(err)
        return real_monte_carlo(*args, **kwargs)

    monkeypatch.setattr(calibration, "monte_carlo", second_evaluation_meanwhile)
    results = evaluate(first)
    assert refused and results["monte_carlo"]["n_runs"] == 20
    assert files.read_json(tmp_path / "out" / "results.json")["monte_carlo"]["n_runs"] == 20


def test_a_failed_evaluation_leaves_the_finished_one(mild_run, tmp_path, monkeypatch, capsys):
    _, config, _, _ = mild_run
    finished = evaluate(_quick(config, tmp_path))
    before = {name: (tmp_path / "out" / name).read_bytes() for name in ("results.json", "per_text.csv", "summary.md")}

    def broken_summary(results):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "evaluation_summary_markdown", broken_summary)
    with pytest.raises(RuntimeError, match="disk full"):
        evaluate(_quick(config, tmp_path, n_runs=30))  # fails after results.json and per_text.csv are written
    for name, content in before.items():
        assert (tmp_path / "out" / name).read_bytes() == content, name
    monkeypatch.undo()
    console.setup()
    capsys.readouterr()
    assert evaluate(_quick(config, tmp_path)) == finished  # the finished output is still this setting's
    assert "up to date, skipped" in capsys.readouterr().out
    rerun = evaluate(_quick(config, tmp_path, n_runs=30))
    assert (
        rerun["monte_carlo"]["n_runs"]
        == 30
        == files.read_json(tmp_path / "out" / "results.json")["monte_carlo"]["n_runs"]
    )
    done = [line for line in capsys.readouterr().out.splitlines() if "evaluate mild: done in" in line]
    assert len(done) == 1 and "reduction" in done[0] and "pass rate" in done[0]


# ---- surprises are reported, not silent -----------------------------------------------------


def _with_bad_log_probs(source, target, text_ids):
    """A copy of a scores CSV whose rows `text_ids` hold a NaN log-prob."""
    table = pd.read_csv(source, keep_default_na=False)
    for row in np.flatnonzero(table["text_id"].isin(text_ids)):
        pairs = json.loads(table.at[row, "word_probabilities"])
        pairs[0][1] = float("nan")
        table.at[row, "word_probabilities"] = json.dumps(pairs)
    files.write_csv(target, table)
    return target


def test_texts_with_a_nan_log_prob_are_left_out_and_counted(mild_run, tmp_path, capsys):
    _, config, _, _ = mild_run
    real = _with_bad_log_probs(config.real_scores_csv, tmp_path / "real_nan.csv", {10, 11})
    console.setup()
    capsys.readouterr()
    results = evaluate(_quick(config, tmp_path, real_scores_csv=str(real), filter="sum"))
    assert results["excluded_nonfinite"] == {"general_test": 2, "heldout": 0}
    assert results["counts"]["evaluated"] == 297 - 2
    assert isinstance(results["filters"]["semcal"]["kl_mean"], float)
    assert not {10, 11} & set(pd.read_csv(tmp_path / "out" / "per_text.csv")["text_id"])
    [warning] = [w for w in results["warnings"] if "NaN" in w]
    assert "2 of 297 general_test texts" in warning and "[10, 11]" in warning
    assert warning in (tmp_path / "out" / "summary.md").read_text()
    assert capsys.readouterr().out.count("warning: 2 of 297 general_test texts") == 1


def test_every_text_with_a_nan_log_prob_is_an_error(mild_run, tmp_path):
    _, config, _, _ = mild_run
    real = _with_bad_log_probs(config.real_scores_csv, tmp_path / "real_nan.csv", set(range(300)))
    with pytest.raises(UserError, match="every text of general_test .* NaN or infinite log-prob"):
        evaluate(_quick(config, tmp_path, real_scores_csv=str(real)))


def test_rows_a_scores_file_lacks_are_named(mild_run, tmp_path, capsys):
    results, config, _, output_dir = mild_run
    expected = [
        "general_scores_csv lacks 1 of 300 general_test rows (first ids [7])",
        "real_scores_csv lacks 2 of 300 general_test rows (first ids [3, 4])",
    ]
    assert [w for w in results["warnings"] if "lacks" in w] == expected
    assert all(warning in (output_dir / "summary.md").read_text() for warning in expected)
    console.setup()
    capsys.readouterr()
    evaluate(_quick(config, tmp_path))
    out = capsys.readouterr().out
    assert all(out.count(f"warning: {warning}") == 1 for warning in expected)


def test_a_real_label_general_train_lacks_is_named(mild_run, tmp_path):
    _, config, splits, _ = mild_run
    mild = splits["real_train_mild"]
    labels = ["alien" if i % 10 == 0 else label for i, label in enumerate(mild["label"])]
    with_alien = dict(splits) | {
        "real_train_alien": datasets.Dataset.from_dict({"text": mild["text"], "label": labels})
    }
    files.save_dataset_dict(datasets.DatasetDict(with_alien), tmp_path / "data")
    results = evaluate(_quick(config, tmp_path, dataset_name=str(tmp_path / "data"), distortion="alien"))
    [warning] = [w for w in results["warnings"] if "general_train lacks" in w]
    assert "real_train_alien" in warning and "'alien' (31 texts)" in warning
    assert results["distortion"] == "alien" and results["real_split"] == "real_train_alien"


@pytest.mark.parametrize(
    ("cell", "what"),
    [
        ("[" * 200_000 + "]" * 200_000, "nested 200k deep"),
        ("[1, 2, 3]", "numbers, not pairs"),
        ('[["a"]]', "no log-prob"),
    ],
)
def test_malformed_word_probabilities_name_the_file_row_and_form(tmp_path, cell, what):
    good = json.dumps([["a", -1.0], ["cat", -2.0]])
    table = pd.DataFrame([[0, -3.0, -1.5, good], [1, -3.0, -1.5, cell]], columns=score_files.TOKEN_LOG_PROB_COLUMNS)
    path = files.write_csv(tmp_path / "scores.csv", table)
    with pytest.raises(UserError, match=r"scores\.csv, row 2 \(text_id 1\).*\[\[token, log_prob\], \.\.\.\]"):
        score_files.read_token_log_probs(path)


def test_a_negative_seed_is_refused(mild_run, tmp_path):
    _, config, _, _ = mild_run
    with pytest.raises(UserError, match="seed must be 0 or more"):
        evaluate(_quick(config, tmp_path, seed=-1))
    assert main(["evaluate", "--seed=-1", f"--general_scores_csv={config.general_scores_csv}"]) == 2
