"""Per-token log-probabilities of every text of a split under one model.

`score_split` (token_sequence_probs.py, `semcal score`) writes `token_log_probs.csv` in
`output_dir`, one row per text, in the paper's columns:

    text_id             the text's row index in the split
    total_log_prob      sum of the scored tokens' log-probabilities (natural log)
    avg_log_prob        total_log_prob / number of scored tokens
    word_probabilities  JSON list of [token, log_prob] pairs (tokens as convert_ids_to_tokens gives them)

Which tokens are scored is decided by the framing the model was trained with (see
semcal.lm.framing): with `bos_eos` every text token plus EOS, with `paper` every token but the first.

Speed: texts are framed once, sorted by length and scored in batches with attention masks
under `torch.inference_mode`, on CUDA when there is one. Right padding leaves the real
tokens' positions and (causal) attention untouched, so batched scores equal one-at-a-time
scores up to float rounding.

Run state (semcal.store.runstate): the output is built in `.NAME.partial/` beside output_dir and
swapped in when complete, so a failed run leaves the previous output as it was. Rows are
flushed there in chunks (files.ChunkedTableWriter). The batches are planned from all texts
before anything is skipped, so a rerun after a kill computes every remaining text in
exactly the batch it had before and the final file is byte-identical to an uninterrupted
run. A rerun with the same settings, model and texts does nothing; other settings replace
the output. For tests, SEMCAL_KILL_AT=chunk:N SIGKILLs the process after its N-th chunk.

Mixing tokenisers is refused twice: before scoring, the other score folders beside
`output_dir` (the other models' scores of the same texts) must show the same tokenizer,
framing and max_length; and `check_same_tokens` compares two score tables token by token.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semcal.core import console, distributed
from semcal.core.config import below_minimum
from semcal.core.errors import UserError
from semcal.lm.framing import check_framing, check_sibling_tokenizers, frame_and_count_cuts, report_cut, tokenisation
from semcal.lm.models import (
    load_model,
    load_model_config,
    load_tokenizer,
    model_fingerprint,
    model_positions,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from semcal.store import files, runstate, score_files
from semcal.store.data import get_split, heldout_rows, load_dataset_dict, texts_of
from semcal.store.runstate import StageOutput

log = logging.getLogger(__name__)

SCORES_NAME = "token_log_probs.csv"
DEFAULT_FRAMING = "bos_eos"
DEFAULT_MAX_LENGTH = 512
DEFAULT_EVAL_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 42
# Settings that are not part of a score file's identity: where things are (what they hold is
# fingerprinted instead) and how the work is chunked.
NOT_IDENTITY = ("dataset_name", "output_dir", "model", "gguf_file", "chunk_size", "overwrite")


@dataclass
class ScoreConfig:
    dataset_name: str = "runs/demo/data"  # data set holding the split: save_to_disk folder, CSV/Parquet/JSONL or Hub id
    split_column: str = "split"  # for a single data file: the column naming each row's split
    split_name: str = "general_test"  # split whose texts are scored
    text_column: str = "text"  # column holding the texts (captions)
    model: str = "runs/demo/models/general"  # model folder from finetune_gpt2.py, a Hub id, or a .gguf file
    gguf_file: str | None = None  # a GGUF file inside model's folder
    output_dir: str = "runs/demo/scores/general_test.general"  # gets token_log_probs.csv and semcal_record.json
    framing: str | None = None  # none: as the model was trained (its record; else bos_eos); or bos_eos / paper
    max_length: int | None = None  # none: as the model was trained (its record; else 512)
    heldout_only: bool = False  # score only the rows held out from training (general_train: texts no model saw)
    eval_fraction: float | None = None  # heldout_only: held-out share; none = the model's (its record; else 0.2)
    split_seed: int | None = None  # heldout_only: held-out seed; none = the model's (its record; else 42)
    batch_size: int = 32  # texts per forward pass (sorted by length, so padding stays small)
    max_batch_tokens: int = 4096  # cap on padded tokens per batch (memory: logits are tokens x vocabulary)
    chunk_size: int = 1000  # texts per flushed chunk: a killed run redoes at most this many
    overwrite: bool = False  # discard an unfinished run in output_dir made with other settings


def score_split(config: ScoreConfig) -> Path:
    """Score the texts of `split_name` with `model`; returns the CSV path."""
    _check_settings(config)
    output = StageOutput(
        "score", config.output_dir, what=f"score {Path(config.output_dir).name}", overwrite=config.overwrite
    )
    model_record = _model_record(config.model)
    framing, max_length, eval_fraction, split_seed = _model_settings(config, model_record)
    dataset_dict = load_dataset_dict(config.dataset_name, config.split_column)
    texts = texts_of(get_split(dataset_dict, config.split_name), config.split_name, config.text_column)
    if config.heldout_only:
        text_ids = np.flatnonzero(heldout_rows(dataset_dict, config.split_name, eval_fraction, split_seed)[0])
    else:
        text_ids = np.arange(len(texts))
    tokenizer = load_tokenizer(config.model, config.gguf_file, setting="model")
    positions = model_positions(load_model_config(config.model, config.gguf_file, setting="model"))
    max_length = min(max_length, positions or max_length)
    inputs = {
        "texts": files.fingerprint_texts(texts),
        "text_ids": files.fingerprint_texts(map(str, text_ids)),
        "model": model_fingerprint(config.model, config.gguf_file),
        "tokens": tokenisation(tokenizer_fingerprint(tokenizer), framing, max_length),
    }
    identity = runstate.identity("score", config, inputs, ignore=NOT_IDENTITY)
    check_sibling_tokenizers(output, identity, same_data="texts")
    if output.up_to_date(identity):
        return output.path / SCORES_NAME
    with output.building(identity) as staging:
        details = _score(
            config, output, staging, tokenizer, [texts[i] for i in text_ids], text_ids, framing, max_length
        )
        details.update(
            tokenizer_fingerprint=inputs["tokens"]["tokenizer"],
            framing=framing,
            max_length=max_length,
            weights_fingerprint=weights_fingerprint(config.model, config.gguf_file),
            split=config.split_name,
            split_fingerprint=inputs["texts"],
            text_ids_fingerprint=inputs["text_ids"],
            model_split=(model_record or {}).get("split"),
            data={"split": config.split_name, "rows": len(texts), "scored_rows": len(text_ids)},
        )
        summary = (
            f"{len(text_ids)} texts of {config.split_name}{' (held-out rows)' if config.heldout_only else ''} with "
            f"{config.model}: mean avg_log_prob {details.get('mean_avg_log_prob') or float('nan'):.3f}, "
            f"{details['texts_per_s']:.0f} texts/s on {details['device']}"
            + (f" x {details['processes']} processes" if details["processes"] > 1 else "")
        )
        output.finish(config, summary=summary, **details)
    return output.path / SCORES_NAME


def _score(
    config: ScoreConfig,
    output: StageOutput,
    staging: Path,
    tokenizer: Any,
    texts: list[str],
    text_ids: np.ndarray,
    framing: str,
    max_length: int,
) -> dict[str, Any]:
    """Score `texts` into chunks in `staging` (skipping those a killed run wrote), merge them; the details."""
    model = load_model(config.model, config.gguf_file, setting="model")
    device = distributed.device()
    model.to(device)
    framed, cut = frame_and_count_cuts(tokenizer, texts, framing, max_length)
    report_cut(output.what, cut, max_length, f"only their first {max_length} tokens are scored")
    # Planned from all texts, then shared out by batch: every text is scored in the same batch
    # whatever the number of processes, so the merged file is byte-identical.
    batches = plan_batches([len(ids) for ids in framed], config.batch_size, config.max_batch_tokens)
    writer = files.ChunkedTableWriter(
        staging / SCORES_NAME, score_files.TOKEN_LOG_PROB_COLUMNS, "text_id", distributed.writer_name()
    )
    scored_before = len(writer.done_keys)
    started = time.perf_counter()
    _write_chunks(config, model, tokenizer, framed, text_ids, distributed.shard(batches), writer, device)
    distributed.barrier()  # every rank's chunks are written
    seconds = time.perf_counter() - started
    details: dict[str, Any] = {
        "scored_in_this_run": len(text_ids) - scored_before,
        "truncated_texts": cut,
        "device": str(device),
        "processes": distributed.world_size(),
        "texts_per_s": round((len(text_ids) - scored_before) / max(seconds, 1e-9), 1),
    }
    if distributed.is_main():
        scores = score_files.read_token_log_probs(writer.finish())
        details["mean_avg_log_prob"] = float(scores["avg_log_prob"].mean()) if len(scores) else None
    return details


def _check_settings(config: ScoreConfig) -> None:
    if config.framing is not None:
        check_framing(config.framing)
    problems = below_minimum(config, {"batch_size": 1, "max_batch_tokens": 1, "chunk_size": 1})
    if config.max_length is not None and config.max_length < 2:
        problems.append(f"max_length must be at least 2 tokens (got {config.max_length})")
    if config.split_seed is not None and not 0 <= config.split_seed < 2**32:
        problems.append(f"split_seed must be an integer from 0 to 2**32 - 1 (got {config.split_seed})")
    if problems:
        raise UserError("; ".join(problems) + ".")


def _model_record(model: str) -> dict[str, Any] | None:
    record = files.read_record(model) if Path(model).expanduser().is_dir() else None
    return record if record and record.get("stage") == "finetune" else None


def _model_settings(config: ScoreConfig, record: dict[str, Any] | None) -> tuple[str, int, float, int]:
    """framing, max_length, eval_fraction, split_seed: the settings', else the model's, else defaults."""
    trained = (record or {}).get("config", {})
    framing = config.framing or record and record.get("framing") or DEFAULT_FRAMING
    if record and config.framing and config.framing != record.get("framing"):
        log.warning("%s was trained with framing=%s, scored with %s.", config.model, record.get("framing"), framing)
    max_length = config.max_length or record and record.get("max_length") or DEFAULT_MAX_LENGTH
    eval_fraction = config.eval_fraction or trained.get("eval_fraction") or DEFAULT_EVAL_FRACTION
    split_seed = config.split_seed if config.split_seed is not None else trained.get("split_seed", DEFAULT_SPLIT_SEED)
    return framing, int(max_length), float(eval_fraction), int(split_seed)


# ---------------------------------------------------------------------------------------
# Batched scoring
# ---------------------------------------------------------------------------------------


def plan_batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Positions grouped into batches of similar length, longest first (a batch that does not
    fit in memory fails at once). A batch holds at most `batch_size` texts and, padded,
    `max_batch_tokens` tokens (always at least one text). Ties keep input order, so the plan
    depends only on the lengths."""
    order = sorted(range(len(lengths)), key=lambda position: (-lengths[position], position))
    batches: list[list[int]] = []
    for position in order:
        batch = batches[-1] if batches else None
        # Sorted longest first, so the batch's first text sets its padded length.
        if batch and len(batch) < batch_size and (len(batch) + 1) * lengths[batch[0]] <= max_batch_tokens:
            batch.append(position)
        else:
            batches.append([position])
    return batches


