"""The Hugging Face Trainer as fine-tuning uses it: collator, arguments, callbacks, resume point.

The Trainer writes its checkpoints (one per epoch, at most the best and the last) into the
folder it is given, the stage's partial folder, so a killed run resumes from the last
complete one. Its own bars and per-epoch log dicts are replaced, unless verbose, by one
console progress bar over the training steps.

This module imports torch and transformers; semcal.lm.finetune imports it only when it trains.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from semcal.core import console
from semcal.core.errors import UserError
from semcal.store import runstate


@dataclass
class CausalLMCollator:
    """Collate framed texts: tokenizer.pad to the batch's longest (or to `pad_to`), loss only on real tokens."""

    tokenizer: Any
    pad_to: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.tokenizer.pad(
            [{"input_ids": feature["input_ids"]} for feature in features],
            padding="max_length" if self.pad_to else "longest",
            max_length=self.pad_to,
            padding_side="right",
            return_tensors="pt",
        )
        # The model shifts labels itself; padding (-100) is left out of the loss. EOS is not padding,
        # even when it shares its id with the pad token (GPT-2), so it is masked by position, not id.
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        # Token 0 is never a target. The Trainer divides the summed loss by the count of labels that
        # are not -100, so leaving it in would shrink the reported loss below the mean per scored token.
        labels[:, 0] = -100
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def make_trainer(
    config: Any,
    model: Any,
    tokenizer: Any,
    train_ids: list[list[int]],
    eval_ids: list[list[int]],
    args: TrainingArguments,
    pad_to: int | None = None,
) -> Any:
    """A Trainer over framed token ids; `config` is the FinetuneConfig, `args` from `training_arguments`.

    `pad_to`: pad every batch to this many tokens (the paper's padding, for benchmarks), not to its longest.
    """

    def framed(ids: list[list[int]]) -> Any:
        return datasets.Dataset.from_dict({"input_ids": ids, "length": [len(seq) for seq in ids]})

    callbacks: list[Any] = [KillAtCheckpoint()]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    try:
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=CausalLMCollator(tokenizer, pad_to),
            train_dataset=framed(train_ids),
            eval_dataset=framed(eval_ids),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    except Exception as err:  # push_to_hub: the Trainer creates the Hub repository here (the client raises many types)
        if not args.push_to_hub:
            raise
        raise UserError(
            f"push_to_hub: cannot create the Hub repository {args.hub_model_id!r} ({_first_line(err)})."
        ) from None
    if not console.is_verbose():
        trainer.remove_callback(PrinterCallback)  # its per-epoch dicts of numbers
        trainer.add_callback(StepProgress())
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        logging.getLogger("transformers.trainer").addFilter(_TIED_WEIGHTS_REPORT)
    return trainer


def training_arguments(config: Any, learning_rate: float, staging: Path, hub_model_id: str) -> TrainingArguments:
    """The Trainer's settings from the FinetuneConfig: evaluate, checkpoint into `staging`, keep the best."""
    return TrainingArguments(
        output_dir=str(staging.resolve()),  # absolute: the checkpoint paths in its state survive a chdir
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        num_train_epochs=config.num_epochs,
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of all steps
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=not config.keep_last,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=2,  # the best checkpoint and the last one
        # Mixed precision on a GPU: bfloat16 where supported (no loss scaling, float32's range), else float16.
        bf16=config.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        fp16=config.fp16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported(),
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # the collator takes input_ids and ignores length
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, say so: under torchrun the Trainer then runs DDP over gloo (CPU processes).
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=not console.is_verbose(),
        push_to_hub=config.push_to_hub,
        hub_model_id=hub_model_id,
        hub_private_repo=True,
        hub_strategy="end",  # the finished model only, not every checkpoint
        hub_token=os.environ.get("HF_TOKEN") if config.push_to_hub else None,
    )


def push(trainer: Any, repo: str) -> None:
    """The Trainer's own push: save the model into its folder, then upload that (checkpoints left out)."""
    try:
        trainer.push_to_hub(commit_message="semcal finetune")
    except Exception as err:  # the hub client raises many types
        raise UserError(
            f"the model is trained, but pushing it to {repo!r} failed ({_first_line(err)}); run again to retry "
            "(the run resumes from its last checkpoint)."
        ) from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def last_checkpoint(staging: Path) -> str | None:
    """The checkpoint a killed run resumes from: the last complete one in `staging`, if any."""
    if not staging.is_dir():
        return None
    for checkpoint in staging.glob("checkpoint-*"):
        if not (checkpoint / "trainer_state.json").exists():
            shutil.rmtree(checkpoint)  # cut off by a kill while being written: the Trainer writes its state last
    return get_last_checkpoint(str(staging))


def remove_checkpoints(staging: Path) -> None:
    for checkpoint in staging.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


class _TiedWeightsReport(logging.Filter):
    """Drops the Trainer's warning that lm_head.weight is missing when it reloads the best
    checkpoint: the output weights are tied to the input embedding, which it loaded."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "missing keys in the checkpoint model loaded: ['lm_head.weight']" not in record.getMessage()


_TIED_WEIGHTS_REPORT = _TiedWeightsReport()


class StepProgress(TrainerCallback):
    """One console progress bar over the training steps (in place of the Trainer's bars)."""

    bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar = console.progress(total=state.max_steps, initial=state.global_step, desc="training", unit="step")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class KillAtCheckpoint(TrainerCallback):
    """Test hook: SEMCAL_KILL_AT=checkpoint:N kills the process right after its N-th checkpoint."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        runstate.kill_point("checkpoint")
