"""Reward functions for Med-R1-style GRPO (stdlib only: no torch, no numpy).

    from rewards import get_reward, register_reward, available_rewards, combined_scores
    get_reward("format")(completions, answers) -> list[float]

Built-in names: format, format_nothink, format_think_after, format_strict, format_strict_nothink,
accuracy, accuracy_strict.
"""

from rewards.accuracy import (
    accuracy_reward,
    accuracy_strict_reward,
    extract_answer_strict,
    normalize_ground_truth,
    parse_choice_letter,
)
from rewards.combine import RewardScore, combined_scores
from rewards.format import is_nothink_format, is_think_after_format, is_think_format
from rewards.format_strict import is_strict_nothink_format, is_strict_think_format
from rewards.parse import extract_eval_answer, is_correct_eval
from rewards.registry import UnknownRewardError, available_rewards, get_reward, register_reward

__all__ = [
    "RewardScore",
    "UnknownRewardError",
    "accuracy_reward",
    "accuracy_strict_reward",
    "available_rewards",
    "combined_scores",
    "extract_answer_strict",
    "extract_eval_answer",
    "get_reward",
    "is_correct_eval",
    "is_nothink_format",
    "is_strict_nothink_format",
    "is_strict_think_format",
    "is_think_after_format",
    "is_think_format",
    "normalize_ground_truth",
    "parse_choice_letter",
    "register_reward",
]