def score_batch(model: Any, tokenizer: Any, sequences: list[list[int]], device: Any = "cpu") -> list[np.ndarray]:
    """Log-probability of tokens 1..n-1 of each framed sequence, each given the tokens before it."""
    import torch

    batch = tokenizer.pad({"input_ids": sequences}, padding="longest", padding_side="right", return_tensors="pt")
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        targets = input_ids[:, 1:].unsqueeze(-1)
        # log_softmax at the target only: gather the logit, subtract the log of the normaliser.
        log_probs = (logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)).cpu().numpy()
    return [log_probs[row, : len(ids) - 1].astype(np.float64) for row, ids in enumerate(sequences)]


def token_log_probs_of(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    framing: str = DEFAULT_FRAMING,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 32,
    max_batch_tokens: int = 4096,
    warn_cuts: bool = True,
) -> list[tuple[list[str], np.ndarray]]:
    """(scored tokens, their log-probs) of each text, in input order: the library entry point.
    `warn_cuts`: say how many texts were cut at max_length (once per batch of texts, not per model)."""
    device = next(model.parameters()).device
    max_length = min(max_length, model_positions(model) or max_length)
    framed, cut = frame_and_count_cuts(tokenizer, texts, framing, max_length)
    if warn_cuts:
        report_cut("scoring", cut, max_length, f"only their first {max_length} tokens are scored")
    results: list[Any] = [None] * len(texts)
    for batch in plan_batches([len(ids) for ids in framed], batch_size, max_batch_tokens):
        sequences = [framed[position] for position in batch]
        for position, log_probs in zip(batch, score_batch(model, tokenizer, sequences, device), strict=True):
            results[position] = (tokenizer.convert_ids_to_tokens(framed[position][1:]), log_probs)
    return results


