import ast
import dataclasses
import importlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from semcal.cli.cli import STAGES, main
from semcal.core.errors import UserError
from semcal.protocol.demo_data import CATEGORY_SHARES, generate_demo, generate_demo_rows
from semcal.store import data
from semcal.store.labelmap import build_audioset_map, read_ontology

from .conftest import REPO_ROOT


def test_audioset_map_reproduces_the_data_sets_top_category(shared_data, tmp_path):
    output = tmp_path / "audioset.json"
    assert (
        main(
            [
                "labelmap",
                "audioset",
                "--ontology",
                str(shared_data / "audioset" / "ontology.json"),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    mapping = data.load_label_map(str(output))
    captions = pd.read_csv(shared_data / "audiocaps_labeled" / "audiocaps_labeled.csv")
    mapped = data.apply_label_map(captions["top_label"].to_numpy(dtype=object), mapping)
    assert (mapped == captions["top_category"].to_numpy(dtype=object)).all()
    classes = pd.read_csv(shared_data / "audioset" / "class_labels_indices.csv")
    assert set(classes["mid"]) <= set(mapping) and set(classes["display_name"]) <= set(mapping)
    assert len(set(mapping.values())) == 7


def test_audioset_map_prefers_the_first_top_category():
    ontology = [
        {"id": "/t/a", "name": "A", "child_ids": ["/t/x"]},
        {"id": "/t/b", "name": "B", "child_ids": ["/t/x", "/t/y"]},
        {"id": "/t/x", "name": "X", "child_ids": []},
        {"id": "/t/y", "name": "Y", "child_ids": []},
    ]
    mapping = build_audioset_map(ontology)
    assert mapping["X"] == mapping["/t/x"] == "A" and mapping["Y"] == "B" and mapping["A"] == "A"


def test_bad_ontology_is_a_clear_error(tmp_path):
    path = tmp_path / "ontology.json"
    path.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="not an AudioSet ontology"):
        read_ontology(path)


def test_demo_generator_is_seeded_labelled_and_caption_length():
    texts, labels = generate_demo_rows(3000, seed=7)
    assert (texts, labels) == generate_demo_rows(3000, seed=7)
    assert texts != generate_demo_rows(3000, seed=8)[0]
    lengths = np.array([len(t.split()) for t in texts])
    assert lengths.min() >= 10 and lengths.max() <= 30
    shares = pd.Series(labels).value_counts(normalize=True)
    for category, share in CATEGORY_SHARES.items():
        assert abs(shares[category] - share) < 0.03
    assert len(set(texts)) > 0.9 * len(texts), "captions vary"
    demo = generate_demo(n_train=200, n_test=50, seed=0)
    assert demo["general_train"].num_rows == 200 and demo["general_test"].column_names == ["text", "label"]


def test_demo_generator_refuses_a_negative_seed():
    with pytest.raises(UserError, match="seed must be 0 or more"):
        generate_demo(n_train=10, n_test=5, seed=-1)


def _script_settings(script):
    tree = ast.parse((REPO_ROOT / script).read_text())
    return [
        node.targets[0].id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    ]


@pytest.mark.parametrize("command", [name for name, spec in STAGES.items() if spec[3]])
def test_each_script_sets_exactly_its_stage_settings(command):
    module_name, _, config_name, script = STAGES[command]
    assert (REPO_ROOT / script).exists(), f"{script} is missing"
    config_cls = getattr(importlib.import_module(module_name), config_name)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    assert _script_settings(script) == fields
    namespace = {}
    exec_vars = ast.Module(
        body=[n for n in ast.parse((REPO_ROOT / script).read_text()).body if isinstance(n, ast.Assign)], type_ignores=[]
    )
    exec(compile(exec_vars, script, "exec"), namespace)  # the script's own literals, to compare defaults
    assert {name: namespace[name] for name in fields} == dataclasses.asdict(config_cls())
    for line in (REPO_ROOT / script).read_text().splitlines():
        if any(line.startswith(f"{name} = ") for name in fields):
            assert "  # " in line, f"{script}: setting without a comment: {line}"


def test_script_runs_and_rejects_unknown_settings():
    result = subprocess.run([sys.executable, "distort.py", "--nope=1"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "unknown setting 'nope'" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "semcal", "distort", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--targets=baseline=0.0,mild=0.25,moderate=0.6,severe=0.8" in result.stdout
