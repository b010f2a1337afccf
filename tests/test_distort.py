import dataclasses

import datasets
import numpy as np
import pandas as pd
import pytest

from semcal.core import console
from semcal.core.errors import UserError
from semcal.filter.calibration import kl_divergence
from semcal.protocol.demo_data import generate_demo
from semcal.protocol.distort import DistortConfig, distort
from semcal.store import data, files

TARGETS = {"baseline": 0.0, "mild": 0.25, "moderate": 0.6, "severe": 0.8}


@pytest.fixture(scope="module")
def audiocaps_run(shared_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("audiocaps") / "data"
    config = DistortConfig(
        dataset_name=str(shared_data / "audiocaps_labeled" / "audiocaps_labeled.csv"),
        output_dir=str(output),
        label_column="top_category",
        targets=TARGETS,
    )
    distort(config)
    return output


def _kl_of_split(folder, split, label_column):
    dataset_dict = data.load_dataset_dict(str(folder))
    general = data.labels_of(dataset_dict["general_train"], "general_train", label_column)
    real = data.labels_of(dataset_dict[split], split, label_column)
    order = sorted(set(general))
    p = data.label_counts(general, order).to_numpy() / len(general)
    q = data.label_counts(real, order).to_numpy() / len(real)
    return kl_divergence(p, q), dataset_dict


@pytest.mark.parametrize("name, target", [(n, t) for n, t in TARGETS.items() if t > 0])
def test_audiocaps_targets_within_two_percent(audiocaps_run, name, target):
    kl, dataset_dict = _kl_of_split(audiocaps_run, f"real_train_{name}", "top_category")
    assert abs(kl - target) <= 0.02 * target
    real = dataset_dict[f"real_train_{name}"]
    rows = np.array(real[data.GENERAL_ROW_COLUMN])
    assert len(set(rows)) == len(rows), "drawn without replacement"
    general_texts = dataset_dict["general_train"]["caption"]
    assert [general_texts[i] for i in rows[:50]] == real["caption"][:50]


def test_baseline_is_uniform_fraction_and_outputs_are_written(audiocaps_run):
    kl, dataset_dict = _kl_of_split(audiocaps_run, "real_train_baseline", "top_category")
    assert kl < 0.01
    assert dataset_dict["real_train_baseline"].num_rows == round(0.4 * 16634)
    summary = pd.read_csv(audiocaps_run / "distortion_summary.csv")
    assert list(summary["split"]) == [f"real_train_{n}" for n in TARGETS]
    assert np.allclose(summary["M"], 16634 / summary["rows"])
    counts = pd.read_csv(audiocaps_run / "distortion_counts.csv")
    assert counts["general_train_count"].sum() == 16634
    assert counts["real_train_severe_count"].sum() == summary.set_index("split").loc["real_train_severe", "rows"]
    assert (audiocaps_run / "label_distributions.png").stat().st_size > 10_000
    assert (audiocaps_run / "semcal_record.json").exists()


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "data"
    generate_demo(n_train=3000, n_test=500, seed=0).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("strategy", ["tilt", "max_subset"])
def test_demo_targets_within_two_percent_in_place(demo_folder, strategy, tmp_path):
    output = tmp_path / "out"
    distort(DistortConfig(dataset_name=str(demo_folder), output_dir=str(output), strategy=strategy, targets=TARGETS))
    summary = pd.read_csv(output / "distortion_summary.csv").set_index("split")
    for name, target in TARGETS.items():
        kl, _ = _kl_of_split(output, f"real_train_{name}", "label")
        assert kl == pytest.approx(summary.loc[f"real_train_{name}", "achieved_kl"])
        if target > 0:
            assert abs(kl - target) <= 0.02 * target


def test_max_subset_keeps_more_rows_than_tilt(demo_folder, tmp_path):
    sizes = {}
    for strategy in ("tilt", "max_subset"):
        output = tmp_path / strategy
        distort(
            DistortConfig(
                dataset_name=str(demo_folder), output_dir=str(output), strategy=strategy, targets={"moderate": 0.6}
            )
        )
        sizes[strategy] = pd.read_csv(output / "distortion_summary.csv")["rows"].iloc[0]
    assert sizes["max_subset"] > sizes["tilt"]


def test_adds_splits_to_the_input_folder_and_keeps_existing_ones(demo_folder, tmp_path):
    folder = tmp_path / "inplace"
    data.load_dataset_dict(str(demo_folder)).save_to_disk(str(folder))
    distort(DistortConfig(dataset_name=str(folder), targets={"mild": 0.25}))
    assert set(data.load_dataset_dict(str(folder))) == {"general_train", "general_test", "real_train_mild"}


def test_same_seed_same_rows_other_seed_other_rows(demo_folder, tmp_path):
    def rows(seed, name):
        output = tmp_path / name
        distort(DistortConfig(dataset_name=str(demo_folder), output_dir=str(output), seed=seed, targets={"mild": 0.25}))
        return data.load_dataset_dict(str(output))["real_train_mild"][data.GENERAL_ROW_COLUMN]

    assert rows(3, "a") == rows(3, "b")
    assert rows(3, "a") != rows(4, "c")


def test_infeasible_targets_say_why_and_write_nothing(tmp_path):
    tiny = datasets.DatasetDict(
        {
            "general_train": datasets.Dataset.from_dict(
                {"text": [f"t{i}" for i in range(12)], "label": ["a"] * 6 + ["b"] * 6}
            )
        }
    )
    tiny.save_to_disk(str(tmp_path / "tiny"))
    output = tmp_path / "out"
    with pytest.raises(
        UserError, match=r"nothing was written(.|\n)*real_train_extreme \(target KL 5.0\): .*reaches KL 0.35"
    ):
        distort(DistortConfig(dataset_name=str(tmp_path / "tiny"), output_dir=str(output), targets={"extreme": 5.0}))
    assert not output.exists()
    one_label = datasets.DatasetDict(
        {"general_train": datasets.Dataset.from_dict({"text": ["x", "y"], "label": ["a", "a"]})}
    )
    one_label.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(UserError, match="single label"):
        distort(DistortConfig(dataset_name=str(tmp_path / "one"), output_dir=str(output), targets={"mild": 0.25}))
    with pytest.raises(UserError, match="strategy must be one of tilt, max_subset"):
        distort(DistortConfig(dataset_name=str(tmp_path / "one"), output_dir=str(output), strategy="shuffle"))


def test_label_map_is_applied_before_distorting(tmp_path):
    fine = ["dog", "rooster", "rain", "wind", "engine", "siren"] * 40
    dataset_dict = datasets.DatasetDict(
        {"general_train": datasets.Dataset.from_dict({"text": [f"clip {i}" for i in range(len(fine))], "label": fine})}
    )
    dataset_dict.save_to_disk(str(tmp_path / "esc"))
    distort(
        DistortConfig(
            dataset_name=str(tmp_path / "esc"),
            output_dir=str(tmp_path / "out"),
            label_map="esc50_category",
            targets={"mild": 0.1},
        )
    )
    counts = pd.read_csv(tmp_path / "out" / "distortion_counts.csv")
    assert sorted(counts["label"]) == ["Animals", "Exterior/urban noises", "Natural soundscapes & water sounds"]


def test_distorting_twice_into_one_folder_with_other_targets_needs_overwrite(demo_folder, tmp_path):
    output = tmp_path / "out"
    distort(DistortConfig(dataset_name=str(demo_folder), output_dir=str(output), targets={"mild": 0.25}))
    with pytest.raises(UserError, match=r"other settings \(targets: .*overwrite=true"):
        distort(DistortConfig(dataset_name=str(demo_folder), output_dir=str(output), targets={"severe": 0.8}))
    assert "real_train_mild" in data.load_dataset_dict(str(output))  # the first run's split is still there
    distort(
        DistortConfig(dataset_name=str(demo_folder), output_dir=str(output), targets={"severe": 0.8}, overwrite=True)
    )
    assert set(data.load_dataset_dict(str(output))) == {"general_train", "general_test", "real_train_severe"}


def test_one_line_per_run_and_a_second_run_is_up_to_date(demo_folder, tmp_path, capsys):
    console.setup()
    config = DistortConfig(dataset_name=str(demo_folder), output_dir=str(tmp_path / "out"), targets={"mild": 0.25})
    distort(config)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("distort: done in") and "real_train_mild" in lines[0]
    written = files.read_record(tmp_path / "out")["written_at"]
    distort(DistortConfig(**{**vars(config), "output_dir": f"{tmp_path}/./out"}))  # another spelling, same folder
    assert capsys.readouterr().out.splitlines() == [
        f"distort: up to date, skipped ({tmp_path}/out already holds this distorted data set)"
    ]
    assert files.read_record(tmp_path / "out")["written_at"] == written


def test_output_dir_that_is_a_file_is_refused_and_nothing_is_left_behind(demo_folder, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    with pytest.raises(UserError, match="is a file, not a folder"):
        distort(DistortConfig(dataset_name=str(demo_folder), output_dir=str(a_file), targets={"mild": 0.25}))
    assert a_file.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no .tmp or .partial folder left


def test_output_dir_holding_another_stages_output_is_refused(demo_folder, tmp_path):
    model = tmp_path / "model"
    files.write_record(model, "finetune", {})
    with pytest.raises(UserError, match="holds the output of the 'finetune' stage"):
        distort(DistortConfig(dataset_name=str(demo_folder), output_dir=str(model), targets={"mild": 0.25}))
    assert [p.name for p in model.iterdir()] == [files.RECORD_NAME]


def test_negative_seed_is_a_user_error(demo_folder, tmp_path):
    with pytest.raises(UserError, match="seed must be 0 or more"):
        distort(DistortConfig(dataset_name=str(demo_folder), output_dir=str(tmp_path / "out"), seed=-1))
    assert not (tmp_path / "out").exists()


def test_controls_are_uniform_subsets_as_large_as_each_real_split(tmp_path):
    source = tmp_path / "source"
    files.save_dataset_dict(generate_demo(n_train=600, n_test=50, seed=0), source)
    config = DistortConfig(
        dataset_name=str(source), output_dir=str(tmp_path / "out"), targets={"mild": 0.25, "severe": 0.8}, controls=True
    )
    dataset = data.load_dataset_dict(str(distort(config)))
    for name in ("mild", "severe"):
        real, control = dataset[data.real_split_name(name)], dataset[data.control_split_name(name)]
        rows = np.asarray(control[data.GENERAL_ROW_COLUMN])
        assert control.num_rows == real.num_rows and len(set(rows)) == len(rows) and rows.max() < 600
        assert control["text"] == [dataset["general_train"]["text"][row] for row in rows]
    # Uniform, not tilted: its labels stay close to general_train's (severe's real split is far from it).
    general = data.label_counts(dataset["general_train"]["label"]).to_numpy()
    control_counts = data.label_counts(
        dataset["control_train_severe"]["label"], data.label_counts(dataset["general_train"]["label"]).index
    ).to_numpy()
    assert kl_divergence(control_counts / control_counts.sum(), general / general.sum()) < 0.1
    again = data.load_dataset_dict(str(distort(dataclasses.replace(config, output_dir=str(tmp_path / "again")))))
    assert (
        again["control_train_mild"][data.GENERAL_ROW_COLUMN] == dataset["control_train_mild"][data.GENERAL_ROW_COLUMN]
    )


def test_a_split_the_data_set_holds_is_never_replaced_and_is_reported(demo_folder, tmp_path):
    source = tmp_path / "holding"
    dataset_dict = data.load_dataset_dict(str(demo_folder))
    dataset_dict["real_train_custom"] = dataset_dict["general_train"].select(range(0, 3000, 3))
    dataset_dict.save_to_disk(str(source))
    output = tmp_path / "out"
    with pytest.raises(UserError, match="already holds real_train_custom: drop custom from targets to keep"):
        distort(DistortConfig(dataset_name=str(source), output_dir=str(output), targets={"custom": 0.3}))
    distort(DistortConfig(dataset_name=str(source), output_dir=str(output), targets={"mild": 0.25}))
    written = data.load_dataset_dict(str(output))
    rows = written["real_train_custom"][data.GENERAL_ROW_COLUMN]  # matched by text and label: duplicates may swap
    assert len(set(rows)) == 1000
    assert [written["general_train"]["text"][row] for row in rows] == written["real_train_custom"]["text"]
    summary = pd.read_csv(output / "distortion_summary.csv").set_index("split")
    kl, _ = _kl_of_split(output, "real_train_custom", "label")
    assert summary.loc["real_train_custom", "strategy"] == "held"
    assert summary.loc["real_train_custom", "achieved_kl"] == pytest.approx(kl)
    # with no target at all, distort still keeps, matches and reports the held split
    distort(DistortConfig(dataset_name=str(source), output_dir=str(tmp_path / "held_only"), targets={}))
    assert pd.read_csv(tmp_path / "held_only" / "distortion_summary.csv")["split"].tolist() == ["real_train_custom"]
