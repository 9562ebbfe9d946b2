"""The Qwen-VL generations we train, told apart by the checkpoint's own ``config.json``.

A checkpoint's ``model_type`` picks its family; transformers' auto classes then load the
model and processor, so switching family is a change of ``model.path``, never of code.
Standard library only at import: the config's choices use the enum, and ``medr1 --help``
must not load torch.
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path


class ModelFamily(enum.StrEnum):
    qwen2_vl = "qwen2_vl"
    qwen2_5_vl = "qwen2_5_vl"
    qwen3_vl = "qwen3_vl"


@dataclass(frozen=True)
class FamilySpec:
    architecture: str     # the HF / vLLM class, as config.json's "architectures" names it
    config_class: str     # transformers config class
    processor_class: str
    video_processor_class: str
    patch_size: int       # vision patch side in pixels; a merged 2x2 patch is one token
    title: str


FAMILIES: dict[ModelFamily, FamilySpec] = {
    ModelFamily.qwen2_vl: FamilySpec("Qwen2VLForConditionalGeneration", "Qwen2VLConfig", "Qwen2VLProcessor",
                                     "Qwen2VLVideoProcessor", 14, "Qwen2-VL"),
    ModelFamily.qwen2_5_vl: FamilySpec("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig",
                                       "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", 14, "Qwen2.5-VL"),
    ModelFamily.qwen3_vl: FamilySpec("Qwen3VLForConditionalGeneration", "Qwen3VLConfig", "Qwen3VLProcessor",
                                     "Qwen3VLVideoProcessor", 16, "Qwen3-VL"),
}


def family_of_type(model_type: str, where: str = "the model config") -> ModelFamily:
    try:
        return ModelFamily(model_type)
    except ValueError:
        raise ValueError(f"{where}: model_type {model_type!r} is not a supported family; "
                         f"supported: {', '.join(f.value for f in ModelFamily)}") from None


def family_of(path: str) -> ModelFamily:
    """The family of a local HF directory or a cached hub id, from its config.json."""
    cfg_file = Path(path) / "config.json"
    if cfg_file.is_file():
        return family_of_type(json.loads(cfg_file.read_text()).get("model_type", ""), str(cfg_file))
    from transformers import AutoConfig  # a hub id resolved from the local cache

    return family_of_type(AutoConfig.from_pretrained(path).model_type, f"{path} config.json")