def score_row(text_id: int, tokens: list[str], log_probs: np.ndarray) -> list[Any]:
    """One CSV row. A text with no scored token (a one-token text under framing=paper) gets
    total 0.0 and avg_log_prob nan."""
    values = log_probs.tolist()
    total = math.fsum(values)
    average = total / len(values) if values else float("nan")
    return [int(text_id), total, average, [[token, value] for token, value in zip(tokens, values, strict=True)]]


def _write_chunks(
    config: ScoreConfig,
    model: Any,
    tokenizer: Any,
    framed: list[list[int]],
    text_ids: np.ndarray,
    batches: list[list[int]],
    writer: files.ChunkedTableWriter,
    device: Any,
) -> None:
    pending = [batch for batch in batches if any(str(text_ids[p]) not in writer.done_keys for p in batch)]
    total = sum(len(batch) for batch in batches)
    remaining = sum(len(batch) for batch in pending)
    rows: list[list[Any]] = []
    with console.progress(total=total, initial=total - remaining, unit="text", desc="scoring") as bar:
        for batch in pending:
            sequences = [framed[position] for position in batch]
            for position, log_probs in zip(batch, score_batch(model, tokenizer, sequences, device), strict=True):
                if str(text_ids[position]) not in writer.done_keys:
                    tokens = tokenizer.convert_ids_to_tokens(framed[position][1:])
                    rows.append(score_row(text_ids[position], tokens, log_probs))
            bar.update(len(batch))
            if len(rows) >= config.chunk_size:
                writer.write_chunk(rows)
                rows = []
                runstate.kill_point("chunk")
        writer.write_chunk(rows)


