import re

import pytest

from pipelines.data.schema import VQARecord
from pipelines.prompts import (
    EVAL_STYLE,
    PROMPT_STYLES,
    build_messages,
    build_prompt,
    completion_template,
    format_question,
)

REC = VQARecord(id="r1", image=b"", question="What imaging modality is this?", options=["X-ray", "MRI", "CT"],
                answer="C", modality="CT", question_type="modality recognition", source="t")
Q = "What imaging modality is this? A)X-ray, B)MRI, C)CT"


def test_format_question_medr1_style():
    assert format_question(REC) == Q
    assert format_question({"question": " What? ", "options": ["a", "b"]}) == "What? A)a, B)b"


def test_think_prompt_is_the_papers():
    assert build_prompt(REC, "think") == (
        Q + " Your task: 1. Think through the question step by step, enclose your reasoning process in "
        "<think>...</think> tags. 2. Then provide the correct single-letter choice (A, B, C, D,...) inside "
        "<answer>...</answer> tags. 3. No extra information or text outside of these tags.")
    assert EVAL_STYLE == "think"


def test_nothink_prompt_is_the_papers():
    assert build_prompt(REC, "nothink") == (
        Q + " Your task: 1. Provide the correct single-letter choice (A, B, C, D,...) inside "
        "<answer>...</answer> tags. 2. No extra information or text outside of this tag.")


def test_think_after_prompt_answers_first():
    p = build_prompt(REC, "think_after")
    assert p.startswith(Q + " Your task: 1. Provide the correct single-letter choice")
    assert p.index("<answer>") < p.index("<think>")


def test_messages_put_the_image_first():
    for style in PROMPT_STYLES:
        msgs = build_messages(REC, style)
        assert msgs == [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": build_prompt(REC, style)}]}]


def test_completion_templates_pass_the_papers_format_regexes():
    think = completion_template(REC, "think", "It is a cross-section.")
    assert think == "<think>It is a cross-section.</think> <answer>C</answer>"
    assert re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", think, re.DOTALL)
    assert re.fullmatch(r"\s*<answer>.*?</answer>", completion_template(REC, "nothink"))
    assert completion_template(REC, "think_after", "r") == "<answer>C</answer> <think>r</think>"
    m = re.search(r"<answer>\s*(\w+)\s*</answer>", think)
    assert m and m.group(1) == "C"


def test_unknown_style():
    with pytest.raises(ValueError, match="think_after"):
        build_prompt(REC, "cot")
    with pytest.raises(ValueError):
        completion_template(REC, "cot")
