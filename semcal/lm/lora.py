"""LoRA fine-tuning of a pretrained base with peft: which layers to adapt, wrapping, adapter folders.

With `lora_r > 0` the fine-tuning stage freezes the base's weights and trains low-rank
adapters on its attention and MLP projections (peft's LoraConfig / get_peft_model): a
135M-parameter base trains about 1-3% of its weights, so a step needs far less optimizer
memory and the saved model can be a few MB instead of the whole base.

`lora_merge=true` (default) merges the adapter into the base (merge_and_unload) and saves an
ordinary model folder, so nothing downstream knows LoRA was used. `lora_merge=false` saves
the adapter alone (adapter_config.json + adapter_model.safetensors + tokenizer); its
adapter_config.json names the base it was trained on (an absolute path for a local folder or
GGUF file, else the Hub id). semcal.lm.models loads such a folder as base + adapter, merged, and
fingerprints it as the adapter's weights together with the base's, so scoring and the run's
identity treat it like any model folder. A real model started from an adapter (`init_from`)
goes on training that adapter on the same base.

peft is imported inside the functions: settings and `--help` stay fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from semcal.core.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"  # peft's name: a folder holding it is an adapter, not a whole model
AUTO = "auto"
# Defaults follow the LoRA papers' practice of adapting every projection, which fine-tunes
# noticeably better than attention alone at these ranks. GPT-2 uses Conv1D layers (c_proj is
# both the attention output and the MLP output); Llama-shaped models (SmolLM2, Qwen2, Mistral)
# name them q/k/v/o and gate/up/down.
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Settings that only matter with lora_r > 0 (left out of a full fine-tune's identity, so models
# trained before LoRA existed stay up to date).
LORA_SETTINGS = ("lora_alpha", "lora_dropout", "lora_target_modules", "lora_merge")


def target_modules(model: Any, setting: str) -> list[str] | str:
    """The module names LoRA adapts: the setting's names, or for `auto` the defaults of the model's shape."""
    if setting != AUTO:
        names = [name for name in re.split(r"[+,\s]+", setting) if name]
        if not names:
            raise UserError("lora_target_modules is empty: give module names separated by + (or auto).")
        return names
    if getattr(model.config, "model_type", None) == "gpt2":
        return list(GPT2_TARGETS)
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(LLAMA_TARGETS) <= leaf_names:
        return list(LLAMA_TARGETS)
    return "all-linear"  # peft: every linear layer but the output head


def wrap(model: Any, config: Any) -> Any:
    """The model with fresh LoRA adapters (base weights frozen) for the FinetuneConfig's lora_* settings."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, config.lora_target_modules)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        # GPT-2's Conv1D stores weights transposed; peft needs to know (it would warn and guess).
        fan_in_fan_out=getattr(model.config, "model_type", None) == "gpt2",
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as err:  # peft: target modules not found in the model
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
        raise UserError(
            f"lora_target_modules={config.lora_target_modules!r} does not fit this model ({_first_line(err)}); "
            f"its module names include: {', '.join(names[:40])}."
        ) from None


def is_adapter(name: str | Path | None) -> bool:
    return name is not None and (Path(name).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_config(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder).expanduser() / ADAPTER_CONFIG).read_text())


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter folder was trained on, as a name semcal.lm.models loads."""
    base = adapter_config(folder).get("base_model_name_or_path")
    if not base:
        raise UserError(f"adapter {folder} does not name its base model (base_model_name_or_path in {ADAPTER_CONFIG}).")
    if base.startswith("/") and not Path(base).exists():
        raise UserError(f"the base model of adapter {folder}, {base}, does not exist (moved or deleted?).")
    return base


def base_reference(name: str, gguf_file: str | None = None) -> str:
    """How an adapter names its base: absolute path of a local folder or GGUF file, else the Hub id."""
    path = Path(name).expanduser()
    if gguf_file:
        path = path / gguf_file
    return str(path.resolve()) if path.exists() else name


def load_adapter(base_model: Any, folder: str | Path, trainable: bool = False) -> Any:
    """`base_model` with the adapter in `folder` applied: a PeftModel to train on, or merged into plain weights."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model, str(Path(folder).expanduser()), is_trainable=trainable)
    return model if trainable else model.merge_and_unload()


def check_continues(config: Any) -> None:
    """A model started from an adapter trains that adapter further: its rank and alpha are the adapter's."""
    theirs = adapter_config(config.init_from)
    differs = [
        f"{name}={theirs.get(key)} there, {getattr(config, name)} here"
        for name, key in (("lora_r", "r"), ("lora_alpha", "lora_alpha"))
        if theirs.get(key) != getattr(config, name)
    ]
    if differs:
        raise UserError(
            f"init_from={config.init_from} is a LoRA adapter, which this model trains further, but its settings "
            f"differ ({'; '.join(differs)}): use the same lora_r and lora_alpha, or start from a merged model."
        )


def set_base(folder: str | Path, base: str) -> None:
    """Write the base into the saved adapter_config.json (peft records the loader's folder, not a GGUF file)."""
    path = Path(folder) / ADAPTER_CONFIG
    settings = json.loads(path.read_text())
    settings["base_model_name_or_path"] = base
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def problems(config: Any, scratch: bool) -> list[str]:
    """What is wrong with a FinetuneConfig's lora_* settings (none when lora_r is 0)."""
    if not config.lora_r:
        return ["lora_r must be 0 (full fine-tuning) or more"] if config.lora_r < 0 else []
    found = []
    if scratch:
        found.append("lora_r > 0 adapts a pretrained base; base_model=scratch trains every weight (set lora_r=0)")
    if config.lora_alpha <= 0 or not 0.0 <= config.lora_dropout < 1.0:
        found.append(
            f"lora_alpha must be positive and lora_dropout in [0, 1) (got {config.lora_alpha}, {config.lora_dropout})"
        )
    if config.push_to_hub and not config.lora_merge:
        found.append("push_to_hub uploads a whole model: use lora_merge=true")
    if config.init_from and is_adapter(config.init_from):
        check_continues(config)
    return found


def base_of(config: Any) -> str:
    """The base a saved adapter names: init_from's own base when it is an adapter, else the model trained on."""
    if config.init_from:
        return adapter_base(config.init_from) if is_adapter(config.init_from) else base_reference(config.init_from)
    return base_reference(config.base_model, config.gguf_file)


def details(config: Any, model: Any) -> dict[str, Any]:
    """For the record: the adapter's rank, scaling, the layers it adapted, how it is saved, its base."""
    adapter = model.peft_config["default"]
    return {
        "r": adapter.r,
        "alpha": adapter.lora_alpha,
        "target_modules": sorted(adapter.target_modules),
        "saved": "merged" if config.lora_merge else "adapter",
        "base": base_of(config),
    }
