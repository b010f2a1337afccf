"""Fine-tuning: one causal LM per split, trained with the Hugging Face Trainer.

`finetune` (finetune_gpt2.py, `semcal finetune`) trains one causal LM on the texts of one
split (`general_train` or `real_train_<distortion>`); checkpoint resume and early stopping
come with the Trainer (semcal.lm.training).

`base_model` is where the weights come from (semcal.lm.models): a Hub id or local folder (the
paper: `gpt2`), a GGUF file, or `scratch`, a small GPT-2 from random weights with the data
set's shared BPE tokenizer (semcal.lm.scratch). `init_from` starts from a trained model folder
instead (a real model from the general one). Texts are framed as semcal.lm.framing says.

LoRA (`lora_r > 0`, semcal.lm.lora): peft adapters on a pretrained base instead of every
weight, saved merged into an ordinary model or as the adapter alone, which scoring loads
onto its base; resume, several processes and the record are the same as for full fine-tuning.

Held-out rows: data.heldout_rows decides once per data set which general_train rows are
held out (`eval_fraction`, `split_seed`); a real split uses its `general_train_row` column,
so a row held out from the general model is held out from every real model too.

Run state (semcal.store.runstate): the model is built in `.NAME.partial/` beside output_dir, which
holds the Trainer's checkpoints (one per epoch, at most the best and the last); a killed run
resumes from its last complete checkpoint when run again with the same settings and data.
A rerun of a finished model with the same settings and data does nothing; other settings are
refused unless overwrite=true. Where the folders are (paths) is not part of a model's
identity: what they hold is (fingerprints of texts, held-out rows, weights, tokenizer).
One process trains a model: the run holds an exclusive lock on output_dir (so torchrun /
accelerate launch with several processes is not supported).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core import distributed
from semcal.core.config import below_minimum
from semcal.core.errors import UserError
from semcal.lm import lora
from semcal.lm.framing import check_framing, check_sibling_tokenizers, frame_and_count_cuts, report_cut, tokenisation
from semcal.lm.lora import LORA_SETTINGS
from semcal.lm.models import (
    SCRATCH,
    load_model,
    load_model_config,
    load_tokenizer,
    model_fingerprint,
    model_positions,
    name_default_loss,
    tokenizer_fingerprint,
)
from semcal.store import files, runstate
from semcal.store.data import (
    GENERAL_ROW_COLUMN,
    HELDOUT_OWN_ROWS,
    general_fingerprint,
    get_split,
    heldout_rows,
    load_dataset_dict,
    texts_of,
)
from semcal.store.runstate import StageOutput

log = logging.getLogger(__name__)

PRETRAINED_LEARNING_RATE = 2e-5  # the paper's, for fine-tuning a pretrained GPT-2
LORA_LEARNING_RATE = 2e-4  # low-rank adapters start at zero and need a larger step than full fine-tuning
SCRATCH_LEARNING_RATE = 1e-3  # small models from random weights need a much larger step
# Settings that are not part of a model's identity: where things are (what they hold is
# fingerprinted instead) and what happens around training.
NOT_IDENTITY = (
    "dataset_name",
    "output_dir",
    "tokenizer_dir",
    "init_from",
    "base_model",
    "gguf_file",
    "overwrite",
    "push_to_hub",
    "hub_model_id",
)


@dataclass
class FinetuneConfig:
    dataset_name: str = "runs/demo/data"  # data set with the split: save_to_disk folder, CSV/Parquet/JSONL or Hub id
    split_column: str = "split"  # for a single data file: the column naming each row's split
    split_name: str = "general_train"  # split to train on: general_train or real_train_<distortion>
    text_column: str = "text"  # column holding the texts (captions)
    base_model: str = "gpt2"  # Hub id or local folder (paper: gpt2), scratch, or a .gguf file
    gguf_file: str | None = None  # a GGUF file inside base_model's folder, e.g. SmolLM2-135M-Instruct.Q4_1.gguf
    init_from: str | None = None  # trained model folder to start from (a real model from the general one)
    output_dir: str = "runs/demo/models/general"  # gets the model, tokenizer and semcal_record.json
    tokenizer_dir: str | None = None  # scratch: the data set's shared tokenizer; none = tokenizer/ beside output_dir
    framing: str = "bos_eos"  # bos_eos: BOS + text + EOS, all text tokens scored; paper: text, 1st token unscored
    max_length: int = 512  # framed texts are cut to this many tokens (scratch: the model's positions)
    eval_fraction: float = 0.2  # share of general_train rows held out for evaluation (the same for every model)
    split_seed: int = 42  # seed of the held-out assignment
    seed: int = 42  # seed of weight init, data order and dropout: the same seed gives the same model
    learning_rate: float | None = None  # none: 2e-5 (the paper's, pretrained base) or 1e-3 (scratch)
    weight_decay: float = 0.001  # AdamW weight decay
    batch_size: int = 8  # texts per training step
    eval_batch_size: int = 32  # texts per evaluation batch
    num_epochs: int = 5  # training epochs; evaluated and checkpointed after each
    warmup_ratio: float = 0.1  # share of the steps with a linear learning-rate warm-up, in [0, 1)
    early_stopping_patience: int = 0  # stop after this many epochs without a lower eval loss; 0 = never
    keep_last: bool = False  # keep the last epoch's weights instead of those with the lowest eval loss
    fp16: bool = (
        True  # mixed precision on CUDA: bfloat16 where the GPU supports it, else float16 (ignored without CUDA)
    )
    pad_to_max_length: bool = False  # pad every text to max_length like the paper's code (slow; for benchmarks)
    n_layer: int = 4  # scratch: transformer layers
    n_embd: int = 256  # scratch: embedding width
    n_head: int = 4  # scratch: attention heads (must divide n_embd)
    vocab_size: int = 4096  # scratch: BPE vocabulary size of the data set's shared tokenizer
    lora_r: int = 0  # LoRA rank: >0 trains low-rank adapters on a pretrained base instead of every weight; 0 = full
    lora_alpha: int = 32  # LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch's input
    lora_target_modules: str = "auto"  # layers LoRA adapts, joined by + (q_proj+v_proj); auto: GPT-2/Llama defaults
    lora_merge: bool = True  # save base + adapter merged into an ordinary model; false: the adapter alone (small)
    overwrite: bool = False  # replace a model (finished or not) in output_dir made with other settings
    push_to_hub: bool = False  # upload the model when trained (private repo); the token comes from $HF_TOKEN
    hub_model_id: str | None = None  # Hub repository for push_to_hub; none = the output folder's name


@dataclass
class HeldOut:
    """The texts of the split, which rows are held out, and why those."""

    texts: list[str]
    mask: np.ndarray
    source: str

    @property
    def train_texts(self) -> list[str]:
        return [text for text, held in zip(self.texts, self.mask, strict=True) if not held]

    @property
    def eval_texts(self) -> list[str]:
        return [text for text, held in zip(self.texts, self.mask, strict=True) if held]


def finetune(config: FinetuneConfig) -> Path:
    """Train one causal LM on the non-held-out texts of `split_name`; returns the output folder."""
    _check_settings(config)
    output = StageOutput(
        "finetune",
        config.output_dir,
        what=f"finetune {Path(config.output_dir).name} on {config.split_name}",
        overwrite=config.overwrite,
        protect=True,
        noun="model",
    )
    dataset_dict = load_dataset_dict(config.dataset_name, config.split_column)
    split = _held_out(config, dataset_dict)
    dataset_fp = general_fingerprint(dataset_dict, config.text_column)
    if config.init_from:
        _check_init_from(config, dataset_fp)
    tokenizer, positions = _starting_tokenizer(config, dataset_dict, output.path)
    max_length = min(config.max_length, positions or config.max_length)
    identity = _identity(config, split, dataset_fp, tokenizer_fingerprint(tokenizer), max_length)
    check_sibling_tokenizers(output, identity, same_data="general_train")
    if output.up_to_date(identity):
        _not_pushed_again(config, output)
        return output.path
    with output.building(identity) as staging:
        details = _train(config, output, staging, split, tokenizer, max_length)
        details.update(dataset_fingerprint=dataset_fp, split_fingerprint=identity["inputs"]["texts"])
        output.finish(config, summary=_summary(details), **details)
    return output.path


def _identity(
    config: FinetuneConfig, split: HeldOut, dataset_fp: str | None, tokenizer_fp: str, max_length: int
) -> dict[str, Any]:
    """Settings that change the model, and what it is made from: texts, held-out rows, weights, tokenizer."""
    base_model = config.base_model
    return runstate.identity(
        "finetune",
        config,
        inputs={
            "general_train": dataset_fp,
            "texts": files.fingerprint_texts(split.texts),
            "heldout_rows": files.fingerprint_texts(map(str, np.flatnonzero(split.mask))),
            "base_model": base_model if base_model == SCRATCH else model_fingerprint(base_model, config.gguf_file),
            "init_from": model_fingerprint(config.init_from) if config.init_from else None,
            "tokens": tokenisation(tokenizer_fp, config.framing, max_length),
        },
        ignore=NOT_IDENTITY + (() if config.lora_r else LORA_SETTINGS),
    )


def _check_settings(config: FinetuneConfig) -> None:
    check_framing(config.framing)
    problems = []
    if not 0.0 < config.eval_fraction < 1.0:
        problems.append(f"eval_fraction must be between 0 and 1 (got {config.eval_fraction})")
    if not 0.0 <= config.warmup_ratio < 1.0:
        problems.append(f"warmup_ratio must be in [0, 1) (got {config.warmup_ratio})")
    problems += below_minimum(config, {"batch_size": 1, "eval_batch_size": 1, "num_epochs": 1})
    for name in ("seed", "split_seed"):
        if not 0 <= getattr(config, name) < 2**32:
            problems.append(f"{name} must be an integer from 0 to 2**32 - 1 (got {getattr(config, name)})")
    if config.max_length < 2:
        problems.append(f"max_length must be at least 2 tokens (got {config.max_length})")
    if config.learning_rate is not None and config.learning_rate <= 0:
        problems.append(f"learning_rate must be positive (got {config.learning_rate})")
    if config.early_stopping_patience < 0:
        problems.append("early_stopping_patience must be 0 (off) or more")
    if config.base_model == SCRATCH and config.init_from is None:
        if config.gguf_file:
            problems.append("gguf_file is for loading a GGUF base model; base_model=scratch loads nothing")
        if config.n_layer < 1 or config.n_head < 1 or config.n_embd % config.n_head:
            problems.append(f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head}), both >= 1")
        if config.vocab_size < 300:
            problems.append(f"vocab_size must be at least 300 (256 bytes + merges; got {config.vocab_size})")
    problems += lora.problems(config, scratch=config.base_model == SCRATCH)
    if config.push_to_hub and not os.environ.get("HF_TOKEN"):
        problems.append("push_to_hub needs a Hub token in the HF_TOKEN environment variable (never in settings)")
    if problems:
        raise UserError("; ".join(problems) + ".")


def _held_out(config: FinetuneConfig, dataset_dict: Any) -> HeldOut:
    texts = texts_of(get_split(dataset_dict, config.split_name), config.split_name, config.text_column)
    mask, source = heldout_rows(dataset_dict, config.split_name, config.eval_fraction, config.split_seed)
    if source == HELDOUT_OWN_ROWS:
        if config.init_from:
            raise UserError(
                f"init_from starts from a model trained on general_train, but split {config.split_name!r} has no "
                f"{GENERAL_ROW_COLUMN} column, so its held-out texts may be ones that model trained on and early "
                "stopping would be misled. Make the split with distort.py (which writes that column), or drop "
                "init_from."
            )
        log.warning(
            "split %r has no %s column; holding out a seeded %.0f%% of its own rows, which need not be held out "
            "from the general model.",
            config.split_name,
            GENERAL_ROW_COLUMN,
            100 * config.eval_fraction,
        )
    split = HeldOut(texts, mask, source)
    if mask.all() or not mask.any():
        raise UserError(
            f"split {config.split_name!r} ({len(texts)} rows) leaves {int((~mask).sum())} rows to train on and "
            f"{int(mask.sum())} held out with eval_fraction={config.eval_fraction}: it needs both. Use a larger "
            "split or change eval_fraction (for every model of the data set)."
        )
    return split


def _check_init_from(config: FinetuneConfig, dataset_fp: str | None) -> None:
    """init_from must have held out the same rows, or this model's eval texts were its training texts."""
    record = files.read_record(config.init_from) if Path(config.init_from).expanduser().is_dir() else None
    if record is None or record.get("stage") != "finetune":
        log.warning(
            "init_from=%s has no finetune record, so whether its training texts overlap this model's held-out "
            "texts cannot be checked.",
            config.init_from,
        )
        return
    theirs = record.get("config", {})
    if dataset_fp is not None and record.get("dataset_fingerprint") not in (None, dataset_fp):
        raise UserError(
            f"init_from={config.init_from} was trained on another data set (general_train fingerprint "
            f"{record.get('dataset_fingerprint')}, here {dataset_fp}); start from that data set's general model."
        )
    differs = [name for name in ("eval_fraction", "split_seed") if theirs.get(name) != getattr(config, name)]
    if differs:
        shown = ", ".join(f"{name}={theirs.get(name)} there, {getattr(config, name)} here" for name in differs)
        raise UserError(
            f"init_from={config.init_from} held out other rows ({shown}), so texts held out here may be ones it "
            "trained on and early stopping would be misled; use the same eval_fraction and split_seed."
        )


