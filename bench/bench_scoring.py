"""Speed of batched scoring (semcal.lm.scoring) against a one-text-at-a-time loop like the paper's.

Texts: --n_texts AudioCaps test captions (seeded sample). Model: a GPT-2 built from config
(random weights; speed does not depend on them), with a byte-level BPE tokenizer trained on
the AudioCaps train captions, as base_model=scratch makes them:
  --size=demo       2 layers x 128, BPE 1024 (the settings `semcal demo` trains with)
  --size=scratch    4 layers x 256, BPE 4096 (the scratch default of finetune_gpt2.py)
  --size=distilgpt2 6 layers x 768, 12 heads, BPE 50257 requested (distilgpt2's shape; the BPE
                    stops where the captions run out of merges, far below 50257)

The loop is the paper's token_sequence_probs: per text, encode it, run the model, take
log_softmax over the whole vocabulary, and read each token's log-prob with .item() and
tokenizer.decode. Both score the same tokens (framing=paper: the text alone, its first token
unscored), and their per-token log-probs are checked to agree within 1e-4 before timing.
After one warm-up pass over 50 texts, the two run in turn, --runs rounds (so both meet the
same load on a shared machine); the best of the runs is the figure, the medians are shown too.

    .venv/bin/python bench/bench_scoring.py                   # 1000 captions, scratch 4x256
    .venv/bin/python bench/bench_scoring.py --size=distilgpt2 --runs=3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semcal.lm.scoring import token_log_probs_of
from semcal.lm.scratch import train_bpe_tokenizer

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "audiocaps_labeled" / "audiocaps_labeled.csv"
SIZES = {
    "demo": (2, 128, 4, 1024),
    "scratch": (4, 256, 4, 4096),
    "distilgpt2": (6, 768, 12, 50257),
}  # layers, width, heads, BPE


def build(csv_path: Path, size: str, n_texts: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    table = pd.read_csv(csv_path, usecols=["split", "caption"])
    train = table.loc[table["split"] == "train", "caption"].tolist()
    test = table.loc[table["split"] == "test", "caption"].sample(n=n_texts, random_state=seed).tolist()
    n_layer, n_embd, n_head, vocab_size = SIZES[size]
    tokenizer = train_bpe_tokenizer(train, vocab_size)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    return GPT2LMHeadModel(config).eval(), tokenizer, test


def paper_loop(model, tokenizer, texts):
    """One text at a time, as the paper's token_sequence_probs.py scores them."""
    results = []
    for text in texts:
        input_ids = tokenizer.encode(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids).logits
        log_probs = torch.log_softmax(logits, dim=-1)
        word_probabilities = []
        for i in range(1, input_ids.shape[1]):
            token_id = input_ids[0, i]
            word_probabilities.append((tokenizer.decode(token_id), log_probs[0, i - 1, token_id].item()))
        total = sum(lp for _, lp in word_probabilities)
        results.append((total, total / max(len(word_probabilities), 1), word_probabilities))
    return results


def batched(model, tokenizer, texts, batch_size):
    return token_log_probs_of(model, tokenizer, texts, framing="paper", batch_size=batch_size)


def timed_pairs(functions, runs):
    """Run the functions in turn, `runs` rounds, so both meet the same load; seconds per function."""
    times = [[] for _ in functions]
    for _ in range(runs):
        for function, spent in zip(functions, times, strict=True):
            started = time.perf_counter()
            function()
            spent.append(time.perf_counter() - started)
    return times


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--size", choices=sorted(SIZES), default="scratch")
    parser.add_argument("--n_texts", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer, texts = build(args.csv, args.size, args.n_texts, args.seed)
    # Same tokens, same numbers: checked before anything is timed.
    reference, ours = paper_loop(model, tokenizer, texts[:100]), batched(model, tokenizer, texts[:100], args.batch_size)
    worst = max(
        float(np.max(np.abs(np.array([lp for _, lp in ref[2]]) - log_probs), initial=0.0))
        for ref, (_, log_probs) in zip(reference, ours, strict=True)
    )
    assert worst < 1e-4, f"batched and one-at-a-time log-probs differ by {worst}"
    paper_loop(model, tokenizer, texts[:50])  # warm-up
    batched(model, tokenizer, texts[:50], args.batch_size)

    loop_runs, batch_runs = timed_pairs(
        [lambda: paper_loop(model, tokenizer, texts), lambda: batched(model, tokenizer, texts, args.batch_size)],
        args.runs,
    )
    loop_s, batch_s = min(loop_runs), min(batch_runs)
    median_ratio = statistics.median(loop_runs) / statistics.median(batch_runs)
    n_layer, n_embd, _, _ = SIZES[args.size]
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    command = f".venv/bin/python bench/bench_scoring.py --size={args.size} --n_texts={args.n_texts} --runs={args.runs}"
    print(
        f"\n### Scoring: batched vs one text at a time ({args.size}: {n_layer} layers x {n_embd}, "
        f"vocabulary {len(tokenizer)})\n\n"
        f"| method | captions/s | seconds for {len(texts)} captions (best of {args.runs}) | median |\n"
        "|---|---:|---:|---:|\n"
        f"| one at a time (the paper's loop) | {len(texts) / loop_s:.0f} | {loop_s:.2f} | "
        f"{statistics.median(loop_runs):.2f} |\n"
        f"| batched, length-sorted (batch {args.batch_size}) | {len(texts) / batch_s:.0f} | {batch_s:.2f} | "
        f"{statistics.median(batch_runs):.2f} |\n\n"
        f"Speed-up: **{loop_s / batch_s:.1f}x** best of {args.runs} ({median_ratio:.1f}x on medians; target >= 5x). "
        f"{len(texts)} AudioCaps test captions, "
        f"{tokens} tokens; per-token log-probs agree within {worst:.1e}. All runs (s): loop "
        f"{', '.join(f'{t:.2f}' for t in loop_runs)}; batched {', '.join(f'{t:.2f}' for t in batch_runs)}.\n"
        f"Machine: {machine()}. Command: `{command}`"
    )


if __name__ == "__main__":
    main()
