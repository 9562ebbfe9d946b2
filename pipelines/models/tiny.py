"""Build a small Qwen-VL (Qwen2-VL, Qwen2.5-VL or Qwen3-VL) with its own tokenizer and processor, offline.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained on the
project's prompt and medical vocabulary (``tiny_tokenizer.py``), the model is the
family's real ``*ForConditionalGeneration`` class, randomly initialised with small
dimensions, vision tower included (``tiny_families.py``). The saved directory loads in
transformers and in vLLM like a released checkpoint of that family.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, GenerationConfig

from learner.model_family import FAMILIES, ModelFamily
from pipelines.models.tiny_families import build_config, build_family_tokenizer, build_processor

log = logging.getLogger(__name__)


def build_model_config(tiny, tokenizer, family: str | ModelFamily = ModelFamily.qwen2_vl):
    return build_config(tiny, tokenizer, ModelFamily(str(family)))


def build_tiny_model(out_dir: str | Path, tiny, min_pixels: int = 3136, max_pixels: int = 401408,
                     family: str | ModelFamily | None = None) -> Path:
    """Write tokenizer, processor and randomly initialised weights to ``out_dir``.

    ``family`` defaults to ``tiny.family`` (``model.tiny.family`` in the config)."""
    family = ModelFamily(str(family if family is not None else getattr(tiny, "family", ModelFamily.qwen2_vl)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_family_tokenizer(tiny.vocab_size, family)
    config = build_config(tiny, tokenizer, family)

    torch.manual_seed(tiny.seed)
    model = AutoModelForImageTextToText.from_config(config).to(torch.float32)
    model.eval()
    processor = build_processor(tokenizer, family, min_pixels, max_pixels)

    model.generation_config = GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    dims = {k: getattr(tiny, k) for k in tiny} if hasattr(tiny, "keys") else {}  # a StrEnum dumps as its value
    (out / "medr1_tiny.json").write_text(json.dumps({"seed": tiny.seed, "family": family.value,
                                                      "parameters": n_params, "dims": dims}, indent=2))
    log.info("built tiny %s (%.1fM parameters) in %s", FAMILIES[family].title, n_params / 1e6, out)
    return out


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))
