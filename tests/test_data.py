import json

import datasets
import numpy as np
import pandas as pd
import pytest

from semcal.core.errors import UserError
from semcal.store import data


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": ["a dog barks", "rain falls", "a car honks", "a cat meows", "thunder rolls"],
            "label": ["animal", "weather", "vehicle", "animal", "weather"],
            "split": ["train", "train", "train", "test", "test"],
        }
    )


def _assert_general_splits(dataset_dict, n_train=3, n_test=2):
    assert set(dataset_dict) == {"general_train", "general_test"}
    assert dataset_dict["general_train"].num_rows == n_train
    assert dataset_dict["general_test"].num_rows == n_test
    assert "split" not in dataset_dict["general_train"].column_names


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_single_file_with_split_column(tmp_path, table, suffix):
    path = tmp_path / f"captions{suffix}"
    {
        ".csv": lambda p: table.to_csv(p, index=False),
        ".parquet": lambda p: table.to_parquet(p),
        ".jsonl": lambda p: table.to_json(p, orient="records", lines=True),
    }[suffix](path)
    dataset_dict = data.load_dataset_dict(str(path))
    _assert_general_splits(dataset_dict)
    assert dataset_dict["general_test"]["text"] == ["a cat meows", "thunder rolls"]


def test_one_file_per_split_by_mapping_and_by_folder(tmp_path, table):
    folder = tmp_path / "files"
    folder.mkdir()
    for split, rows in table.groupby("split"):
        rows.drop(columns="split").to_csv(folder / f"general_{split}.csv", index=False)
    _assert_general_splits(data.load_dataset_dict(str(folder)))
    mapping = f"general_train={folder / 'general_train.csv'},general_test={folder / 'general_test.csv'}"
    _assert_general_splits(data.load_dataset_dict(mapping))


def test_save_to_disk_folder(tmp_path, table):
    dataset_dict = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(rows.drop(columns="split"), preserve_index=False)
            for split, rows in table.groupby("split")
        }
    )
    dataset_dict.save_to_disk(str(tmp_path / "saved"))
    _assert_general_splits(data.load_dataset_dict(str(tmp_path / "saved")))


def test_real_data_loads_with_train_test_aliases(shared_data):
    dataset_dict = data.load_dataset_dict(str(shared_data / "audiocaps_labeled" / "audiocaps_labeled.csv"))
    assert dataset_dict["general_train"].num_rows == 16634
    assert dataset_dict["general_test"].num_rows == 4820
    labels = data.labels_of(dataset_dict["general_train"], "general_train", "top_category")
    assert data.label_counts(labels)["Sounds of things"] == 7919
    ag_news = data.load_dataset_dict(
        f"general_train={shared_data / 'ag_news' / 'train_8k.csv'},general_test={shared_data / 'ag_news' / 'test.csv'}"
    )
    assert set(data.labels_of(ag_news["general_test"], "general_test", "label")) == {"1", "2", "3", "4"}


def test_missing_split_column_names_columns_and_fix(tmp_path, table):
    path = tmp_path / "nosplit.csv"
    table.drop(columns="split").to_csv(path, index=False)
    with pytest.raises(
        UserError, match=r"no split column 'split' \(columns: \['text', 'label'\]\).*one file per split"
    ):
        data.load_dataset_dict(str(path))


