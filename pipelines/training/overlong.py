"""DAPO's handling of completions that run into ``rollout.max_new_tokens``.

A truncated completion (vLLM's finish_reason "length") never wrote its answer, so its
reward says "wrong format", not "wrong reasoning"; DAPO offers two remedies, each a
config choice here (both off by default, as in the paper):

- filter (``grpo.overlong_filter``): truncated completions are left out of the loss. Their
  rewards still count in their group's mean and std, so the other completions' advantages
  are what they would be without the filter.
- soft penalty (``grpo.overlong_buffer`` L_b > 0): a length penalty added to the reward,
  0 up to L_max - L_b tokens, then falling linearly to ``-grpo.overlong_penalty`` at L_max.
  It is kept as the reward component ``overlong_penalty`` (already weighted), so traces
  and metrics show it apart from format and accuracy.
"""
from __future__ import annotations

TRUNCATED = "length"  # vLLM's finish_reason for a completion cut at max_tokens


def overlong_penalty(length: int, max_tokens: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment for a completion of ``length`` tokens (0 when ``buffer`` is 0)."""
    if buffer <= 0:
        return 0.0
    start = max_tokens - buffer
    if length <= start:
        return 0.0
    return -factor * min(length - start, buffer) / buffer


def is_truncated(completion: dict) -> bool:
    return completion.get("finish_reason") == TRUNCATED


def add_overlong_penalty(scores: list[dict], completions: list[dict], *, max_tokens: int, buffer: int,
                         factor: float) -> None:
    """Add each completion's penalty to its score's total and record it as a component (in place)."""
    if len(scores) != len(completions):
        raise ValueError(f"{len(scores)} scores for {len(completions)} completions")
    if buffer <= 0:
        return
    for s, comp in zip(scores, completions):
        p = overlong_penalty(len(comp["token_ids"]), max_tokens, buffer, factor)
        s["total"] = float(s["total"]) + p
        s["components"]["overlong_penalty"] = p