def _starting_tokenizer(config: FinetuneConfig, dataset_dict: Any, output_dir: Path) -> tuple[Any, int | None]:
    """The tokenizer of the model training starts from, and that model's positions (None: unbounded)."""
    if config.init_from:
        source, gguf_file, setting = config.init_from, None, "init_from"
    elif config.base_model == SCRATCH:
        from semcal.lm.scratch import scratch_tokenizer

        tokenizer_dir = Path(config.tokenizer_dir) if config.tokenizer_dir else output_dir.parent / "tokenizer"
        return scratch_tokenizer(tokenizer_dir, dataset_dict, config), config.max_length
    else:
        source, gguf_file, setting = config.base_model, config.gguf_file, "base_model"
    tokenizer = load_tokenizer(source, gguf_file, setting)
    return tokenizer, model_positions(load_model_config(source, gguf_file, setting))


def _starting_model(config: FinetuneConfig, tokenizer: Any) -> Any:
    if config.init_from and config.lora_r and lora.is_adapter(config.init_from):
        # Train the starting model's adapter further, on its own base (its rank was checked).
        base = load_model(lora.adapter_base(config.init_from), setting=f"the base model of {config.init_from}")
        return lora.load_adapter(base, config.init_from, trainable=True)
    if config.init_from:
        model = load_model(config.init_from, setting="init_from")  # an adapter comes merged
    elif config.base_model == SCRATCH:
        from semcal.lm.scratch import scratch_model

        return scratch_model(tokenizer, config)
    else:
        model = load_model(config.base_model, config.gguf_file)
    return lora.wrap(model, config) if config.lora_r else model


