"""Format rewards: does the whole completion have the expected tag layout?

The paper checks the layout with ``re.fullmatch`` on a DOTALL pattern such as
``<think>.*?</think>\\s*<answer>.*?</answer>``.  That is correct but not safe:
for every ``</think>\\s*<answer>`` candidate the engine scans the rest of the
string looking for a final ``</answer>``, so a completion with thousands of
unclosed tags costs O(candidates * length) -- quadratic.  We implement the same
language with ``str.find`` scanning instead, which is linear, and keep the
regexes here as the reference the tests compare against.

Equivalence argument for ``<O1>.*?<C1>\\s*<O2>.*?<C2>`` under fullmatch+DOTALL:
the string must start with O1 and end with C2, and there must be some
occurrence of C1 (after the O1 prefix) followed by a run of whitespace and then
O2, with O2 ending no later than where the final C2 starts.  Laziness does not
matter for fullmatch (only existence of a split does).  Python's ``\\s`` on str
patterns is exactly ``str.isspace`` (checked over all code points).

Non-str completions (e.g. None from a failed generation) score 0.0 instead of
raising: one bad sample must not kill a whole reward batch.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# Reference patterns, verbatim from the paper (used by tests and the bench only).
THINK_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
NOTHINK_PATTERN = re.compile(r"\s*<answer>.*?</answer>", re.DOTALL)
THINK_AFTER_PATTERN = re.compile(r"<answer>.*?</answer>\s*<think>.*?</think>", re.DOTALL)


_NON_SPACE = re.compile(r"\S")  # single-character search: linear, runs in C


def _skip_space(s: str, i: int) -> int:
    """Index of the first non-whitespace character at or after i (len(s) if none)."""
    m = _NON_SPACE.search(s, i)
    return len(s) if m is None else m.start()


def _two_blocks(s: str, open1: str, close1: str, open2: str, close2: str) -> bool:
    """Linear-time equivalent of fullmatch(open1 .*? close1 \\s* open2 .*? close2, DOTALL)."""
    if not s.startswith(open1) or not s.endswith(close2):
        return False
    last = len(s) - len(close2)  # where the final close2 starts
    # open2 must end at or before `last`, so close1 must end before that too.
    i = s.find(close1, len(open1))
    while i != -1:
        j = i + len(close1)
        if j < len(s) and s[j].isspace():  # only pay for the regex scan when there is a gap
            j = _skip_space(s, j)
        # The bound check is implied (open2 cannot overlap the final close2 for
        # these tags); it is kept as a guard should the tags ever change.
        if s.startswith(open2, j) and j + len(open2) <= last:
            return True
        # Whitespace runs after different close1 hits are disjoint (close1 has no
        # whitespace), so the total work over the loop stays linear.
        i = s.find(close1, i + 1)
        if i != -1 and i + len(close1) > last:
            return False
    return False


def is_think_format(text: object) -> bool:
    """``<think>...</think>`` then optional whitespace then ``<answer>...</answer>``, nothing else."""
    if not isinstance(text, str):
        return False
    return _two_blocks(text, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def is_nothink_format(text: object) -> bool:
    """Optional leading whitespace, then ``<answer>...</answer>``, nothing else."""
    if not isinstance(text, str):
        return False
    j = _skip_space(text, 0)
    return (
        text.startswith(ANSWER_OPEN, j)
        and text.endswith(ANSWER_CLOSE)
        and j + len(ANSWER_OPEN) <= len(text) - len(ANSWER_CLOSE)
    )


def is_think_after_format(text: object) -> bool:
    """``<answer>...</answer>`` then optional whitespace then ``<think>...</think>`` (answer first)."""
    if not isinstance(text, str):
        return False
    return _two_blocks(text, ANSWER_OPEN, ANSWER_CLOSE, THINK_OPEN, THINK_CLOSE)


def _check_lengths(completions: list, answers: list | None) -> None:
    if answers is not None and len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")


def format_reward(completions: list, answers: list | None = None) -> list[float]:
    """Paper's think format reward, 0/1 per completion. ``answers`` is only length-checked."""
    _check_lengths(completions, answers)
    return [1.0 if is_think_format(c) else 0.0 for c in completions]


def format_nothink_reward(completions: list, answers: list | None = None) -> list[float]:
    """Paper's no-think format reward, 0/1 per completion. ``answers`` is only length-checked."""
    _check_lengths(completions, answers)
    return [1.0 if is_nothink_format(c) else 0.0 for c in completions]


def format_think_after_reward(completions: list, answers: list | None = None) -> list[float]:
    """Answer-then-justification format reward, 0/1 per completion. ``answers`` is only length-checked."""
    _check_lengths(completions, answers)
    return [1.0 if is_think_after_format(c) else 0.0 for c in completions]
