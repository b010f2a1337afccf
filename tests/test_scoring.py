"""token_sequence_probs / semcal.lm.scoring: batched scores, resumable output, tokenizer checks."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from semcal.core import console
from semcal.core.errors import UserError
from semcal.lm.models import load_model_and_tokenizer
from semcal.lm.scoring import SCORES_NAME, ScoreConfig, check_same_tokens, score_split, token_log_probs_of
from semcal.store import files, runstate, score_files
from semcal.store.data import heldout_mask, load_dataset_dict
from tests.conftest import REPO_ROOT
from tests.lm_fixtures import tiny_model_folder, write_demo_dataset


@pytest.fixture(autouse=True)
def log_lines():
    """The stages' log lines go to the captured stdout."""
    console.setup()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A demo data set and two tiny models whose tokenizers differ."""
    root = tmp_path_factory.mktemp("scoring")
    data = write_demo_dataset(root / "data")
    train_texts = load_dataset_dict(str(data))["general_train"]["text"]
    model = tiny_model_folder(root / "models" / "general", train_texts, seed=0)
    other = tiny_model_folder(root / "models" / "other", [t.upper() for t in train_texts], seed=1)
    return {"root": root, "data": str(data), "model": str(model), "other": str(other)}


def _config(workspace, output, model="model", **settings):
    return ScoreConfig(dataset_name=workspace["data"], model=workspace[model], output_dir=str(output), **settings)


def test_batched_scores_equal_one_at_a_time(workspace):
    model, tokenizer = load_model_and_tokenizer(workspace["model"])
    texts = load_dataset_dict(workspace["data"])["general_test"]["text"][:30]
    texts += ["Dogs.", "a " * 60 + "very long caption about an engine", "Rain falls on a tin roof"]
    batched = token_log_probs_of(model, tokenizer, texts, batch_size=16)
    single = token_log_probs_of(model, tokenizer, texts, batch_size=1)
    assert len({len(log_probs) for _, log_probs in batched}) > 5, "texts of many lengths share batches"
    for (tokens_b, log_probs_b), (tokens_s, log_probs_s) in zip(batched, single, strict=True):
        assert tokens_b == tokens_s
        assert np.max(np.abs(log_probs_b - log_probs_s)) < 1e-4
    # a model that scores is not uniform: the test would pass trivially otherwise
    assert np.std(np.concatenate([log_probs for _, log_probs in single])) > 0.3


def test_output_columns_and_values(workspace):
    csv_path = score_split(_config(workspace, workspace["root"] / "scores" / "general_test.general"))
    raw = pd.read_csv(csv_path)
    assert list(raw.columns) == score_files.TOKEN_LOG_PROB_COLUMNS
    scores = score_files.read_token_log_probs(csv_path)
    assert scores["text_id"].tolist() == list(range(60))
    for _, row in scores.iterrows():
        assert row["total_log_prob"] == pytest.approx(row["log_probs"].sum(), abs=1e-9)
        assert row["avg_log_prob"] == pytest.approx(row["log_probs"].mean(), abs=1e-9)
        assert row["tokens"][-1] == "<|endoftext|>"  # bos_eos framing scores the end of the text
    record = files.read_record(csv_path.parent)
    assert record["stage"] == "score" and record["framing"] == "bos_eos" and record["tokenizer_fingerprint"]


def test_kill_and_resume_gives_an_identical_file(workspace, tmp_path):
    settings = {"batch_size": 4, "chunk_size": 8}
    uninterrupted = score_split(_config(workspace, tmp_path / "whole", **settings))

    resumed_dir = tmp_path / "resumed"
    command = [sys.executable, "-m", "semcal", "score", f"--dataset_name={workspace['data']}"]
    command += [f"--model={workspace['model']}", f"--output_dir={resumed_dir}", "--batch_size=4", "--chunk_size=8"]
    env = {**os.environ, "SEMCAL_KILL_AT": "chunk:3"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    partial = resumed_dir.with_name(f".{resumed_dir.name}.partial")  # the run is built beside its output folder
    parts = sorted((partial / f"{SCORES_NAME}.parts").glob("part-*.csv"))
    assert len(parts) == 3 and not (resumed_dir / SCORES_NAME).exists()

    # The interrupted chunks were made by one model; another model must not add rows to them.
    with pytest.raises(UserError):
        score_split(_config(workspace, resumed_dir, model="other", **settings))
    with pytest.raises(Exception, match="interrupted run"):
        score_split(_config(workspace, resumed_dir, batch_size=8, chunk_size=8))

    resumed = score_split(_config(workspace, resumed_dir, **settings))
    assert resumed.read_bytes() == uninterrupted.read_bytes()
    assert files.read_record(resumed_dir)["scored_in_this_run"] == 60 - 24


def test_heldout_only_scores_the_heldout_general_train_rows(workspace, tmp_path):
    csv_path = score_split(_config(workspace, tmp_path / "heldout", split_name="general_train", heldout_only=True))
    expected = np.flatnonzero(heldout_mask(np.arange(400), 400, 0.2, 42))
    assert score_files.read_token_log_probs(csv_path)["text_id"].tolist() == expected.tolist()


def test_rerun_is_up_to_date_and_new_settings_replace_the_output(workspace, tmp_path, capsys):
    output = tmp_path / "scores" / "general_test.general"
    first = score_split(_config(workspace, output))
    stamp = first.stat().st_mtime_ns
    score_split(_config(workspace, output))
    assert "up to date" in capsys.readouterr().out and first.stat().st_mtime_ns == stamp
    paper = score_split(_config(workspace, output, framing="paper"))
    scores = score_files.read_token_log_probs(paper)
    assert files.read_record(output)["framing"] == "paper" and "<|endoftext|>" not in scores["tokens"][0]


def test_mixing_tokenizers_is_refused(workspace, tmp_path):
    scores = tmp_path / "scores"
    general_csv = score_split(_config(workspace, scores / "general_test.general"))
    with pytest.raises(UserError, match="general_test.general") as refused:
        score_split(_config(workspace, scores / "general_test.other", model="other"))
    assert "tokenizer" in str(refused.value)

    # Written apart, the two files still cannot be compared token by token.
    other_csv = score_split(_config(workspace, tmp_path / "apart" / "other", model="other"))
    general, other = score_files.read_token_log_probs(general_csv), score_files.read_token_log_probs(other_csv)
    check_same_tokens(general, general.iloc[::-1].reset_index(drop=True))
    with pytest.raises(UserError, match=r"text_id 0: .*differently from token \d+ on \(general \["):
        check_same_tokens(general, other)
    with pytest.raises(UserError, match="share no text_id"):
        check_same_tokens(general.iloc[:5], general.iloc[5:])


def test_bad_settings_are_clear_errors(workspace, tmp_path):
    with pytest.raises(Exception, match="framing='bos' is not one of bos_eos, paper"):
        score_split(_config(workspace, tmp_path / "x", framing="bos"))
    with pytest.raises(Exception, match="no such model folder"):
        score_split(
            ScoreConfig(dataset_name=workspace["data"], model=str(tmp_path / "missing"), output_dir=str(tmp_path / "y"))
        )


def test_a_failed_run_leaves_the_finished_output_as_it_was(workspace, tmp_path):
    model = shutil.copytree(workspace["model"], tmp_path / "models" / "general")
    config = ScoreConfig(dataset_name=workspace["data"], model=str(model), output_dir=str(tmp_path / "scores" / "g"))
    csv_path = score_split(config)
    finished_csv, finished_record = csv_path.read_bytes(), (csv_path.parent / files.RECORD_NAME).read_bytes()
    (model / "model.safetensors").write_bytes(b"not a safetensors file")  # new weights, and unreadable
    with pytest.raises(UserError, match="cannot load model="):
        score_split(config)
    assert csv_path.read_bytes() == finished_csv
    assert (csv_path.parent / files.RECORD_NAME).read_bytes() == finished_record


def test_a_model_folder_is_not_a_score_folder(workspace, tmp_path):
    model = shutil.copytree(workspace["model"], tmp_path / "model")
    files.write_record(model, "finetune", {"framing": "bos_eos"})
    before = {path.name: path.read_bytes() for path in model.iterdir()}
    with pytest.raises(UserError, match="holds the output of the 'finetune' stage"):
        score_split(ScoreConfig(dataset_name=workspace["data"], model=str(model), output_dir=str(model)))
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before


def test_cut_texts_are_counted_in_the_record_and_said_once(workspace, tmp_path, capsys):
    csv_path = score_split(_config(workspace, tmp_path / "short", max_length=48))
    _, tokenizer = load_model_and_tokenizer(workspace["model"])
    texts = list(load_dataset_dict(workspace["data"])["general_test"]["text"])
    longer = sum(len(ids) + 2 > 48 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])  # BOS, EOS
    assert 0 < longer < len(texts)
    assert files.read_record(csv_path.parent)["truncated_texts"] == longer
    out = capsys.readouterr().out
    assert out.count("longer than max_length") == 1 and f"{longer} texts longer than max_length=48 tokens" in out
    assert max(len(tokens) for tokens in score_files.read_token_log_probs(csv_path)["tokens"]) == 47


def test_a_second_writer_of_the_same_folder_is_refused(workspace, tmp_path):
    output = tmp_path / "scores" / "general_test.general"
    with runstate.hold_lock(output), pytest.raises(UserError, match="is being written by"):
        score_split(_config(workspace, output))
    assert not output.exists()
