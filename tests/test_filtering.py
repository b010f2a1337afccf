"""The saved filter (semcal.filter.filtering) and the filter stage (semcal filter): an evaluation saves
THE filter, loading it back gives the evaluation's acceptance, and the command filters files
and streams (offline, small data, tiny models)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from semcal.cli.cli import main
from semcal.core.errors import UserError
from semcal.filter.filtering import Filter
from semcal.lm.scoring import ScoreConfig, score_split
from semcal.protocol.evaluation import EvaluationConfig, evaluate
from semcal.store import files
from semcal.store.data import load_dataset_dict
from tests.lm_fixtures import tiny_model_folder, write_demo_dataset
from tests.test_calibrated_filters import _config
from tests.test_evaluation import _build_dataset


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory):
    """The TF-IDF filter tfidf_labmom on the synthetic evaluation, nothing else measured."""
    root = tmp_path_factory.mktemp("filter_tfidf")
    splits = _build_dataset(root / "data")
    config = _config(root, splits, filter="tfidf_labmom", candidates=False, classifier=False, n_runs=20)
    results = evaluate(config)
    per_text = pd.read_csv(root / "out" / "per_text.csv", keep_default_na=False)
    return {"root": root, "results": results, "per_text": per_text, "filter": root / "out" / "filter"}


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """Two tiny language models score general_test; the evaluation's filter is clipped_stream."""
    root = tmp_path_factory.mktemp("filter_lm")
    data = write_demo_dataset(root / "data", n_train=200, n_test=40)
    texts = load_dataset_dict(str(data))["general_train"]["text"]
    scores = {}
    for role, seed in (("general", 0), ("real", 1)):
        model = tiny_model_folder(root / "models" / role, texts, seed=seed)
        output = root / "scores" / f"general_test.{role}"
        scores[role] = str(score_split(ScoreConfig(dataset_name=str(data), model=str(model), output_dir=str(output))))
    config = EvaluationConfig(
        dataset_name=str(data),
        distortion="animals",
        general_scores_csv=scores["general"],
        real_scores_csv=scores["real"],
        general_heldout_csv=None,
        real_heldout_csv=None,
        filter="clipped_stream",
        candidates=False,
        classifier=False,
        n_runs=20,
        output_dir=str(root / "out"),
    )
    results = evaluate(config)
    per_text = pd.read_csv(root / "out" / "per_text.csv", keep_default_na=False)
    return {"root": root, "results": results, "per_text": per_text, "filter": root / "out" / "filter"}


def test_the_evaluation_saves_its_filter_without_pickles(tfidf_run):
    folder = tfidf_run["filter"]
    names = ["drift", "filter.json", "tfidf.safetensors", "tfidf_vocabulary.json"]
    assert sorted(path.name for path in folder.iterdir()) == names
    # The drift reference and label posterior (semcal.filter.drift): plain arrays and JSON too.
    drift_names = ["label_posterior.safetensors", "label_vocabulary.json", "reference.safetensors"]
    assert sorted(path.name for path in (folder / "drift").iterdir()) == drift_names
    spec = files.read_json(folder / "filter.json")
    calibration = tfidf_run["results"]["filters"]["tfidf_labmom"]["calibration"]
    assert spec["filter"] == "tfidf_labmom" and spec["source"] == "tfidf" and spec["format_version"] == 2
    assert spec["m"] == pytest.approx(tfidf_run["results"]["M"]) and spec["pass_rate"] == pytest.approx(1 / spec["m"])
    link = {"link": "linear", "temperature": calibration["temperature"], "shift": calibration["shift"]}
    assert spec["calibration"] == {"name": "labmom", **link}
    saved = spec["stats"]["calibration"]
    assert {key: saved[key] for key in ("criterion", "m", "shift_statistic")} == {
        key: calibration[key] for key in ("criterion", "m", "shift_statistic")
    }
    assert spec["source_state"]["form"] == "subset" and spec["source_state"]["prior"] > 0
    assert {"general_scores_csv", "general_test", "real_train_mild"} <= set(spec["fitted_on"])
    assert set(files.read_safetensors(folder / "tfidf.safetensors")) == {"idf", "coef", "intercept"}


