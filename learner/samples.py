"""The batch format the driver sends to the learner: one ``TrainSample`` per completion."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from learner.image_codec import encode_png

# The Qwen2-VL placeholder the prompt must contain exactly once (the processor expands the pad).
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@dataclass
class TrainSample:
    """One sampled completion of one prompt, with everything the GRPO loss needs."""

    sample_id: str  # e.g. f"{prompt_id}#{k}"
    prompt_text: str  # chat template applied; contains IMAGE_PLACEHOLDER once
    image: bytes  # PNG bytes
    completion_ids: list[int]  # generated ids (vLLM), including the final eos if generated
    old_logprobs: list[float]  # sampling log-prob of each completion token (same length)
    advantage: float

    def __post_init__(self) -> None:
        if len(self.completion_ids) != len(self.old_logprobs):
            raise ValueError(f"sample {self.sample_id}: {len(self.completion_ids)} completion ids but "
                             f"{len(self.old_logprobs)} old log-probs")
        if self.prompt_text.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"sample {self.sample_id}: prompt must contain {IMAGE_PLACEHOLDER} exactly once "
                             f"(found {self.prompt_text.count(IMAGE_PLACEHOLDER)})")


def dummy_sample(eos_id: int, side: int = 56) -> TrainSample:
    """A minimal valid sample (black image at the processor's minimum size, one completion token).

    The learner runs it with loss weight 0 on ranks that have fewer micro-batches than others,
    so every rank takes part in the same collectives.
    """
    prompt = f"<|im_start|>user\n{IMAGE_PLACEHOLDER}.<|im_end|>\n<|im_start|>assistant\n"
    return TrainSample("__dummy__", prompt, encode_png(Image.new("RGB", (side, side))), [int(eos_id)], [0.0], 0.0)
