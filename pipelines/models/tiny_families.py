"""Each family's tiny config and processor: the family's real config and processor classes,
shaped like its released checkpoints (Qwen2-VL-2B, Qwen2.5-VL-3B, Qwen3-VL-2B), only small.

What differs between the generations, kept here: Qwen2.5-VL's vision tower has an MLP
intermediate size, windowed attention with some full-attention blocks and an output
projection to the text width; Qwen3-VL has 16-pixel patches, learned position embeddings,
"deepstack" features fed into early text layers, an explicit head_dim and interleaved
M-RoPE, and its chat template adds no default system turn.
"""
from __future__ import annotations

import transformers

from learner.model_family import FAMILIES, ModelFamily
from pipelines.models.tiny_tokenizer import SPECIAL_TOKENS, build_tokenizer, chat_template


def _mrope_section(head_dim: int, family: ModelFamily) -> list[int]:
    """head_dim/2 rotary frequencies split over (time, height, width), in the released models' ratios:
    Qwen2(.5)-VL 16:24:24 of 64, Qwen3-VL 24:20:20 of 64."""
    half = head_dim // 2
    t = half // 4 if family != ModelFamily.qwen3_vl else (half * 3) // 8
    return [t, (half - t) // 2, half - t - (half - t) // 2]


def _text(tiny, tokenizer, family: ModelFamily, head_dim: int) -> dict:
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    rope = {"rope_type": "default", "mrope_section": _mrope_section(head_dim, family)}
    if family == ModelFamily.qwen3_vl:
        rope.update(rope_theta=5000000.0, mrope_interleaved=True)
    else:
        rope.update(rope_theta=1000000.0)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    if family == ModelFamily.qwen3_vl:
        text["head_dim"] = head_dim
    return text


def _vision(tiny, family: ModelFamily) -> dict:
    common = dict(depth=tiny.vision_depth, num_heads=tiny.vision_num_heads, spatial_merge_size=2,
                  temporal_patch_size=2, patch_size=FAMILIES[family].patch_size)
    if family == ModelFamily.qwen2_vl:
        return dict(common, embed_dim=tiny.vision_embed_dim, hidden_size=tiny.hidden_size, mlp_ratio=2)
    if family == ModelFamily.qwen2_5_vl:
        # 112-pixel windows (8x8 patches); the last block attends over the whole image, as every 8th does in 3B.
        return dict(common, hidden_size=tiny.vision_embed_dim, intermediate_size=2 * tiny.vision_embed_dim,
                    out_hidden_size=tiny.hidden_size, window_size=112, fullatt_block_indexes=[tiny.vision_depth - 1],
                    tokens_per_second=2)
    # Qwen3-VL: deepstack from the first block (2B takes blocks 5, 11, 17 of 24); a 24x24 position grid.
    return dict(common, hidden_size=tiny.vision_embed_dim, intermediate_size=2 * tiny.vision_embed_dim,
                out_hidden_size=tiny.hidden_size, num_position_embeddings=576, deepstack_visual_indexes=[0])


def build_config(tiny, tokenizer, family: ModelFamily):
    head_dim = tiny.hidden_size // tiny.num_attention_heads
    if head_dim != 64:
        raise ValueError(
            f"tiny model head_dim is {head_dim} (hidden_size / num_attention_heads); vLLM's CPU attention needs 64"
        )
    spec = FAMILIES[family]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    return getattr(transformers, spec.config_class)(
        text_config=_text(tiny, tokenizer, family, head_dim),
        vision_config=_vision(tiny, family),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        architectures=[spec.architecture],
    )


def build_family_tokenizer(vocab_size: int, family: ModelFamily):
    return build_tokenizer(vocab_size, chat_template(default_system=family != ModelFamily.qwen3_vl))


def build_processor(tokenizer, family: ModelFamily, min_pixels: int, max_pixels: int):
    spec = FAMILIES[family]
    sizes = dict(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=spec.patch_size, merge_size=2,
                 temporal_patch_size=2)
    if family == ModelFamily.qwen3_vl:  # Qwen3-VL normalises to [-1, 1] (its preprocessor_config.json)
        sizes.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_processor = transformers.Qwen2VLImageProcessor(**sizes)  # every generation's image processor
    video_processor = getattr(transformers, spec.video_processor_class)(**sizes)
    return getattr(transformers, spec.processor_class)(image_processor=image_processor, tokenizer=tokenizer,
                                                       video_processor=video_processor,
                                                       chat_template=tokenizer.chat_template)
