"""Evaluation answer parser: the paper's eval rule, nothing more.

The paper scores a greedy completion by the first match of
``<answer>\\s*(\\w+)\\s*</answer>`` compared with the ground-truth letter; no match
is wrong.  The regex is linear here (each ``<answer>`` is followed by a distinct
word/space run, so backtracking is bounded by the text length), so we use it as is.
"""

from __future__ import annotations

import re

EVAL_ANSWER_PATTERN = re.compile(r"<answer>\s*(\w+)\s*</answer>")


def extract_eval_answer(text: object) -> str | None:
    """The paper's eval extraction: first ``<answer>\\s*(\\w+)\\s*</answer>`` group, or None.

    Non-str input returns None.
    """
    if not isinstance(text, str):
        return None
    m = EVAL_ANSWER_PATTERN.search(text)
    return None if m is None else m.group(1)


def is_correct_eval(text: object, letter: str) -> bool:
    """True iff the extracted answer equals ``letter`` exactly (after stripping ``letter``).

    ``letter`` may also be given in the Med-R1 ``<answer> C </answer>`` form.
    """
    pred = extract_eval_answer(text)
    if pred is None or not isinstance(letter, str):
        return False
    gt = extract_eval_answer(letter)
    return pred == (letter.strip() if gt is None else gt)
