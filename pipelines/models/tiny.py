"""Build a small Qwen2-VL with its own tokenizer and processor, offline.

Nothing here touches a model hub: the tokenizer is a byte-level BPE trained on
the project's prompt and medical vocabulary, wrapped as a Qwen2 tokenizer with
Qwen2-VL's special tokens and a chat template; the model is a randomly
initialised ``Qwen2VLForConditionalGeneration`` with small dimensions. The
saved directory loads in transformers and in vLLM like any Qwen2-VL checkpoint.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tokenizers import AddedToken as TkAddedToken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AddedToken,
    GenerationConfig,
    Qwen2TokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from pipelines.data.schema import LETTERS

log = logging.getLogger(__name__)

# Qwen2-VL's special tokens, in the order the real tokenizer numbers them.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Reasoning tags are single tokens but NOT special: decoders drop special tokens
# by default (skip_special_tokens=True), which would erase them before the reward sees them.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Renders the same prompt layout as Qwen2-VL-Instruct: a default system turn,
# images and videos as vision_start/pad/vision_end, generation prompt for the assistant.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

_MEDICAL_WORDS = """
CT MRI X-ray ultrasound dermoscopy fundus photography OCT microscopy modality imaging image scan slice
computed tomography magnetic resonance optical coherence retinal retina optic disc vessel macula layer
brain head chest lung lungs rib ribs heart abdomen liver kidney spleen pelvis spine knee hand bone skull
breast mammography skin lesion nevus melanoma mole pigment cell cells nucleus stained tissue tumor tumour
nodule cyst mass hemorrhage haemorrhage fracture effusion pneumonia edema normal abnormal benign malignant
grade grading stage mild moderate severe none small medium large left right upper lower center central
anatomy anatomical organ region structure disease diagnosis finding attribute attributes biological count
few many several single multiple present absent which what where how is are the this that of in on a an
shown visible seen depicted captured technique used modality type kind level quality good bad outlier
question answer option choice letter reasoning step think because therefore so the image shows
""".split()

_PROMPT_TEXTS = [
    "Your task: 1. Think through the question step by step, enclose your reasoning process in "
    "<think>...</think> tags. 2. Then provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 3. No extra information or text outside of these tags.",
    "Your task: 1. Provide the correct single-letter choice (A, B, C, D,...) inside <answer>...</answer> "
    "tags. 2. No extra information or text outside of this tag.",
    "What imaging modality is used to acquire this image? A)CT, B)MRI, C)X-ray, D)Ultrasound",
    "Which organ is shown in this image? A)Brain, B)Lung, C)Liver, D)Kidney",
    "What is the grade of the lesion in this image? A)Grade 1, B)Grade 2, C)Grade 3",
    "<think>The image shows a bright ring around a grey slice, so it is CT.</think> <answer>A</answer>",
    "<think>I see a lesion on the left side.</think> <answer>B</answer>",
]


def _training_corpus() -> list[str]:
    lines = list(_PROMPT_TEXTS)
    words = _MEDICAL_WORDS
    # Short word windows so merges form for the domain vocabulary.
    for i in range(len(words)):
        lines.append(" ".join(words[i : i + 6]))
        lines.append(" ".join(w.capitalize() for w in words[i : i + 3]))
    for letter in LETTERS:
        lines.append(f"{letter}) {letter}. ({letter}) <answer>{letter}</answer> <answer> {letter} </answer>")
    return lines


def build_tokenizer(vocab_size: int):
    """Byte-level BPE trained on the corpus above, as a Qwen2TokenizerFast."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    n_reserved = len(SPECIAL_TOKENS) + len(TAG_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_reserved,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(_training_corpus() * 4, trainer=trainer)
    tok.add_special_tokens([TkAddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([TkAddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])

    hf = Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
    )
    hf.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]]})
    hf.chat_template = CHAT_TEMPLATE
    hf.model_max_length = 32768
    return hf


def build_model_config(tiny, tokenizer):
    head_dim = tiny.hidden_size // tiny.num_attention_heads
    if head_dim != 64:
        raise ValueError(
            f"tiny model head_dim is {head_dim} (hidden_size / num_attention_heads); vLLM's CPU attention needs 64"
        )
    # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width); same 1:1.5:1.5 shape as Qwen2-VL.
    half = head_dim // 2
    t = half // 4
    mrope = [t, (half - t) // 2, half - t - (half - t) // 2]
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=tiny.vision_depth,
        embed_dim=tiny.vision_embed_dim,
        hidden_size=tiny.hidden_size,
        num_heads=tiny.vision_num_heads,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        architectures=["Qwen2VLForConditionalGeneration"],
    )


def build_tiny_model(out_dir: str | Path, tiny, min_pixels: int = 3136, max_pixels: int = 401408) -> Path:
    """Write tokenizer, processor and randomly initialised weights to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(tiny.vocab_size)
    config = build_model_config(tiny, tokenizer)

    torch.manual_seed(tiny.seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32)
    model.eval()

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=CHAT_TEMPLATE)

    model.generation_config = GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "medr1_tiny.json").write_text(json.dumps({"seed": tiny.seed, "parameters": n_params,
                                                      "dims": {k: getattr(tiny, k) for k in tiny.keys()}}
                                                     if hasattr(tiny, "keys") else {"seed": tiny.seed,
                                                                                    "parameters": n_params},
                                                     indent=2))
    log.info("built tiny Qwen2-VL (%.1fM parameters) in %s", n_params / 1e6, out)
    return out


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))
