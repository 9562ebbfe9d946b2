"""The tiny models' tokenizer, built offline: the same recipe for every Qwen-VL family.

A byte-level BPE trained on the project's prompt and medical vocabulary, wrapped as a
Qwen2 tokenizer with Qwen-VL's special tokens (numbered as the real tokenizer numbers
them) and the family's chat template. Nothing is downloaded.
"""
from __future__ import annotations

from tokenizers import AddedToken as TkAddedToken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, Qwen2TokenizerFast

from pipelines.data.schema import LETTERS

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

# Renders the same prompt layout as the Qwen-VL Instruct templates: images and videos as
# vision_start/pad/vision_end, a generation prompt for the assistant. Qwen2-VL and Qwen2.5-VL
# add a default system turn when the conversation has none; Qwen3-VL does not.
_DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
)
_TURNS = (
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


def chat_template(default_system: bool = True) -> str:
    return "{% set image_count = namespace(value=0) %}" + (_DEFAULT_SYSTEM if default_system else "") + _TURNS


CHAT_TEMPLATE = chat_template(True)

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


def build_tokenizer(vocab_size: int, template: str = CHAT_TEMPLATE):
    """Byte-level BPE trained on the corpus above, as a Qwen2TokenizerFast with ``template``."""
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
    hf.chat_template = template
    hf.model_max_length = 32768
    return hf