def test_the_saved_tfidf_filter_accepts_as_the_evaluation_did(tfidf_run):
    per_text = tfidf_run["per_text"]
    accept = Filter.load(tfidf_run["filter"]).accept_probs(per_text["text"].tolist())
    assert np.std(per_text["accept_prob"]) > 0.01, "a flat filter would pass trivially"
    np.testing.assert_allclose(accept, per_text["accept_prob"], rtol=0, atol=1e-6)


def test_the_saved_language_model_filter_accepts_as_the_evaluation_did(lm_run):
    per_text = lm_run["per_text"]
    spec = files.read_json(lm_run["filter"] / "filter.json")
    models = spec["source_state"]["models"]
    assert spec["filter"] == "clipped_stream" and set(models) == {"general", "real"}
    assert spec["source_state"]["top_p"] == 0.75
    assert all(model["weights_fingerprint"] and model["tokenizer_fingerprint"] for model in models.values())
    model = Filter.load(lm_run["filter"])
    scored = model.score(per_text["text"].tolist(), top_tokens=3)
    assert np.std(per_text["accept_prob"]) > 0.01, "a flat filter would pass trivially"
    np.testing.assert_allclose(scored.accept, per_text["accept_prob"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scored.scores, per_text["score"], rtol=0, atol=1e-6)
    assert scored.tokens_up == per_text["tokens_up"].tolist()


def test_decisions_are_reproducible_by_seed(tfidf_run):
    model = Filter.load(tfidf_run["filter"])
    texts = tfidf_run["per_text"]["text"].tolist()
    first, again, other = model.decide(texts, seed=5), model.decide(texts, seed=5), model.decide(texts, seed=6)
    assert first.dtype == bool and (first == again).all() and (first != other).any()
    assert abs(first.mean() - model.accept_probs(texts).mean()) < 0.1


def _run(argv, capsys):
    code = main(["filter", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_filters_a_csv_file(tfidf_run, tmp_path, capsys):
    per_text = tfidf_run["per_text"].head(50)
    source = tmp_path / "new.csv"
    pd.DataFrame({"uid": [f"item-{i}" for i in range(50)], "caption": per_text["text"]}).to_csv(source, index=False)
    output = tmp_path / "decisions.csv"
    argv = [f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}", "--seed=4"]
    code, out, _ = _run([*argv, "--text_column=caption", "--id_column=uid", "--batch_size=7"], capsys)
    assert code == 0 and "50 items" in out
    decisions = pd.read_csv(output, keep_default_na=False)
    assert decisions["id"].tolist() == [f"item-{i}" for i in range(50)]
    np.testing.assert_allclose(decisions["accept_prob"], per_text["accept_prob"], rtol=0, atol=1e-6)
    ids = [f"item-{i}" for i in range(50)]
    expected = Filter.load(tfidf_run["filter"]).decide(per_text["text"].tolist(), seed=4, ids=ids)
    assert (decisions["decision"].astype(bool) == expected).all(), "each decision is keyed by its id, not its batch"
    assert decisions["tokens_up"].str.len().gt(0).any() and decisions["error"].eq("").all()


def test_streaming_jsonl_from_standard_input_survives_a_malformed_line(tfidf_run, monkeypatch, capsys):
    texts = tfidf_run["per_text"]["text"].tolist()[:6]
    lines = [json.dumps({"text": text}) for text in texts[:2]]
    lines += [
        '{"text": "a dog',
        json.dumps([1, 2]),
        json.dumps({"other": 1}),
        *map(json.dumps, ({"text": t} for t in texts[2:])),
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    argv = [f"--filter={tfidf_run['filter']}", "--input=-", "--stream=true", "--batch_size=2", "--seed=9"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [record.get("line") for record in records] == list(range(1, 10))
    errors = [record for record in records if "error" in record]
    assert [e["error"][:7] for e in errors] == ["line 3:", "line 4:", "line 5:"]
    assert "not JSON" in errors[0]["error"] and "no 'text' field" in errors[2]["error"]
    decided = [record for record in records if "decision" in record]
    assert [record["text"] for record in decided] == texts and [r["id"] for r in decided] == [1, 2, 6, 7, 8, 9]
    expected = Filter.load(tfidf_run["filter"]).decide(texts, seed=9)
    assert [record["decision"] for record in decided] == expected.tolist()
    assert "6 items" in err, "log lines go to standard error while records go to standard output"


def test_plain_text_lines_are_items(tfidf_run, tmp_path, capsys):
    source = tmp_path / "texts.txt"
    source.write_text("a car engine starts\n\nrain falls\n")
    output = tmp_path / "out.jsonl"
    code, _, _ = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", f"--output={output}"], capsys)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert code == 0 and [(r["id"], r["text"]) for r in records] == [(1, "a car engine starts"), (3, "rain falls")]


def test_a_parquet_file_and_standard_input_text_lines_are_read(tfidf_run, tmp_path, monkeypatch, capsys):
    texts = tfidf_run["per_text"]["text"].tolist()[:4]
    source = tmp_path / "new.parquet"
    pd.DataFrame({"text": texts}).to_parquet(source)
    expected = Filter.load(tfidf_run["filter"]).decide(texts, seed=2).tolist()
    capsys.readouterr()
    code, out, _ = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", "--seed=2"], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["id"] for r in records] == [1, 2, 3, 4] and [r["decision"] for r in records] == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts) + "\n"))
    code, out, _ = _run([f"--filter={tfidf_run['filter']}", "--input=-", "--input_format=text", "--seed=2"], capsys)
    assert code == 0 and [json.loads(line)["decision"] for line in out.splitlines()] == expected


def test_a_missing_filter_folder_is_one_clear_message(tmp_path, capsys):
    code, _, err = _run([f"--filter={tmp_path / 'nope'}", "--input=-"], capsys)
    assert code == 2 and "holds no saved filter" in err and "semcal run" in err and "Traceback" not in err


def test_an_unknown_format_version_is_refused(tfidf_run, tmp_path):
    folder = shutil.copytree(tfidf_run["filter"], tmp_path / "filter")
    spec = files.read_json(folder / "filter.json")
    files.write_json(folder / "filter.json", {**spec, "format_version": 99})
    with pytest.raises(UserError, match="format_version 99; this semcal reads the integer 2: fit the filter again"):
        Filter.load(folder)


@pytest.mark.parametrize("what", ["weights", "tokenizer", "gone"])
def test_a_changed_model_is_refused(lm_run, tmp_path, what):
    folder = shutil.copytree(lm_run["filter"], tmp_path / "filter")
    spec = files.read_json(folder / "filter.json")
    real = spec["source_state"]["models"]["real"]
    if what == "gone":
        real["path"] = real["absolute_path"] = str(tmp_path / "moved")
    else:
        real[f"{what}_fingerprint"] = "0" * 16
    files.write_json(folder / "filter.json", spec)
    message = {"weights": "real model in .* changed", "tokenizer": "tokenizer .* changed", "gone": "is gone"}[what]
    with pytest.raises(UserError, match=message):
        Filter.load(folder)


def test_a_wrong_text_column_and_empty_input_are_one_clear_message(tfidf_run, tmp_path, monkeypatch, capsys):
    source = tmp_path / "new.csv"
    pd.DataFrame({"caption": ["a dog barks"]}).to_csv(source, index=False)
    code, _, err = _run([f"--filter={tfidf_run['filter']}", f"--input={source}", "--output=-"], capsys)
    assert code == 2 and "no column 'text'" in err and "caption" in err and "text_column" in err
    monkeypatch.setattr("sys.stdin", io.StringIO('{"caption": "a dog"}\n'))
    code, _, err = _run([f"--filter={tfidf_run['filter']}", "--input=-"], capsys)
    assert code == 2 and "no 'text' field" in err and "text_column" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    output = tmp_path / "out.jsonl"
    code, _, err = _run([f"--filter={tfidf_run['filter']}", f"--input={empty}", f"--output={output}"], capsys)
    assert code == 2 and "holds no texts" in err and not output.exists()


def test_an_interrupted_run_leaves_the_existing_output_as_it_was(tfidf_run, tmp_path, monkeypatch):
    from semcal.filter import filtering
    from semcal.stream.filter_stream import FilterConfig, filter_texts

    calls = {"n": 0}
    real_score = filtering.Filter.score

    def fails_on_the_second_batch(self, texts, top_tokens=0):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_score(self, texts, top_tokens)

    monkeypatch.setattr(filtering.Filter, "score", fails_on_the_second_batch)
    monkeypatch.setattr("semcal.stream.filter_stream.FILE_BATCH", 2)  # a file is read in batches of this many rows
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(tfidf_run["per_text"]["text"].tolist()[:5]) + "\n")
    output = tmp_path / "out.jsonl"
    output.write_text("precious\n")
    config = FilterConfig(filter=str(tfidf_run["filter"]), input=str(source), output=str(output), batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        filter_texts(config)
    assert output.read_text() == "precious\n", "nothing half-written replaces a finished output"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jsonl", "texts.txt"], "no lock file or temporary file is left"


def test_a_live_stream_gets_each_decision_before_the_next_line(tfidf_run):
    """A real pipe: the decision on line 1 arrives while the writer still holds line 2 back."""
    import select
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    command = [sys.executable, "filter.py", f"--filter={tfidf_run['filter']}", "--stream=true", "--batch_size=1"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for number, text in enumerate(["a dog barks", "a car engine starts"], 1):
            process.stdin.write(json.dumps({"text": text}) + "\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 120)
            assert ready, f"no decision for line {number} while the stream stays open"
            record = json.loads(process.stdout.readline())
            assert record["id"] == number and record["text"] == text and isinstance(record["decision"], bool)
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()


def test_semcal_run_saves_a_filter_per_split_that_filters_new_texts(tmp_path, capsys):
    """End to end: `semcal run` on a tiny data set, then `semcal filter` on its saved filter."""
    from semcal.protocol import pipeline
    from semcal.protocol.demo_data import generate_demo
    from tests.test_pipeline import TINY_FINETUNE

    source = files.save_dataset_dict(generate_demo(n_train=300, n_test=80, seed=3), tmp_path / "source")
    run_dir = tmp_path / "run"
    config = pipeline.PipelineConfig(
        dataset_name=str(source),
        run_dir=str(run_dir),
        splits=["severe"],
        finetune_settings=dict(TINY_FINETUNE),
        evaluation_settings={"n_runs": "20", "filter": "sum_labmom"},
    )
    pipeline.run_pipeline(config)
    folder = run_dir / "evaluation" / "severe" / "filter"
    spec = files.read_json(folder / "filter.json")
    assert spec["filter"] == "sum_labmom" and spec["source_state"]["models"]["real"]["path"].endswith("real_severe")
    per_text = pd.read_csv(folder.parent / "per_text.csv", keep_default_na=False)
    np.testing.assert_allclose(
        Filter.load(folder).accept_probs(per_text["text"].tolist()), per_text["accept_prob"], atol=1e-6
    )
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"text": text}) + "\n" for text in ["a dog barks twice", "rain on a roof"]))
    output = tmp_path / "decisions.csv"
    capsys.readouterr()
    assert main(["filter", f"--filter={folder}", f"--input={new}", f"--output={output}"]) == 0
    assert len(pd.read_csv(output)) == 2 and "2 items" in capsys.readouterr().out


def test_streaming_keeps_the_id_column_of_each_json_line(tfidf_run, monkeypatch, capsys):
    texts = tfidf_run["per_text"]["text"].tolist()[:3]
    lines = [json.dumps({"uid": f"clip-{i}", "text": text}) for i, text in enumerate(texts)]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    argv = [f"--filter={tfidf_run['filter']}", "--input=-", "--stream=true", "--id_column=uid"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["clip-0", "clip-1", "clip-2"]


def test_the_cut_warning_of_a_language_model_filter_is_said_once(lm_run, caplog):
    """Both models cut the same long text at max_length: one warning, not one per model."""
    model = Filter.load(lm_run["filter"])
    long_text = " ".join(["a dog barks in the park"] * 200)
    with caplog.at_level("WARNING"):
        model.score([long_text, "a dog barks"])
    cuts = [record for record in caplog.records if "longer than max_length" in record.getMessage()]
    assert len(cuts) == 1
