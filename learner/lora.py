"""LoRA on the policy (PEFT), pushed to vLLM merged into the base weights.

Decisions:
- Adapters go on the language model's linear layers named in ``target_modules``; the vision
  tower stays frozen by default (as EasyR1 and OpenRLHF do): vLLM's LoRA support does not
  reach the vision tower, and a frozen tower keeps what the base model sees intact.
- Pushes are *merged*: every exported tensor is ``W + scale * B @ A`` under the base model's
  checkpoint name, so a LoRA run goes through exactly the weight-transfer, verification and
  digest path of full fine-tuning, unchanged (and would cover the vision tower too, should it
  be trained). Serving the adapter through vLLM's LoRA instead would need its own transfer and
  a LoRA-enabled engine, and could not cover the vision tower.
- The reference model is the same module with the adapter disabled: no second copy.
- Checkpoints hold the adapter (``adapter/``: PEFT's files) and the trainable state only; the
  merged plain HF model is written for the final checkpoint and by ``medr1 export``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForImageTextToText, AutoProcessor

from learner.model_family import family_of
from learner.weight_names import checkpoint_names

ADAPTER_DIR = "adapter"


def is_lora(model) -> bool:
    return isinstance(model, PeftModel)


def target_regex(target_modules, freeze_vision: bool = True) -> str:
    """A full-match pattern over module names: the named linear layers, of the language model only
    unless the vision tower is to be trained too."""
    names = "|".join(re.escape(str(t)) for t in target_modules)
    scope = r".*language_model\..*" if freeze_vision else r".*"
    return rf"{scope}\.({names})"  # PEFT full-matches a string against each module's name


def apply_lora(model, lora_cfg):
    """Wrap ``model`` with fresh LoRA adapters; everything else is frozen (PEFT's default)."""
    cfg = LoraConfig(r=int(lora_cfg.rank), lora_alpha=float(lora_cfg.alpha), lora_dropout=float(lora_cfg.dropout),
                     target_modules=target_regex(list(lora_cfg.target_modules), bool(lora_cfg.freeze_vision)),
                     bias="none")
    peft_model = get_peft_model(model, cfg)
    if not any(isinstance(m, LoraLayer) for m in peft_model.modules()):
        raise ValueError(f"learner.lora.target_modules {list(lora_cfg.target_modules)} matched no linear layer")
    return peft_model


def trainable_counts(model) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _clean(name: str) -> str:
    """A wrapped layer's base weight under the name the base model gives it."""
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def merged_parameters(peft_model):
    """(base in-memory name, checkpoint name, tensor): the base model's parameters with every
    adapter merged in (``W + scale * B @ A``), as full fine-tuning would export them."""
    base = peft_model.get_base_model()
    wrapped = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    rows = []
    for name, p in base.named_parameters():
        if ".lora_" in name:
            continue
        owner = name.rsplit(".base_layer.", 1)[0] if ".base_layer." in name else None
        t = p
        if owner is not None and owner in wrapped and name.endswith(".base_layer.weight"):
            layer = wrapped[owner]
            t = p.detach().clone()
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    t += layer.get_delta_weight(adapter).to(t.dtype)
        rows.append((_clean(name), t))
    names = checkpoint_names(base, [n for n, _ in rows])
    tied = bool(getattr(base.config.get_text_config(), "tie_word_embeddings", False)
                or getattr(base.config, "tie_word_embeddings", False))
    for name, t in rows:
        if tied and names[name] == "lm_head.weight":
            continue
        yield name, names[name], t


def save_adapter(peft_model, directory: Path, base_model_path: str) -> None:
    """PEFT's adapter files, naming the base model they apply to."""
    peft_model.save_pretrained(str(directory), safe_serialization=True)
    cfg_file = directory / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = str(base_model_path)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def merge_adapter(adapter_dir: str, out_dir: str, base_model_path: str | None = None) -> Path:
    """A plain HF model: the adapter in ``adapter_dir`` merged into its base (float32), with the base's processor."""
    cfg_file = Path(adapter_dir) / "adapter_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: no LoRA adapter here")
    base_path = base_model_path or json.loads(cfg_file.read_text())["base_model_name_or_path"]
    family_of(base_path)
    base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=torch.float32, trust_remote_code=False)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out, safe_serialization=True)
    AutoProcessor.from_pretrained(base_path, trust_remote_code=False).save_pretrained(out)
    return out
