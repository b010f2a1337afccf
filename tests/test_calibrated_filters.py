"""The calibrated filters of the evaluation (semcal.filter.sources x semcal.filter.calibrations) and the `filter` setting, on the
small synthetic evaluation of test_evaluation.py (offline, seconds)."""

from __future__ import annotations

import dataclasses

import datasets
import numpy as np
import pandas as pd
import pytest

from semcal.core.errors import UserError
from semcal.filter.filters import DEFAULT_FILTER, describe
from semcal.protocol.evaluation import EvaluationConfig, evaluate
from semcal.reports import report
from semcal.reports import results as result_file
from semcal.store import files
from tests.test_evaluation import FILLER, LABELS, _build_dataset, _label_log_ratio, _write_scores

STREAM_NORMALISED = (
    "clipped_stream",
    "sum_stream",
    "sum_mom",
    "sum_labmom",
    "control_sum_stream",
    "control_sum_labmom",
    "tfidf_mom",
    "tfidf_labmom",
    "ngram_labmom",
    "stack_labmom",
)
CALIBRATED = (*STREAM_NORMALISED, "control_sum")


def _config(root, splits, **changes) -> EvaluationConfig:
    """Scores of the mild split (the real model knows the label ratio), held-out files of the
    first 200 general_train rows, a control model that differs from the general one by an offset."""
    ratio = _label_log_ratio(splits, "real_train_mild")
    test_texts, heldout_texts = splits["general_test"]["text"], splits["general_train"]["text"][:200]
    offset = dict.fromkeys(LABELS, 0.3)  # the control trained as long as the real model: the same offset
    settings = dict(
        dataset_name=str(root / "data"),
        distortion="mild",
        general_scores_csv=str(_write_scores(root / "general.csv", test_texts, seed=1)),
        real_scores_csv=str(_write_scores(root / "real.csv", test_texts, ratio, seed=1)),
        general_heldout_csv=str(_write_scores(root / "general_heldout.csv", heldout_texts, seed=2)),
        real_heldout_csv=str(_write_scores(root / "real_heldout.csv", heldout_texts, ratio, seed=2)),
        control_scores_csv=str(_write_scores(root / "control.csv", test_texts, offset, seed=1)),
        control_heldout_csv=str(_write_scores(root / "control_heldout.csv", heldout_texts, offset, seed=2)),
        n_runs=200,
        seed=3,
        output_dir=str(root / "out"),
    )
    return EvaluationConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The default filter with every calibrated candidate, the control and the held-out files."""
    root = tmp_path_factory.mktemp("calibrated")
    splits = _build_dataset(root / "data")
    config = _config(root, splits)
    return evaluate(config), config, splits, root


def test_every_calibrated_filter_lands_in_results_with_its_parameters(full_run):
    results, config, _, root = full_run
    filters = results["filters"]
    assert config.filter == DEFAULT_FILTER == results["filter_name"] == filters["semcal"]["filter_name"]
    assert filters["semcal"]["kind"] == "calibrated"
    assert filters["semcal"]["kl_mean"] == filters[DEFAULT_FILTER]["kl_mean"]  # the same filter, the same draws
    assert set(CALIBRATED) | {"label_posterior", "classifier", "oracle", "no_filter"} <= set(filters)
    assert "embedding_labmom" not in filters  # no embedding_model given
    for name in CALIBRATED:
        fit = filters[name]["link"]
        assert isinstance(fit["temperature"], float) and isinstance(fit["shift"], float), name
        assert 0.0 < filters[name]["accept_prob_mean"] <= 1.0
    for name in ("tfidf_labmom", "sum_labmom", "stack_labmom"):
        assert filters[name]["calibration"]["criterion"] == "moments"
        assert filters[name]["calibration"]["shift_statistic"] > filters[name]["calibration"]["shift_threshold"]
    assert filters["tfidf_labmom"]["estimator"]["prior"] == pytest.approx(filters["tfidf_mom"]["estimator"]["prior"])
    assert filters["tfidf_mom"]["instruments_used"] == ["sum", "control_sum"]
    assert filters["sum_mom"]["instruments_used"] == ["tfidf"]
    assert filters["clipped_stream"]["detector"] == "tfidf"
    stacked = filters["stack_labmom"]["estimator"]["stacked"]
    assert stacked["feature_names"] == ["lm_sum", "lm_mean", "n_tokens", "tfidf"] and len(stacked["weights"]) == 4
    assert len(filters["label_posterior"]["estimator"]) == len(LABELS)  # one ratio per label
    # the label word is in every text: the calibrated filters come close to the oracle
    oracle = filters["oracle"]["deception_reduction"]
    for name in ("tfidf_labmom", "stack_labmom", "sum_labmom", "control_sum_labmom", "label_posterior"):
        assert filters[name]["deception_reduction"] > 0.7 * oracle, name
    assert files.read_json(root / "out" / "results.json") == results  # plain JSON, numbers as written


def test_stream_normalised_filters_pass_exactly_one_in_m(full_run):
    results = full_run[0]
    for name in STREAM_NORMALISED:
        assert results["filters"][name]["accept_prob_mean"] * results["M"] == pytest.approx(1.0, abs=1e-6), name
        assert results["filters"][name]["calibration"]["stream_pass_rate"] == pytest.approx(1 / results["M"])


def test_per_text_summary_and_table_show_the_candidates(full_run):
    results, _, _, root = full_run
    per_text = pd.read_csv(root / "out" / "per_text.csv")
    np.testing.assert_allclose(per_text["accept_prob"], per_text[f"{DEFAULT_FILTER}_accept_prob"])
    np.testing.assert_allclose(per_text["score"], per_text[f"score_{DEFAULT_FILTER}"])
    for name in CALIBRATED:
        assert per_text[f"{name}_accept_prob"].between(0, 1).all(), name
    summary = (root / "out" / "summary.md").read_text()
    assert "## Calibrations" in summary and "| stack_labmom | stack | moments |" in summary
    assert f"Filter: **{DEFAULT_FILTER}** (filter={DEFAULT_FILTER})" in summary
    row = report.results_table_row(result_file.from_dict(results))
    for f in ("classifier", "tfidf_labmom", "joint_labmom", "joint_stream", "stack_labmom", "clipped_stream"):
        assert f"{describe(f).label} reduction (%)" in row, f
    numeric = report.results_table_row(result_file.from_dict(results), numeric=True)
    assert numeric["filter_name"] == DEFAULT_FILTER
    assert numeric["tfidf_labmom_reduction_pct"] == pytest.approx(
        100 * results["filters"]["tfidf_labmom"]["deception_reduction"]
    )


def test_no_filter_reads_general_test_labels(full_run, tmp_path):
    """Shuffling general_test's labels changes nothing a filter sees: every acceptance but the oracle's is identical."""
    results, config, splits, root = full_run
    test = splits["general_test"]
    shuffled = np.random.default_rng(5).permutation(test["label"]).tolist()
    relabelled = dict(splits) | {"general_test": datasets.Dataset.from_dict({"text": test["text"], "label": shuffled})}
    files.save_dataset_dict(datasets.DatasetDict(relabelled), tmp_path / "data")
    evaluate(dataclasses.replace(config, dataset_name=str(tmp_path / "data"), output_dir=str(tmp_path / "out")))
    before, after = (pd.read_csv(folder / "per_text.csv") for folder in (root / "out", tmp_path / "out"))
    accept_columns = [c for c in before if c.endswith("accept_prob") and c != "oracle_accept_prob"]
    assert len(accept_columns) >= len(CALIBRATED) + 2
    pd.testing.assert_frame_equal(before[accept_columns], after[accept_columns])
    assert not before["oracle_accept_prob"].equals(after["oracle_accept_prob"])  # the labels did change


def test_the_filter_setting_chooses_and_names_what_is_missing(full_run, tmp_path):
    _, config, _, _ = full_run
    quick = dataclasses.replace(config, n_runs=20, candidates=False, classifier=False, output_dir=str(tmp_path / "o"))
    chosen = evaluate(dataclasses.replace(quick, filter="sum_labmom", output_dir=str(tmp_path / "chosen")))
    assert chosen["filter_name"] == "sum_labmom" and "sum_labmom" in chosen["filters"]  # chosen runs without candidates
    assert "tfidf_labmom" not in chosen["filters"] and "label_posterior" not in chosen["filters"]
    with pytest.raises(
        UserError, match="filter='nope' is not a filter: give <source>_<calibration> with a source of tfidf"
    ):
        evaluate(dataclasses.replace(quick, filter="nope"))
    with pytest.raises(UserError, match="filter='oracle' is not a filter"):
        evaluate(dataclasses.replace(quick, filter="oracle"))  # a reference reads general_test labels
    no_heldout = dataclasses.replace(quick, general_heldout_csv=None, real_heldout_csv=None, control_heldout_csv=None)
    with pytest.raises(UserError, match="filter=sum_labmom needs general_heldout_csv and real_heldout_csv"):
        evaluate(dataclasses.replace(no_heldout, filter="sum_labmom", control_scores_csv=None))
    with pytest.raises(UserError, match="filter=control_sum needs control_scores_csv and control_heldout_csv"):
        evaluate(dataclasses.replace(quick, filter="control_sum", control_scores_csv=None, control_heldout_csv=None))
    with pytest.raises(UserError, match="filter=embedding_labmom needs embedding_model"):
        evaluate(dataclasses.replace(quick, filter="embedding_labmom"))
    assert not (tmp_path / "o").exists()


def test_text_filters_need_no_score_files_of_held_out_rows_but_membership(full_run, tmp_path):
    results, config, splits, _ = full_run
    quick = dataclasses.replace(
        config,
        general_heldout_csv=None,
        real_heldout_csv=None,
        control_scores_csv=None,
        control_heldout_csv=None,
        n_runs=20,
        output_dir=str(tmp_path / "out"),
    )
    text_only = evaluate(quick)  # held-out rows: data.heldout_mask's 180 of 900
    assert text_only["filters"]["tfidf_labmom"]["accept_prob_mean"] * text_only["M"] == pytest.approx(1.0)
    assert {"tfidf_labmom", "tfidf_mom", "ngram_labmom", "clipped_stream", "sum_stream"} <= set(text_only["filters"])
    assert not {"sum_labmom", "stack_labmom", "control_sum"} & set(text_only["filters"])
    assert text_only["filters"]["tfidf_mom"]["instruments_used"] == ["ngram"]
    # A real split that does not say which general_train rows it holds is its own corpus (pooled with general_train).
    unmarked = dict(splits) | {"real_train_mild": splits["real_train_mild"].remove_columns("general_train_row")}
    files.save_dataset_dict(datasets.DatasetDict(unmarked), tmp_path / "data")
    pooled = evaluate(dataclasses.replace(quick, dataset_name=str(tmp_path / "data"), output_dir=str(tmp_path / "p")))
    assert pooled["real_rows"] == "pooled" and text_only["real_rows"] == "subset"
    assert pooled["filters"]["tfidf_labmom"]["accept_prob_mean"] * pooled["M"] == pytest.approx(1.0)
    assert (
        pooled["filters"]["tfidf_labmom"]["deception_reduction"]
        > 0.5 * pooled["filters"]["oracle"]["deception_reduction"]
    )


def test_control_files_come_in_pairs_and_cover_the_evaluated_texts(full_run, tmp_path):
    _, config, splits, _ = full_run
    quick = dataclasses.replace(config, n_runs=20, candidates=False, output_dir=str(tmp_path / "out"))
    with pytest.raises(UserError, match="control_scores_csv is set but control_heldout_csv is not"):
        evaluate(dataclasses.replace(quick, control_heldout_csv=None))
    short = _write_scores(tmp_path / "short.csv", splits["general_test"]["text"], drop={8, 9}, seed=1)
    with pytest.raises(UserError, match=r"control_scores_csv lacks 2 of the 300 general_test texts .*\[8, 9\]"):
        evaluate(dataclasses.replace(quick, control_scores_csv=str(short), filter="control_sum"))


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a word-level tokenizer over the test vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_encoder")
    words = sorted({"a", *LABELS, *FILLER})
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    BertTokenizerFast(vocab=vocab).save_pretrained(str(folder))
    encoder = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(encoder).save_pretrained(str(folder))
    return folder


def test_the_embedding_filter_runs_with_any_encoder_folder(full_run, tiny_encoder, tmp_path):
    _, config, _, _ = full_run
    results = evaluate(
        dataclasses.replace(
            config,
            filter="embedding_labmom",
            embedding_model=str(tiny_encoder),
            candidates=False,
            classifier=False,
            n_runs=20,
            output_dir=str(tmp_path / "out"),
        )
    )
    block = results["filters"]["embedding_labmom"]
    assert results["filter_name"] == "embedding_labmom" and block["estimator"]["dimensions"] == 32
    assert block["accept_prob_mean"] * results["M"] == pytest.approx(1.0)
    assert "embedding_model" in results["inputs"]  # the folder is fingerprinted
    with pytest.raises(UserError, match="embedding_model=.* is not a folder"):
        evaluate(dataclasses.replace(config, embedding_model=str(tmp_path / "none"), output_dir=str(tmp_path / "x")))
