"""Small data sets and tiny models for the language-model tests (built here, never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semcal.lm.scratch import train_bpe_tokenizer
from semcal.protocol.demo_data import generate_demo
from semcal.store import files
from semcal.store.data import GENERAL_ROW_COLUMN

REAL_SPLIT = "real_train_animals"


def write_demo_dataset(folder: Path, n_train: int = 400, n_test: int = 60, seed: int = 0) -> Path:
    """The demo captions plus a real split (mostly animal captions) that carries general_train_row,
    as distort.py makes them."""
    import datasets

    demo = generate_demo(n_train=n_train, n_test=n_test, seed=seed)
    general = demo["general_train"]
    labels = np.asarray(general["label"])
    rows = np.flatnonzero((labels == "animals") | (np.arange(len(labels)) % 3 == 0))
    real = general.select(rows).add_column(GENERAL_ROW_COLUMN, rows.tolist())
    dataset_dict = datasets.DatasetDict({**demo, REAL_SPLIT: real})
    return files.save_dataset_dict(dataset_dict, folder)


def tiny_model_folder(folder: Path, texts: list[str], vocab_size: int = 320, seed: int = 0) -> Path:
    """A 2-layer, 64-wide GPT-2 with random (but not near-uniform) weights and a BPE tokenizer
    trained on `texts`, saved as a model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        initializer_range=0.3,  # large enough that the next-token distributions differ clearly
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    return files.save_pretrained(folder, model, tokenizer)
