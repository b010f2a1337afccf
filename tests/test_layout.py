"""semcal.protocol.layout: the one place that names the paths of a run folder."""

from pathlib import Path

from semcal.filter import filtering
from semcal.protocol import pipeline
from semcal.protocol.layout import FILTER_FOLDER, RunLayout


def test_the_pipeline_writes_where_the_layout_says(tmp_path):
    layout = RunLayout(tmp_path / "run")
    config = pipeline.PipelineConfig(run_dir=str(layout.run_dir), splits=["mild"], control="matched")
    distort_config, finetune_configs, score_configs, evaluation_configs = pipeline._stage_configs(config, held={})
    assert Path(distort_config.output_dir) == layout.data
    assert [Path(c.output_dir) for c in finetune_configs] == [
        layout.general_model,
        layout.real_model("mild"),
        layout.control_model("mild"),
    ]
    assert {Path(c.tokenizer_dir) for c in finetune_configs} == {layout.tokenizer}
    assert Path(score_configs[0].output_dir) == layout.score_dir("general_test", "general")
    (evaluation,) = evaluation_configs
    assert Path(evaluation.output_dir) == layout.evaluation_dir("mild")
    assert Path(evaluation.real_heldout_csv) == layout.score_file("heldout", "real_mild")
    assert Path(evaluation.control_scores_csv) == layout.score_file("general_test", "control_mild")


def test_evaluation_folders_know_their_run_and_splits_come_in_paper_order(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.evaluated_splits() == []
    for split in ("severe", "custom", "baseline"):
        layout.evaluation_dir(split).mkdir(parents=True)
        layout.results(split).write_text("{}")
    (layout.evaluation / "unfinished").mkdir()
    assert layout.evaluated_splits() == ["baseline", "severe", "custom"]
    assert layout.split_folders() == ["baseline", "custom", "severe", "unfinished"]
    assert RunLayout.of_evaluation(layout.evaluation_dir("severe")) == layout
    assert layout.filter_dir("severe").name == FILTER_FOLDER == filtering.FOLDER_NAME
    assert layout.stream_gif("severe").parent == layout.explain_page("severe").parent == layout.evaluation_dir("severe")
