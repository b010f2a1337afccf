"""Text features the sources of semcal.filter.sources share: hashed n-gram counts and sentence embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def hashing_vectorizer(n_buckets: int) -> Any:
    """The n-gram estimator's features: counts of hashed unigrams and bigrams (no state to fit)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=int(n_buckets), ngram_range=(1, 2), alternate_sign=False, norm=None)


def load_encoder(model_dir: str | Path) -> tuple[Any, Any]:
    """The sentence encoder's tokenizer and model (eval mode), to embed batch after batch."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir)), AutoModel.from_pretrained(str(model_dir)).eval()


def embed_texts(
    texts: Sequence[str],
    model_dir: str | Path,
    batch_size: int = 64,
    max_length: int = 128,
    encoder: tuple[Any, Any] | None = None,
) -> np.ndarray:
    """Unit-length sentence embeddings: mean of the last hidden states over real tokens (as
    sentence-transformers does for all-MiniLM-L6-v2), batched by length. `encoder`: the
    tokenizer and model of `model_dir`, loaded already (load_encoder)."""
    import torch

    tokenizer, model = encoder or load_encoder(model_dir)
    texts = list(texts)
    order = np.argsort([len(text) for text in texts], kind="stable")
    embeddings = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            embeddings[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return embeddings