def _train(
    config: FinetuneConfig, output: StageOutput, staging: Path, split: HeldOut, tokenizer: Any, max_length: int
) -> dict[str, Any]:
    """Train in `staging` (resuming its last checkpoint), save the model there; the record's details."""
    from transformers import set_seed

    from semcal.lm import training

    set_seed(config.seed)  # before the weights of a scratch model are drawn
    model = _starting_model(config, tokenizer)
    name_default_loss(model)
    model.train()
    default_rate = LORA_LEARNING_RATE if config.lora_r else PRETRAINED_LEARNING_RATE
    learning_rate = config.learning_rate or (SCRATCH_LEARNING_RATE if config.base_model == SCRATCH else default_rate)
    train_ids, train_cut = frame_and_count_cuts(tokenizer, split.train_texts, config.framing, max_length)
    eval_ids, eval_cut = frame_and_count_cuts(tokenizer, split.eval_texts, config.framing, max_length)
    report_cut(output.what, train_cut + eval_cut, max_length, f"the model sees only their first {max_length} tokens")
    hub_model_id = config.hub_model_id or output.path.resolve().name
    args = training.training_arguments(config, learning_rate, staging, hub_model_id)
    pad_to = max_length if config.pad_to_max_length else None
    trainer = training.make_trainer(config, model, tokenizer, train_ids, eval_ids, args, pad_to)
    # Every rank resumes from the checkpoint the main process found (and cleaned up).
    resume_from = distributed.broadcast(
        training.last_checkpoint(staging) if output.resumed and distributed.is_main() else None
    )
    eval_loss_before = trainer.evaluate()["eval_loss"]  # of the starting weights, also when resuming
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    trainable = lora.trainable_parameters(model)
    lora_details = lora.details(config, trainer.model) if config.lora_r else None
    if config.lora_r and config.lora_merge:
        trainer.model = model = trainer.model.merge_and_unload()  # saved (and pushed) as an ordinary model
    if config.push_to_hub:
        training.push(trainer, hub_model_id)  # saves the model into staging, then uploads it
    else:
        trainer.save_model(str(staging))  # the main process writes (the Trainer's should_save)
    distributed.barrier()
    if distributed.is_main():
        training.remove_checkpoints(staging)
        if config.lora_r and not config.lora_merge:
            lora.set_base(staging, lora.base_of(config))
    return {
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "framing": config.framing,
        "split": config.split_name,
        "max_length": max_length,
        "learning_rate": learning_rate,
        "saved": "last epoch" if config.keep_last else "lowest eval loss",
        "data": _data_details(config, split),
        "truncated_texts": train_cut + eval_cut,
        "eval_loss_before_training": eval_loss_before,
        **_training_details(config, trainer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": trainable,
        "lora": lora_details,
        "processes": distributed.world_size(),
        "train_runtime_s": round(train_output.metrics.get("train_runtime", float("nan")), 2),
        "resumed_from": Path(resume_from).name if resume_from else None,
        "pushed_to": f"https://huggingface.co/{trainer.hub_model_id}" if config.push_to_hub else None,
    }


def _data_details(config: FinetuneConfig, split: HeldOut) -> dict[str, Any]:
    heldout_ids = np.flatnonzero(split.mask).tolist()
    return {
        "split": config.split_name,
        "rows": len(split.texts),
        "train_rows": len(split.texts) - len(heldout_ids),
        "heldout_rows": len(heldout_ids),
        "heldout_source": split.source,
        "heldout_fingerprint": files.fingerprint_texts(map(str, heldout_ids)),
        "heldout_row_ids": heldout_ids if len(heldout_ids) <= 10_000 else None,
        "text_fingerprint": files.fingerprint_texts(split.texts),
    }


def _training_details(config: FinetuneConfig, trainer: Any) -> dict[str, Any]:
    """Eval loss per epoch (from the Trainer's log, which a resumed run restores), which epoch was kept."""
    eval_losses = [
        {"epoch": round(entry["epoch"], 4), "eval_loss": entry["eval_loss"]}
        for entry in trainer.state.log_history
        if "eval_loss" in entry
    ]
    best = min(eval_losses, key=lambda entry: entry["eval_loss"])
    return {
        "eval_loss_per_epoch": eval_losses,
        "final_eval_loss": eval_losses[-1]["eval_loss"] if config.keep_last else best["eval_loss"],
        "best_epoch": best["epoch"],
        "epochs_trained": round(trainer.state.epoch or 0, 4),
        "steps": trainer.state.global_step,
        "device": str(trainer.args.device),
    }


def _summary(details: dict[str, Any]) -> str:
    data, epochs = details["data"], details["epochs_trained"]
    return (
        f"{data['train_rows']} texts trained, {data['heldout_rows']} held out, {epochs:g} epoch{'s' * (epochs != 1)}; "
        f"eval loss {details['eval_loss_before_training']:.3f} -> {details['final_eval_loss']:.3f} (best at epoch "
        f"{details['best_epoch']:g})" + (f"; pushed to {details['pushed_to']}" if details["pushed_to"] else "")
    )


def _not_pushed_again(config: FinetuneConfig, output: StageOutput) -> None:
    """An up-to-date model is not trained, so the Trainer does not push it: say so, with the command that does."""
    pushed = (output.record() or {}).get("pushed_to")
    if config.push_to_hub and not pushed:
        repo = config.hub_model_id or output.path.resolve().name
        log.warning(
            "push_to_hub: %s was trained before without push_to_hub and is not trained again, so nothing was "
            "pushed; upload it with `hf upload %s %s`.",
            output.path,
            repo,
            output.path,
        )
