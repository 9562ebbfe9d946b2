"""Scoring held-out answers the way the paper does, and the accuracy tables built from them.

Greedy decoding (temperature 0, one completion), at most ``max_new_tokens`` new
tokens, the answer is the first match of ``<answer>\\s*(\\w+)\\s*</answer>``
(``rewards.parse``) compared with the ground-truth letter; no match is wrong.

Pure helpers (no Ray): they work equally on the rows ``evaluation.evaluate``
builds and on rows read back from the Parquet trace store.

Skipped prompts: a record whose image is missing or cannot be decoded (or whose
generation failed inside vLLM) is *not* scored. It is excluded from ``n`` and every
accuracy, listed with its reason under ``metrics["skipped"]``, and gets no trace
row (traces hold completions; a skipped prompt has none). Count it as wrong
yourself if you need the pessimistic number: ``correct / (n + skipped.count)``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Optional

from pipelines.evaluation.examples import rows_faithfulness
from rewards import extract_eval_answer, get_reward

GROUP_KEYS = {"by_modality": "modality", "by_question_type": "question_type", "by_source": "source"}
FORMAT_REWARD = {"think": "format", "nothink": "format_nothink", "think_after": "format_think_after"}
Z95 = 1.959963984540054


# --------------------------------------------------------------------------- pure helpers
def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default); (0, 1) when n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the edges (no 0.9999999)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def accuracy_cell(correct: int, n: int) -> dict:
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": (correct / n) if n else 0.0, "n": int(n), "correct": int(correct), "ci95": [lo, hi]}


def group_accuracy(rows: Iterable[dict], key: str) -> dict[str, dict]:
    """{value of ``key``: accuracy cell}, sorted by value."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        c = counts[str(r.get(key) or "")]
        c[0] += bool(r.get("correct"))
        c[1] += 1
    return {name: accuracy_cell(k, n) for name, (k, n) in sorted(counts.items())}


def accuracy_table(rows: Iterable[dict]) -> dict:
    """``overall``, ``by_modality``, ``by_question_type``, ``by_source`` from scored rows.

    A row is any mapping with ``correct`` and the group keys (an eval row, a trace row
    read back with ``read_traces(...).to_pylist()``)."""
    rows = list(rows)
    out = {"overall": accuracy_cell(sum(bool(r.get("correct")) for r in rows), len(rows))}
    for name, key in GROUP_KEYS.items():
        out[name] = group_accuracy(rows, key)
    return out


def summarize(rows: list[dict], skipped: Optional[list[dict]] = None, seconds: float = 0.0) -> dict:
    """The metrics dict from scored rows (+ skipped prompts, wall time)."""
    skipped = list(skipped or [])
    n = len(rows)
    out = accuracy_table(rows)
    out["format_rate"] = (sum(bool(r.get("format_ok")) for r in rows) / n) if n else 0.0
    out["unparsable"] = sum(1 for r in rows if not r.get("predicted"))
    out["skipped"] = {"count": len(skipped), "records": skipped}
    out["n"] = n
    out["faithfulness"] = rows_faithfulness(rows)
    out["tokens"] = int(sum(max(0, int(r.get("completion_tokens") or 0)) for r in rows))
    out["seconds"] = float(seconds)
    out["prompts_per_s"] = (n / seconds) if seconds > 0 else 0.0
    return out


def score_completion(text: str, answer: str, prompt_style: str = "think") -> dict:
    """predicted / correct / format_ok of one completion, paper semantics."""
    pred = extract_eval_answer(text)
    fmt = get_reward(FORMAT_REWARD.get(prompt_style, "format"))([text])[0]
    return {"predicted": pred or "", "correct": pred is not None and pred == str(answer).strip(),
            "format_ok": bool(fmt)}


def worst_examples(rows: list[dict], n: int) -> list[dict]:
    """Up to ``n`` failures to show: wrong-but-parsed answers first, then unparsable ones."""
    wrong = [r for r in rows if not r.get("correct") and r.get("predicted")]
    unparsable = [r for r in rows if not r.get("correct") and not r.get("predicted")]
    return (wrong + unparsable)[: max(0, n)]
