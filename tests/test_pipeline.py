"""`semcal run` end to end on a tiny synthetic data set, a crash between stages, `table` and the demo."""

import dataclasses
import json

import datasets
import pandas as pd
import pytest

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.filter import filtering
from semcal.filter.filters import DEFAULT_FILTER
from semcal.protocol import pipeline
from semcal.protocol.demo_data import generate_demo
from semcal.protocol.evaluation import EvaluationConfig, evaluate
from semcal.protocol.layout import RunLayout
from semcal.store import files

TINY_FINETUNE = {
    "n_layer": "1",
    "n_embd": "32",
    "n_head": "2",
    "vocab_size": "300",
    "max_length": "48",
    "num_epochs": "1",
    "batch_size": "32",
}


def _config(tmp_path, source):
    return pipeline.PipelineConfig(
        dataset_name=str(source),
        run_dir=str(tmp_path / "run"),
        splits=["baseline", "severe"],
        init_real_from_general=True,
        finetune_settings=dict(TINY_FINETUNE),
        evaluation_settings={"n_runs": "50"},
    )


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("tiny") / "source"
    files.save_dataset_dict(generate_demo(n_train=400, n_test=120, seed=3), source)
    return source


def test_run_restarts_after_a_crash_without_redoing_finished_stages(tmp_path, tiny_source, monkeypatch, capsys):
    config = _config(tmp_path, tiny_source)
    real_score_split = pipeline.score_split
    calls = []

    def crash_on_third(score_config):
        calls.append(score_config.output_dir)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_score_split(score_config)

    monkeypatch.setattr(pipeline, "score_split", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.run_pipeline(config)
    monkeypatch.setattr(pipeline, "score_split", real_score_split)
    run_dir = tmp_path / "run"
    general_weights = run_dir / "models" / "general" / "model.safetensors"
    written_before = general_weights.stat().st_mtime_ns
    capsys.readouterr()

    pipeline.run_pipeline(config)
    log = capsys.readouterr().out
    # distort, 3 fine-tunings and the 2 scorings that finished before the crash are skipped
    assert log.count("up to date, skipped") == 6
    assert "[7/12] score general_test.real_baseline: done" in log
    assert general_weights.stat().st_mtime_ns == written_before

    for split in ("baseline", "severe"):
        results = json.loads((run_dir / "evaluation" / split / "results.json").read_text())
        assert results["distortion"] == split and results["monte_carlo"]["n_runs"] == 50
        assert (run_dir / "evaluation" / split / "label_distributions.png").exists()
    table = pd.read_csv(run_dir / "results_table.csv")
    assert list(table["split"]) == ["baseline", "severe"]
    assert (run_dir / "results_table.md").read_text().startswith("| data set |")

    # A third run changes nothing: every stage is up to date.
    pipeline.run_pipeline(config)
    assert capsys.readouterr().out.count("up to date, skipped") == 12

    # `semcal table` collects the same rows from the run folder.
    assert main(["table", str(run_dir), "--output", str(tmp_path / "collected")]) == 0
    assert pd.read_csv(tmp_path / "collected.csv")["split"].tolist() == ["baseline", "severe"]


def test_changed_settings_rerun_the_stages_they_reach(tmp_path, tiny_source, capsys):
    config = _config(tmp_path, tiny_source)
    config.splits = ["severe"]
    pipeline.run_pipeline(config)
    capsys.readouterr()
    config.evaluation_settings = {"n_runs": "60"}
    pipeline.run_pipeline(config)
    log = capsys.readouterr().out
    assert log.count("up to date, skipped") == 1 + 2 + 4  # distort, 2 models, 4 scorings
    assert "[8/8] evaluate severe: done" in log


def test_bad_pipeline_settings_fail_before_any_work(tmp_path, tiny_source):
    config = _config(tmp_path, tiny_source)
    config.splits = ["mild", "extreme"]
    config.targets = {"mild": 0.25}
    with pytest.raises(UserError, match=r"splits \['extreme'\] have no target KL"):
        pipeline.run_pipeline(config)
    config = _config(tmp_path, tiny_source)
    config.finetune_settings = {"n_layers": "2"}
    with pytest.raises(UserError, match="finetune_settings: unknown setting 'n_layers'"):
        pipeline.run_pipeline(config)
    assert not (tmp_path / "run").exists()


def test_table_without_results_says_what_to_run(tmp_path):
    (tmp_path / "empty_run").mkdir()
    assert main(["table", str(tmp_path / "empty_run")]) == 2


def test_matched_control_models_are_trained_scored_and_measured(tmp_path, tiny_source):
    config = _config(tmp_path, tiny_source)
    config.splits = ["severe"]
    config.control = "matched"
    run_dir = pipeline.run_pipeline(config)
    record = files.read_record(run_dir / "models" / "control_severe")
    assert record["config"]["split_name"] == "control_train_severe"
    assert record["config"]["init_from"] == str(run_dir / "models" / "general")
    results = json.loads((run_dir / "evaluation" / "severe" / "results.json").read_text())
    assert {"control_sum", "control_sum_stream"} <= set(results["filters"]) | set(results["variants"])
    with pytest.raises(UserError, match="control='both' is not one of none, matched"):
        pipeline.run_pipeline(dataclasses.replace(config, control="both"))


def test_a_filter_without_language_models_trains_and_scores_none(tmp_path, tiny_source, monkeypatch, capsys):
    def refuse(stage_config):
        raise AssertionError(f"nothing should be fine-tuned or scored: {stage_config.output_dir}")

    monkeypatch.setattr(pipeline, "finetune", refuse)
    monkeypatch.setattr(pipeline, "score_split", refuse)
    config = _config(tmp_path, tiny_source)
    config.splits = ["severe"]
    config.evaluation_settings = {"n_runs": "50", "candidates": "false"}
    layout = RunLayout(pipeline.run_pipeline(config))
    assert "reads no language-model scores: no model is fine-tuned or scored" in capsys.readouterr().out
    assert not layout.models.exists() and not layout.scores.exists()
    results = json.loads(layout.results("severe").read_text())
    assert results["filter_name"] == DEFAULT_FILTER and results["counts"]["evaluated"] == 120
    assert set(results["filters"]) == {"semcal", "no_filter", "oracle", "classifier", DEFAULT_FILTER}
    assert results["variants"] == {}
    assert (layout.filter_dir("severe") / filtering.SPEC_NAME).is_file()
    per_text = pd.read_csv(layout.per_text("severe"))
    assert per_text["text_id"].tolist() == list(range(120)) and "n_tokens" not in per_text.columns
    assert pipeline.needs_language_models(EvaluationConfig(candidates=False)) is False
    assert pipeline.needs_language_models(EvaluationConfig(candidates=False, filter="sum_labmom")) is True
    assert pipeline.needs_language_models(EvaluationConfig(candidates=False, filter="clipped")) is True
    assert pipeline.needs_language_models(EvaluationConfig(candidates=False, filter="ngram_mom")) is False
    assert pipeline.needs_language_models(EvaluationConfig(candidates=True)) is True


def test_an_evaluation_without_score_files_refuses_a_filter_that_reads_them(tmp_path):
    config = EvaluationConfig(general_scores_csv=None, real_scores_csv=None, filter="sum_labmom")
    with pytest.raises(UserError, match="filter=sum_labmom reads the language models' scores, but"):
        evaluate(config)
    with pytest.raises(UserError, match="general_heldout_csv is set but general_scores_csv and real_scores_csv"):
        evaluate(dataclasses.replace(config, filter="tfidf_labmom"))
    with pytest.raises(UserError, match="general_scores_csv is set but real_scores_csv is not"):
        evaluate(dataclasses.replace(config, general_scores_csv=str(tmp_path / "x.csv")))


def _source_holding(tmp_path, tiny_source, rows, extra_rows=None):
    """The tiny data set plus a real_train_custom of general_train `rows` (no general_train_row
    column, as the paper's Hub data sets ship their real splits) and, optionally, foreign rows."""
    dataset_dict = datasets.load_from_disk(str(tiny_source))
    real = dataset_dict["general_train"].select(rows)
    if extra_rows:
        real = datasets.concatenate_datasets([real, datasets.Dataset.from_dict(extra_rows)])
    dataset_dict["real_train_custom"] = real
    source = tmp_path / "holding"
    files.save_dataset_dict(dataset_dict, source)
    return source


def test_a_real_split_the_data_set_holds_is_kept_not_distorted(tmp_path, tiny_source, capsys):
    general = datasets.load_from_disk(str(tiny_source))["general_train"]
    # every row but three in four of the animals: a real split with general_train's labels, shifted
    rows = [row for row, label in enumerate(general["label"]) if label != "animals" or row % 4 == 0]
    config = _config(tmp_path, _source_holding(tmp_path, tiny_source, rows))
    config.splits, config.targets = ["custom"], {"custom": 0.3}  # the target is not used: the split is held
    config.evaluation_settings = {"n_runs": "50", "candidates": "false"}
    layout = RunLayout(pipeline.run_pipeline(config))
    held_line = f"the data set holds real_train_custom ({len(rows)} rows): it is used as it is, not distorted"
    assert held_line in capsys.readouterr().out
    kept = datasets.load_from_disk(str(layout.data))["real_train_custom"]
    assert kept["text"] == general.select(rows)["text"]
    # distort found each row's general_train row by its text and label
    assert [general["text"][row] for row in kept["general_train_row"]] == kept["text"]
    summary = pd.read_csv(layout.data / "distortion_summary.csv").set_index("split")
    assert summary.loc["real_train_custom", "strategy"] == "held"
    assert summary.loc["real_train_custom", "general_train_rows"] == "matched by text and label"
    assert 0 < summary.loc["real_train_custom", "achieved_kl"] < 1
    results = json.loads(layout.results("custom").read_text())
    assert results["counts"]["real_train"] == len(rows) and results["kl_general"] > 0
    assert results["filters"]["semcal"]["deception_reduction"] is not None


def test_a_held_split_with_rows_general_train_lacks_is_its_own_corpus(tmp_path, tiny_source):
    """Not a subset of general_train: the filters fit real vs general as two corpora (pooled)."""
    extra = {"text": ["a caption general_train never had"], "label": ["animals"]}
    config = _config(tmp_path, _source_holding(tmp_path, tiny_source, list(range(100)), extra))
    config.splits = ["custom"]  # no target needed for a held split
    config.evaluation_settings = {"n_runs": "50", "candidates": "false"}
    layout = RunLayout(pipeline.run_pipeline(config))
    results = json.loads(layout.results("custom").read_text())
    assert results["real_rows"] == "pooled" and results["counts"]["real_train"] == 101
    assert results["filters"][DEFAULT_FILTER]["accept_prob_mean"] * results["M"] == pytest.approx(1.0)
