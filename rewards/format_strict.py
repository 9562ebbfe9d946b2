"""Strict format rewards: exactly one think block and one answer block, in order, both non-empty.

The paper's pattern ``<think>.*?</think>\\s*<answer>.*?</answer>`` (``rewards/format.py``)
lets ``.*?`` swallow tags, so a policy earns the format reward with repeated blocks
(``<think>a</think><answer>A</answer><think>b</think><answer>B</answer>``), nested tags,
or empty blocks, and under the strict accuracy reward the *first* answer is graded while
later ones hedge. These variants accept only:

    format_strict          <think>T</think> [whitespace] <answer>A</answer>
    format_strict_nothink  [whitespace] <answer>A</answer>

where each tag occurs exactly once in the whole completion, T and A hold something other
than whitespace, and nothing comes before the first tag or after the last. Counting with
``str.count`` keeps it linear in the completion length. Non-str completions score 0.0.
"""

from __future__ import annotations

from rewards.format import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def _one_each(text: str, tags: tuple[str, ...]) -> bool:
    # Every tag of the layout once; tags of the other layout never.
    return all(text.count(t) == (1 if t in tags else 0) for t in _TAGS)


def _filled(text: str, start: int, end: int) -> bool:
    return start < end and not text[start:end].isspace()


def is_strict_think_format(text: object) -> bool:
    """``<think>T</think>``, optional whitespace, ``<answer>A</answer>``; each tag once, T and A not blank."""
    if not isinstance(text, str) or not _one_each(text, _TAGS):
        return False
    if not text.startswith(THINK_OPEN) or not text.endswith(ANSWER_CLOSE):
        return False
    tc, ao = text.find(THINK_CLOSE), text.find(ANSWER_OPEN)
    ac = len(text) - len(ANSWER_CLOSE)
    # With each tag present once, the order open < close < open < close follows from these positions.
    if not (len(THINK_OPEN) <= tc and tc + len(THINK_CLOSE) <= ao and ao + len(ANSWER_OPEN) <= ac):
        return False
    gap = text[tc + len(THINK_CLOSE):ao]
    return ((gap == "" or gap.isspace()) and _filled(text, len(THINK_OPEN), tc)
            and _filled(text, ao + len(ANSWER_OPEN), ac))


def is_strict_nothink_format(text: object) -> bool:
    """Optional leading whitespace, then ``<answer>A</answer>`` with A not blank; no other tag anywhere."""
    if not isinstance(text, str) or not _one_each(text, (ANSWER_OPEN, ANSWER_CLOSE)):
        return False
    body = text.lstrip()
    if not body.startswith(ANSWER_OPEN) or not body.endswith(ANSWER_CLOSE):
        return False
    return _filled(body, len(ANSWER_OPEN), len(body) - len(ANSWER_CLOSE))


def _check_lengths(completions: list, answers: list | None) -> None:
    if answers is not None and len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")


def format_strict_reward(completions: list, answers: list | None = None) -> list[float]:
    """Strict think format reward, 0/1 per completion. ``answers`` is only length-checked."""
    _check_lengths(completions, answers)
    return [1.0 if is_strict_think_format(c) else 0.0 for c in completions]


def format_strict_nothink_reward(completions: list, answers: list | None = None) -> list[float]:
    """Strict no-think format reward, 0/1 per completion. ``answers`` is only length-checked."""
    _check_lengths(completions, answers)
    return [1.0 if is_strict_nothink_format(c) else 0.0 for c in completions]
