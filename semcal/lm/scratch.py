"""base_model=scratch: a small GPT-2 from random weights and the data set's shared BPE tokenizer.

The tokenizer is trained once per data set, on the general_train rows that are not held
out, and kept in `tokenizer_dir` (default: tokenizer/ beside the model folders). Every
model of the data set uses it: the calibration compares two models token by token, so they
must tokenise identically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from semcal.core import distributed
from semcal.core.errors import UserError
from semcal.lm.models import tokenizer_fingerprint
from semcal.store import files, runstate
from semcal.store.data import GENERAL_TRAIN, get_split, heldout_mask, texts_of

log = logging.getLogger(__name__)

SCRATCH_SPECIAL_TOKEN = "<|endoftext|>"  # BOS, EOS and padding of the scratch tokenizer, as in GPT-2
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


def scratch_tokenizer(tokenizer_dir: Path, dataset_dict: Any, config: Any) -> Any:
    """The data set's shared tokenizer: loaded from `tokenizer_dir`, or trained there by the first model.

    `config` is the FinetuneConfig (text_column, vocab_size, eval_fraction, split_seed, dataset_name).
    """
    from transformers import AutoTokenizer

    general_texts = texts_of(get_split(dataset_dict, GENERAL_TRAIN), GENERAL_TRAIN, config.text_column)
    wanted = {
        "dataset_fingerprint": files.fingerprint_texts(general_texts),
        "vocab_size": config.vocab_size,
        "eval_fraction": config.eval_fraction,
        "split_seed": config.split_seed,
    }
    # Several processes of one run: the main one trains it, the others then read it.
    with distributed.main_first(), runstate.hold_lock(tokenizer_dir):  # the first of two runs trains it
        record = files.read_record(tokenizer_dir)
        if record is None:
            _train_shared_tokenizer(tokenizer_dir, general_texts, config, wanted)
        else:
            _check_tokenizer_record(tokenizer_dir, record, wanted)
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def _check_tokenizer_record(tokenizer_dir: Path, record: dict[str, Any], wanted: dict[str, Any]) -> None:
    found = {key: record.get(key, record.get("config", {}).get(key)) for key in wanted}
    differs = {key: (found[key], value) for key, value in wanted.items() if found[key] != value}
    if differs:
        shown = "; ".join(f"{key}: {old} there, {new} here" for key, (old, new) in differs.items())
        raise UserError(
            f"the shared tokenizer in {tokenizer_dir} was made for other settings ({shown}). All models of a "
            "data set must share one tokenizer: use the settings it was made with, or give a new tokenizer_dir "
            "(and train every model of the data set again)."
        )


def _train_shared_tokenizer(tokenizer_dir: Path, general_texts: list[str], config: Any, wanted: dict[str, Any]) -> None:
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
    log.info(
        "trained a %d-token BPE tokenizer on %d general_train texts: %s",
        len(tokenizer),
        len(training_texts),
        tokenizer_dir,
    )


def scratch_model(tokenizer: Any, config: Any) -> Any:
    """A GPT-2 of config's n_layer x n_embd (n_head heads) with max_length positions, random weights."""
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