def test_unparseable_file_is_named(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(UserError, match="could not parse .*broken.parquet as PARQUET"):
        data.load_dataset_dict(str(path))


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_dataset_dict(str(tmp_path / "nothing.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a saved data set"):
        data.load_dataset_dict(str(tmp_path / "empty"))


def test_hub_id_offline_is_one_clear_sentence():
    with pytest.raises(
        UserError, match=r"could not load 'BeyondDeepFakeDetection/CIFAR-100' from the Hugging Face Hub.*save_to_disk"
    ):
        data.load_dataset_dict("BeyondDeepFakeDetection/CIFAR-100")


def test_missing_relative_folder_is_named_as_a_path_and_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        data.load_dataset_dict("evalin/x")  # could be a Hub id: looked for here, then on the Hub
    message = str(caught.value)
    assert f"{tmp_path / 'evalin' / 'x'} does not exist" in message
    assert "could not load 'evalin/x' from the Hugging Face Hub" in message


def test_names_that_can_only_be_paths():
    for name in ("./x", "/data/x", "~/x", "runs/demo/data", "train.csv", "data.jsonl", "a\\b"):
        assert data.looks_like_local_path(name), name
    for name in ("gpt2", "BeyondDeepFakeDetection/CIFAR-100", "evalin/x", "florence-community/Florence-2-large"):
        assert not data.looks_like_local_path(name), name


def test_missing_split_and_column_list_what_exists(tmp_path, table):
    path = tmp_path / "captions.csv"
    table.to_csv(path, index=False)
    dataset_dict = data.load_dataset_dict(str(path))
    with pytest.raises(
        UserError, match=r"no split 'real_train_mild'; the data set has splits \['general_test', 'general_train'\]"
    ):
        data.get_split(dataset_dict, "real_train_mild")
    with pytest.raises(UserError, match=r"no column 'caption'; its columns are \['text', 'label'\]"):
        data.texts_of(dataset_dict["general_train"], "general_train", "caption")


def test_empty_texts_and_missing_labels_are_counted_with_row_ids(tmp_path):
    path = tmp_path / "gaps.csv"
    pd.DataFrame(
        {"text": ["ok", "", "fine", None, "  "], "label": ["a", None, "b", "a", "b"], "split": ["train"] * 5}
    ).to_csv(path, index=False)
    split = data.load_dataset_dict(str(path))["general_train"]
    with pytest.raises(UserError, match=r"3 empty or missing texts .*first row ids: \[1, 3, 4\]"):
        data.texts_of(split, "general_train", "text")
    with pytest.raises(UserError, match=r"1 missing labels .*first row ids: \[1\]"):
        data.labels_of(split, "general_train", "label")


def test_label_maps(tmp_path):
    labels = np.array(["apple", "1", "woman"], dtype=object)
    assert list(data.apply_label_map(labels, data.load_label_map("cifar100_superclass"))) == [
        "fruit_and_vegetables",
        "fish",
        "people",
    ]
    esc = data.load_label_map("esc50_category")
    assert (
        len({v for k, v in esc.items()}) == 5 and esc["dog"] == esc["0"] == "Animals" and esc["49"] == esc["hand_saw"]
    )
    with pytest.raises(UserError, match=r"2 labels are not in the label map: 'unicorn', 'zebra'"):
        data.apply_label_map(
            np.array(["zebra", "apple", "unicorn"], dtype=object), data.load_label_map("cifar100_superclass")
        )
    custom = tmp_path / "map.json"
    custom.write_text(json.dumps({"1": "odd", "2": "even"}))
    assert list(data.apply_label_map(np.array(["2", "1"], dtype=object), data.load_label_map(str(custom)))) == [
        "even",
        "odd",
    ]
    with pytest.raises(UserError, match="not found: give a JSON file path or one of .*cifar100_superclass"):
        data.load_label_map("no_such_map")


def test_cifar_superclasses_are_twenty_of_five():
    mapping = data.load_label_map("cifar100_superclass")
    names = {k: v for k, v in mapping.items() if not k.isdigit()}
    assert len(names) == 100
    assert sorted(pd.Series(names).value_counts().unique()) == [5]
    # integer ids number the fine names alphabetically
    assert all(mapping[str(i)] == names[name] for i, name in enumerate(sorted(names)))


def test_heldout_mask_is_shared_across_subsets():
    heldout = data.heldout_mask(np.arange(1000), 1000, 0.2, seed=42)
    assert heldout.sum() == 200
    subset_rows = np.array([5, 17, 400, 999])
    assert np.array_equal(data.heldout_mask(subset_rows, 1000, 0.2, seed=42), heldout[subset_rows])
    assert not np.array_equal(data.heldout_mask(np.arange(1000), 1000, 0.2, seed=1), heldout)
