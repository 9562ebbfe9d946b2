"""The Med-R1 prompts (Lai et al., 2025) and the chat messages built from them.

``{question}`` is the question with its options inline, Med-R1 style:
``What ...? A)X-ray, B)MRI, C)CT``. The image comes first in the user turn; the
image itself is passed separately to the processor / vLLM.
"""
from __future__ import annotations

from typing import Any

from pipelines.data.schema import LETTERS

THINK_PROMPT = (
    "{question} Your task: 1. Think through the question step by step, enclose your reasoning process "
    "in <think>...</think> tags. 2. Then provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 3. No extra information or text outside of these tags."
)
NOTHINK_PROMPT = (
    "{question} Your task: 1. Provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 2. No extra information or text outside of this tag."
)
THINK_AFTER_PROMPT = (
    "{question} Your task: 1. Provide the correct single-letter choice (A, B, C, D,...) inside "
    "<answer>...</answer> tags. 2. Then explain the reasoning behind your choice step by step, enclose it "
    "in <think>...</think> tags. 3. No extra information or text outside of these tags."
)
PROMPTS = {"think": THINK_PROMPT, "nothink": NOTHINK_PROMPT, "think_after": THINK_AFTER_PROMPT}
PROMPT_STYLES = tuple(PROMPTS)
EVAL_STYLE = "think"  # the paper evaluates with the think prompt


def _get(record: Any, name: str):
    return record[name] if isinstance(record, dict) else getattr(record, name)


def _check_style(style: str) -> str:
    if style not in PROMPTS:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return style


def format_options(options: list[str]) -> str:
    return ", ".join(f"{LETTERS[i]}){opt}" for i, opt in enumerate(options))


def format_question(record: Any) -> str:
    """'What ...? A)X-ray, B)MRI, C)CT' from a VQARecord or a dict with question and options."""
    return f"{str(_get(record, 'question')).strip()} {format_options(list(_get(record, 'options')))}"


def build_prompt(record: Any, style: str = "think") -> str:
    return PROMPTS[_check_style(style)].format(question=format_question(record))


def build_messages(record: Any, style: str = "think") -> list[dict]:
    """Qwen2-VL chat messages: one user turn, the image placeholder first, then the prompt."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": build_prompt(record, style)}]}]


def chat_prompt(tokenizer: Any, record: Any, style: str = "think") -> str:
    """The prompt text for ``record``: its messages in ``style`` through the tokenizer's (or
    processor's) chat template, ending with the assistant turn's opening."""
    return tokenizer.apply_chat_template(build_messages(record, style), tokenize=False, add_generation_prompt=True)


def completion_template(record: Any, style: str = "think", reasoning: str = "") -> str:
    """The ideal completion for ``record`` in ``style`` (an SFT target)."""
    letter = str(_get(record, "answer")).strip()
    _check_style(style)
    if style == "nothink":
        return f"<answer>{letter}</answer>"
    if style == "think_after":
        return f"<answer>{letter}</answer> <think>{reasoning}</think>"
    return f"<think>{reasoning}</think> <answer>{letter}</answer>"
