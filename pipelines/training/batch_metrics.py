"""What one sampled batch looks like, as step metrics: rewards, accuracy, format, lengths, throughput.

Kept out of the loop so ``grpo_loop.py`` reads as the step's phases; the loop adds what only it
knows (staleness, queue depth, restarts, advantages).
"""
from __future__ import annotations

from typing import Any

from pipelines.evaluation.accuracy import FORMAT_REWARD
from pipelines.evaluation.examples import sampled_faithfulness
from rewards import get_reward


def mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else 0.0


def batch_metrics(kept, scores, rewards, samples, texts, outcome, prompt_style, vision_ids) -> dict[str, Any]:
    """``kept``: the sampled prompts (``SampledPrompt``) in the batch; ``scores`` one per completion, in order;
    ``rewards`` their totals (a tensor); ``samples`` the ``TrainSample``s that train; ``texts`` the completions."""
    comps = [s["components"] for s in scores]
    return dict(
        reward_mean=float(rewards.mean()),
        reward_std=float(rewards.std()) if len(rewards) > 1 else 0.0,
        accuracy=mean([x.get("accuracy_strict", x.get("accuracy", 0.0)) for x in comps]),
        # the paper's format check for the prompt style in use, whichever rewards are configured
        format_rate=mean(get_reward(FORMAT_REWARD[prompt_style])(texts)) if texts else 0.0,
        completion_length=mean([len(s.completion_ids) for s in samples]) if samples else 0.0,
        rollout_tokens=outcome.tokens,
        # vision special tokens in the completions: 0 while vLLM's ban holds (the learner masks any)
        vision_tokens_sampled=sum(t in vision_ids for sp in kept for comp in sp.result["completions"]
                                  for t in comp["token_ids"]),
        rollout_tokens_per_s=outcome.tokens / max(outcome.seconds, 1e-9),
        rollout_reissued=outcome.reissued,
        **{f"reward_{name}": mean([x[name] for x in comps]) for name in (comps[0] if comps else {})},
        **sampled_faithfulness(kept),  # does the sampled <think> name the option its answer chose
    )
