"""Speed of one fine-tuning epoch with dynamic padding (semcal.lm.finetune.finetune) against padding
every caption to 512 tokens like the paper's finetune_gpt2.py.

Texts: --n_texts AudioCaps train captions (seeded sample) as general_train, of which 80% are
trained on. Model: base_model=scratch with --n_layer x --n_embd (default 4 x 256, BPE 4096,
the scratch default), max_length 512 in both runs. Both runs are the same finetune() call
(same seed, data, model and steps) and differ only in pad_to_max_length. The figure is the
Trainer's train_runtime for the epoch (the evaluation before training and the save are not
in it; the whole call's wall time is printed too). Dynamic padding runs --runs times, the
512-padded run --slow_runs times; the best of each is reported (the machine may be shared).

    .venv/bin/python bench/bench_finetune.py                  # 1000 captions, 1 epoch, batch 8
    .venv/bin/python bench/bench_finetune.py --runs=3 --slow_runs=1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from semcal.lm.finetune import FinetuneConfig, finetune
from semcal.store import files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import DEFAULT_CSV, machine  # noqa: E402


def run(folder: Path, data: Path, args: argparse.Namespace, padded: bool, index: int) -> dict:
    output = folder / "models" / f"{'padded' if padded else 'dynamic'}-{index}"
    config = FinetuneConfig(
        dataset_name=str(data),
        text_column="caption",
        base_model="scratch",
        output_dir=str(output),
        tokenizer_dir=str(folder / "models" / "tokenizer"),
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        num_epochs=1,
        batch_size=args.batch_size,
        max_length=512,
        pad_to_max_length=padded,
        seed=args.seed,
    )
    finetune(config)
    record = files.read_record(output)
    shutil.rmtree(output)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--n_texts", type=int, default=1000)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow_runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    table = pd.read_csv(args.csv, usecols=["split", "caption"])
    sample = table[table["split"] == "train"].sample(n=args.n_texts, random_state=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_finetune-") as tmp:
        folder = Path(tmp)
        data = files.write_csv(folder / "captions.csv", sample.assign(split="general_train"))
        run(folder, data, args, padded=False, index=-1)  # warm-up (and trains the shared tokenizer)
        dynamic = [run(folder, data, args, padded=False, index=i) for i in range(args.runs)]
        padded = [run(folder, data, args, padded=True, index=i) for i in range(args.slow_runs)]

    dynamic_s = min(r["train_runtime_s"] for r in dynamic)
    padded_s = min(r["train_runtime_s"] for r in padded)
    train_rows = dynamic[0]["data"]["train_rows"]
    before = sorted({round(r["eval_loss_before_training"], 4) for r in dynamic + padded})
    after = [r["eval_loss_per_epoch"][-1]["eval_loss"] for r in dynamic + padded]
    command = (
        f".venv/bin/python bench/bench_finetune.py --n_texts={args.n_texts} --n_layer={args.n_layer} "
        f"--n_embd={args.n_embd} --batch_size={args.batch_size} --runs={args.runs} --slow_runs={args.slow_runs}"
    )
    print(
        f"\n### Fine-tuning: one epoch, dynamic padding vs padding to 512 (scratch GPT-2 {args.n_layer} layers x "
        f"{args.n_embd}, {dynamic[0]['parameters'] / 1e6:.1f}M parameters)\n\n"
        "| padding | seconds per epoch (best) | captions/s | runs | whole call, s (best) |\n"
        "|---|---:|---:|---:|---:|\n"
        f"| per batch + group_by_length (default) | {dynamic_s:.1f} | {train_rows / dynamic_s:.0f} | {args.runs} "
        f"| {min(r['wall_time_s'] for r in dynamic):.1f} |\n"
        f"| every caption to 512 (the paper's) | {padded_s:.1f} | {train_rows / padded_s:.1f} | {args.slow_runs} "
        f"| {min(r['wall_time_s'] for r in padded):.1f} |\n\n"
        f"Speed-up: **{padded_s / dynamic_s:.1f}x** (target >= 5x). {train_rows} AudioCaps train captions per epoch, "
        f"batch {args.batch_size}, same seed, data order and steps. Eval loss before training: "
        f"{', '.join(f'{loss:.4f}' for loss in before)} (padding changes no loss value); after the epoch: "
        f"{', '.join(f'{loss:.4f}' for loss in after)} (dynamic runs first; the padded run differs by its dropout "
        "draws, which are made over the padded shape). Epoch times of all runs (s): dynamic "
        f"{', '.join(str(r['train_runtime_s']) for r in dynamic)}; "
        f"padded {', '.join(str(r['train_runtime_s']) for r in padded)}.\n"
        f"Machine: {machine()}. Command: `{command}`"
    )


if __name__ == "__main__":
    main()
