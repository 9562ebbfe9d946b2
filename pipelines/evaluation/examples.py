"""Reasoning faithfulness of scored rows, and a few held-out completions to show a newcomer.

Works on the rows evaluation builds and on trace rows read back from Parquet (where
``options`` is JSON text).
"""
from __future__ import annotations

import json

from rewards.faithfulness import faithfulness


def _options(row: dict) -> list[str]:
    opts = row.get("options") or []
    return json.loads(opts) if isinstance(opts, str) else list(opts)


def rows_faithfulness(rows: list[dict]) -> dict:
    """``rewards.faithfulness`` over scored rows (completion, options, answer)."""
    return faithfulness([str(r.get("completion") or "") for r in rows], [_options(r) for r in rows],
                        [str(r.get("answer") or "") for r in rows])


def pick_examples(rows: list[dict], n: int = 10) -> list[dict]:
    """``n`` rows spread evenly over ``rows`` (deterministic), as small dicts to print or store."""
    if not rows or n <= 0:
        return []
    step = max(1, len(rows) // n)
    return [{"image": r.get("image_path") or r.get("prompt_id", ""), "prompt_id": r.get("prompt_id", ""),
             "question_type": r.get("question_type", ""), "question": r.get("question", ""),
             "options": _options(r), "reasoning": r.get("reasoning", ""), "predicted": r.get("predicted", ""),
             "answer": r.get("answer", ""), "correct": bool(r.get("correct"))}
            for r in rows[::step][:n]]


def format_examples(examples: list[dict]) -> str:
    """The examples as plain text, one block each."""
    lines = []
    for i, e in enumerate(examples, 1):
        opts = ", ".join(f"{chr(65 + k)}){o}" for k, o in enumerate(e["options"]))
        lines += [f"[{i}] image {e['image']}  ({e['question_type']})",
                  f"    question:  {e['question']} {opts}",
                  f"    reasoning: {e['reasoning'] or '(none)'}",
                  f"    answer:    {e['predicted'] or '(unparsable)'}  (truth {e['answer']}: "
                  f"{'correct' if e['correct'] else 'wrong'})"]
    return "\n".join(lines)


def sampled_faithfulness(groups) -> dict:
    """Faithfulness of a training step's sampled completions (groups: records with their completions)."""
    texts, options, answers = [], [], []
    for g in groups:
        for comp in g.result["completions"]:
            texts.append(comp["text"])
            options.append(list(g.record.options))
            answers.append(g.record.answer)
    f = faithfulness(texts, options, answers)
    return {"faithful_correct": f["faithful_correct"], "other_named_wrong": f["other_named_wrong"]}
