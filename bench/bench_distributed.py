"""Scoring in 1 process against N processes (torchrun, gloo on CPU; NCCL on GPUs).

Texts: --n_texts AudioCaps captions (seeded sample of the train split, as general_test of a
small data set written here). Model: a GPT-2 built from config (random weights; speed does
not depend on them) with a BPE tokenizer trained on the captions, --size as bench_scoring.py:
  --size=scratch     4 layers x 256, BPE 4096 (the scratch default of finetune_gpt2.py)
  --size=gpt2        12 layers x 768, 12 heads (GPT-2 124M's shape), BPE as far as the captions go

Each round runs `semcal score` once with one process and once under
`torchrun --standalone --nproc_per_node=N`, in turn (both meet the same load), into fresh
folders, and checks the two token_log_probs.csv files are byte-identical. Reported: the
command's wall time (process start, model load and merge included) and the scoring rate the
stage records (texts / seconds from the first batch to the last rank's last chunk). The CPU
threads are split evenly: one process gets all cores, each of N processes cores / N.

    .venv/bin/python bench/bench_distributed.py --runs=3
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from semcal.store import files

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO_ROOT.parent / "shared" / "data" / "audiocaps_labeled" / "audiocaps_labeled.csv"
SIZES = {"scratch": (4, 256, 4, 4096), "gpt2": (12, 768, 12, 50257)}  # layers, width, heads, BPE


def build(folder: Path, csv_path: Path, size: str, n_texts: int, seed: int) -> tuple[Path, Path]:
    """A data set whose general_test holds the captions, and a model folder."""
    import datasets
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from semcal.lm.scratch import train_bpe_tokenizer

    table = pd.read_csv(csv_path, usecols=["split", "caption"])
    captions = table.loc[table["split"] == "train", "caption"]
    texts = captions.sample(n=n_texts, random_state=seed).tolist()
    data = files.save_dataset_dict(
        datasets.DatasetDict({"general_test": datasets.Dataset.from_dict({"text": texts})}), folder / "data"
    )
    n_layer, n_embd, n_head, vocab_size = SIZES[size]
    tokenizer = train_bpe_tokenizer(captions.tolist(), vocab_size)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    config.update(
        {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    model = files.save_pretrained(folder / "model", GPT2LMHeadModel(config).eval(), tokenizer)
    return data, model


def score(nproc: int, data: Path, model: Path, output_dir: Path, batch_size: int) -> tuple[float, float]:
    """(wall seconds, recorded texts/s) of one `semcal score`."""
    settings = [
        f"--dataset_name={data}",
        f"--model={model}",
        f"--output_dir={output_dir}",
        f"--batch_size={batch_size}",
    ]
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    environment = {**os.environ, "OMP_NUM_THREADS": threads}
    if nproc == 1:
        command = [sys.executable, "-m", "semcal", "score", *settings]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        command += ["-m", "semcal", "score", *settings]
    started = time.perf_counter()
    subprocess.run(command, env=environment, check=True, capture_output=True, cwd=REPO_ROOT)
    wall = time.perf_counter() - started
    return wall, float(files.read_record(output_dir)["texts_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--size", choices=sorted(SIZES), default="scratch")
    parser.add_argument("--n_texts", type=int, default=4000)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, model = build(folder, args.csv, args.size, args.n_texts, args.seed)
        results: dict[int, list[tuple[float, float]]] = {1: [], args.nproc: []}
        for run in range(args.runs):
            outputs = {}
            for nproc in results:
                outputs[nproc] = folder / f"scores-{nproc}-{run}"
                results[nproc].append(score(nproc, data, model, outputs[nproc], args.batch_size))
            one, many = (outputs[n] / "token_log_probs.csv" for n in results)
            assert one.read_bytes() == many.read_bytes(), "the two score files differ"
            shutil.rmtree(outputs[1]), shutil.rmtree(outputs[args.nproc])

    print(
        f"scoring {args.n_texts} AudioCaps captions, model {args.size} {SIZES[args.size][:3]}, batch {args.batch_size}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {device}; torch {torch.__version__}; {args.runs} runs"
    )
    print("| processes | wall s (median) | wall s (min) | texts/s recorded (median) | texts/s (max) |")
    print("|---|---|---|---|---|")
    for nproc, runs in results.items():
        walls, rates = [wall for wall, _ in runs], [rate for _, rate in runs]
        print(
            f"| {nproc} | {statistics.median(walls):.1f} | {min(walls):.1f} | {statistics.median(rates):.0f} | "
            f"{max(rates):.0f} |"
        )
    one_rate = statistics.median(rate for _, rate in results[1])
    many_rate = statistics.median(rate for _, rate in results[args.nproc])
    one_wall = statistics.median(wall for wall, _ in results[1])
    many_wall = statistics.median(wall for wall, _ in results[args.nproc])
    print(
        f"\n{args.nproc} processes / 1 process: scoring rate x{many_rate / one_rate:.2f}, "
        f"wall time x{many_wall / one_wall:.2f}; score files byte-identical in every run"
    )


if __name__ == "__main__":
    main()
