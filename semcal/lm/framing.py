"""The token ids a text becomes, the same for training and scoring, and the same for every model.

Framings (recorded with the model, so scoring frames as training did):
- `bos_eos` (default): BOS + text + EOS. Every text token is scored, the first one given
  BOS, and EOS is scored too, so the models learn where a caption ends.
- `paper`: the text alone (the paper's code). Its first token is never scored.
In both, token i of the framed sequence is predicted from tokens 0..i-1, and tokens
1..n-1 are what the training loss averages and what scoring reports.

A framed text longer than max_length tokens is cut; the stages say how many were
(`report_cut`) and record it. The calibration compares two models' log-probs token by
token, so the models (and score files) of one data set must agree on tokenizer, framing
and max_length: `check_sibling_tokenizers` refuses an output that would not.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Any

from semcal.core.errors import UserError
from semcal.store import files, runstate

log = logging.getLogger(__name__)

FRAMINGS = ("bos_eos", "paper")


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
    return frame_and_count_cuts(tokenizer, texts, framing, max_length)[0]


def frame_and_count_cuts(
    tokenizer: Any, texts: list[str], framing: str, max_length: int
) -> tuple[list[list[int]], int]:
    """`frame_texts`, and how many texts were longer than max_length tokens (and so cut)."""
    check_framing(framing)
    if not isinstance(max_length, numbers.Integral) or max_length < 2:
        # Below 2 no token is left to score, and a negative one would cut from the end instead.
        raise UserError(
            f"max_length={max_length!r}: a framed text needs at least 2 tokens (one is scored); set max_length to 2 "
            "or more (the model's record, or the score setting)."
        )
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if framing == "bos_eos":
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        if bos is None:
            raise UserError("the tokenizer has neither a BOS nor an EOS token, which framing=bos_eos needs; use paper.")
        ids = [[bos, *seq, eos] for seq in ids]
    cut = sum(len(seq) > max_length for seq in ids)
    return [list(seq[:max_length]) for seq in ids], cut


def report_cut(what: str, cut: int, max_length: int, consequence: str) -> None:
    """One warning line when texts were cut (silent when none were)."""
    if cut:
        log.warning(
            "%s: %d %s longer than max_length=%d tokens %s cut; %s",
            what,
            cut,
            "text" if cut == 1 else "texts",
            max_length,
            "was" if cut == 1 else "were",
            consequence,
        )


def tokenisation(tokenizer_fingerprint: str, framing: str, max_length: int) -> dict[str, Any]:
    """What decides the scored tokens of a text: part of a model's or a score file's identity."""
    return {"tokenizer": tokenizer_fingerprint, "framing": framing, "max_length": max_length}


def check_sibling_tokenizers(output: runstate.StageOutput, identity: dict[str, Any], same_data: str) -> None:
    """Refuse when an output beside ours, of the same stage and data, tokenises differently.

    The folders next to the output are the other models of the data set (or the other score
    folders of the split), finished or being built. Those whose identity has our stage and
    our input `same_data` (general_train's fingerprint for models, the texts' for scores) must
    have our tokenisation: the calibration compares their per-token log-probs one to one.
    """
    ours = identity["inputs"]
    parent = output.path.parent
    if ours.get(same_data) is None or not parent.is_dir():
        return
    for sibling in sorted(parent.iterdir()):
        if sibling.name in (output.path.name, output.staging.name) or not sibling.is_dir():
            continue
        theirs = _identity_in(sibling)
        if not theirs or theirs.get("stage") != identity["stage"] or theirs["inputs"].get(same_data) != ours[same_data]:
            continue
        their_tokens = theirs["inputs"].get("tokens") or {}
        differs = [key for key, value in ours["tokens"].items() if their_tokens.get(key, value) != value]
        if differs:
            shown = ", ".join(f"{key} {their_tokens[key]} there, {ours['tokens'][key]} here" for key in differs)
            raise UserError(
                f"{sibling} holds a {identity['stage']} output of the same data that tokenises differently "
                f"({shown}). The general and real models of a data set must share one tokenizer, framing and "
                "max_length (base_model=scratch: the same tokenizer_dir); use matching models and settings, or "
                f"write to a folder outside {parent}."
            )


def _identity_in(folder: Path) -> dict[str, Any] | None:
    """The identity of a finished output (its record) or of one being built (its unfinished state)."""
    for name in (files.RECORD_NAME, runstate.UNFINISHED_NAME):
        try:
            state = files.read_json(folder / name)
        except (OSError, ValueError):
            continue
        identity = state.get("identity") if isinstance(state, dict) else None
        if isinstance(identity, dict) and isinstance(identity.get("inputs"), dict):
            return identity
    return None
