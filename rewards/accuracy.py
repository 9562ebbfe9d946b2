"""Accuracy rewards for multiple-choice answers (single letters A, B, C, ...).

Two modes:

``accuracy_strict`` -- the paper's code, exactly.  Content of the first
    ``<answer>(.*?)</answer>`` match *without* DOTALL (so it never crosses a
    newline), stripped; if there is no match, the whole completion stripped.
    1.0 if that string equals the ground-truth letter exactly, else 0.0.

``accuracy`` -- tolerant.  Two deliberate differences:
    1. Extraction: the first ``<answer>`` and the first ``</answer>`` after it,
       newlines allowed (``<answer>\\nB\\n</answer>`` is a common VLM output
       and the paper's newline rule is an artifact of a missing flag).  No tag
       pair -> 0.0: we do not fall back to the whole text, because then any
       completion starting with "A." or "(B)" would be graded as an answer
       even though the model never committed to one.
    2. One normalization, ``parse_choice_letter``: a leading single-letter
       token A-H (either case), optionally after the word "option", either
       alone, wrapped in parentheses, or followed by ``)``, ``.`` or ``:`` and
       then any text.  Accepted: ``B``, ``b``, ``B)``, ``(B)``, ``B.``,
       ``B: text``, ``B)Pneumonia`` (echoing Med-R1's inline ``B)text``
       options), ``(B) text``, ``Option B``, ``option (b)``.
       Rejected: ``B text`` and ``A lesion ...`` (a bare letter followed by a
       word is too easily the English article), ``BC``, ``The answer is B``.
    The extracted letter is compared case-insensitively with the ground truth.

Ground truth may be ``"B"`` or the Med-R1 ``solution`` form ``"<answer> B </answer>"``;
both modes normalize it with the strict extraction.  If the normalized ground
truth is not a letter (a non multiple-choice dataset), tolerant mode falls back
to a case-insensitive comparison of the stripped strings.

Non-str completion or answer (e.g. None) -> 0.0, never an exception.
All extraction is ``str.find`` scanning, linear in the completion length
(the regex ``<answer>(.*?)</answer>`` is quadratic on many unclosed tags).
"""

from __future__ import annotations

import re

from rewards.format import ANSWER_CLOSE, ANSWER_OPEN

# Reference for tests/bench only: the paper's extraction regex.
STRICT_ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>")

CHOICE_LETTERS = "ABCDEFGH"  # the answer letters; pipelines read them as pipelines.data.schema.LETTERS


def extract_answer_strict(text: str) -> str | None:
    """Content of the first ``<answer>(.*?)</answer>`` match without DOTALL, or None.

    Same result as ``re.search(STRICT_ANSWER_PATTERN, text).group(1)`` but linear:
    a match cannot cross a newline and the tags contain none, so we work line by
    line; within a line, if the first ``<answer>`` has no ``</answer>`` after it,
    no later ``<answer>`` on that line has one either.
    """
    pos = 0
    n_open = len(ANSWER_OPEN)
    while True:
        p = text.find(ANSWER_OPEN, pos)
        if p == -1:
            return None
        nl = text.find("\n", p)
        end = len(text) if nl == -1 else nl
        c = text.find(ANSWER_CLOSE, p + n_open, end)
        if c != -1:
            return text[p + n_open : c]
        if nl == -1:
            return None
        pos = nl + 1


def extract_answer_dotall(text: str) -> str | None:
    """Content between the first ``<answer>`` and the first ``</answer>`` after it (newlines allowed)."""
    p = text.find(ANSWER_OPEN)
    if p == -1:
        return None
    start = p + len(ANSWER_OPEN)
    c = text.find(ANSWER_CLOSE, start)
    if c == -1:
        return None  # no later <answer> can have a closing tag either
    return text[start:c]


def normalize_ground_truth(answer: str) -> str:
    """``"B"`` -> ``"B"``; ``"<answer> B </answer>"`` -> ``"B"`` (paper's extraction, stripped)."""
    inner = extract_answer_strict(answer)
    return (answer if inner is None else inner).strip()


def parse_choice_letter(text: str) -> str | None:
    """Upper-case choice letter from a short answer string, or None (see module doc for the rule)."""
    t = text.strip()
    if t[:6].lower() == "option":
        rest = t[6:]
        t = rest.lstrip()
        if t == rest and t[:1] != "(":
            return None  # "optionB" / "options": the word must be separated
    if len(t) >= 3 and t[0] == "(" and t[2] == ")":
        letter = t[1]  # "(B)" optionally followed by anything
    elif len(t) == 1 or (len(t) >= 2 and t[1] in ").:"):
        letter = t[0]  # "B", or "B)" / "B." / "B:" optionally followed by anything
    else:
        return None
    if letter in CHOICE_LETTERS or letter in CHOICE_LETTERS.lower():
        return letter.upper()
    return None


def accuracy_strict_score(completion: object, answer: object) -> float:
    if not isinstance(completion, str) or not isinstance(answer, str):
        return 0.0
    inner = extract_answer_strict(completion)
    pred = (completion if inner is None else inner).strip()
    return 1.0 if pred == normalize_ground_truth(answer) else 0.0


def accuracy_tolerant_score(completion: object, answer: object) -> float:
    if not isinstance(completion, str) or not isinstance(answer, str):
        return 0.0
    inner = extract_answer_dotall(completion)
    if inner is None:
        return 0.0
    gt = normalize_ground_truth(answer)
    gt_letter = parse_choice_letter(gt) if len(gt) == 1 else None
    if gt_letter is None:
        # Not a multiple-choice ground truth: plain case-insensitive comparison.
        return 1.0 if gt and inner.strip().casefold() == gt.casefold() else 0.0
    return 1.0 if parse_choice_letter(inner) == gt_letter else 0.0


def _check_lengths(completions: list, answers: list) -> None:
    if len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")


def accuracy_strict_reward(completions: list, answers: list) -> list[float]:
    """Paper-exact accuracy reward, 0/1 per completion."""
    _check_lengths(completions, answers)
    return [accuracy_strict_score(c, a) for c, a in zip(completions, answers)]


def accuracy_reward(completions: list, answers: list) -> list[float]:
    """Tolerant accuracy reward, 0/1 per completion."""
    _check_lengths(completions, answers)
    return [accuracy_tolerant_score(c, a) for c, a in zip(completions, answers)]