# ---------------------------------------------------------------------------------------
# Tokenisations must agree
# ---------------------------------------------------------------------------------------


def check_same_tokens(general: pd.DataFrame, real: pd.DataFrame) -> None:
    """Refuse two score tables (score_files.read_token_log_probs) whose token sequences differ.

    Rows are joined on text_id; ids present on one side only are not compared here (the
    evaluation reports them). Raises UserError naming the first differing
    text_id and tokens, or when the tables share no text_id at all.
    """
    merged = general[["text_id", "tokens"]].merge(
        real[["text_id", "tokens"]], on="text_id", how="inner", suffixes=("_general", "_real")
    )
    if merged.empty:
        raise UserError(
            "the general and real score tables share no text_id: they were computed on different texts or splits."
        )
    for text_id, general_tokens, real_tokens in zip(
        merged["text_id"], merged["tokens_general"], merged["tokens_real"], strict=True
    ):
        general_tokens, real_tokens = list(general_tokens), list(real_tokens)
        if general_tokens == real_tokens:
            continue
        at = next(
            (i for i, pair in enumerate(zip(general_tokens, real_tokens, strict=False)) if pair[0] != pair[1]),
            min(len(general_tokens), len(real_tokens)),
        )
        raise UserError(
            f"text_id {int(text_id)}: the general and real models tokenise it differently from token {at} on "
            f"(general {general_tokens[at : at + 6]}, real {real_tokens[at : at + 6]}; {len(general_tokens)} vs "
            f"{len(real_tokens)} tokens). Per-token log-probs can only be compared under one tokenizer and framing: "
            "score both with models that share them (base_model=scratch: the same tokenizer_dir)."
        )
