"""Held-out evaluation the way the paper scores it, sharded over the rollout actors.

Greedy decoding (temperature 0, one completion), at most ``max_new_tokens`` new
tokens, the answer is the first match of ``<answer>\\s*(\\w+)\\s*</answer>``
(``rewards.parse``) compared with the ground-truth letter; no match is wrong.

Used by ``medr1 evaluate``, by the GRPO trainer (before/after held-out eval) and by
the generalization protocol. The pure helpers (``wilson_interval``,
``accuracy_table``, ``summarize``) need no Ray and work equally on the rows this
module builds and on rows read back from the Parquet trace store.

Skipped prompts: a record whose image is missing or cannot be decoded (or whose
generation failed inside vLLM) is *not* scored. It is excluded from ``n`` and every
accuracy, listed with its reason under ``metrics["skipped"]``, and gets no trace
row (traces hold completions; a skipped prompt has none). Count it as wrong
yourself if you need the pessimistic number: ``correct / (n + skipped.count)``.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional

from pipelines.prompts import build_messages, format_question
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


def contiguous_shards(n_items: int, n_shards: int) -> list[tuple[int, int]]:
    """[start, stop) ranges: contiguous, nearly equal, empty ones dropped."""
    size, extra = divmod(n_items, max(1, n_shards))
    out, start = [], 0
    for i in range(max(1, n_shards)):
        stop = start + size + (1 if i < extra else 0)
        if stop > start:
            out.append((start, stop))
        start = stop
    return out


# --------------------------------------------------------------------------- payloads
def _image_bytes(record) -> bytes:
    img = record.image
    if isinstance(img, (bytes, bytearray)):
        if not img:
            raise ValueError("image missing (empty)")
        return bytes(img)
    if isinstance(img, str) and img:
        p = Path(img)
        if not p.is_file():
            raise ValueError(f"image file not found: {img}")
        return p.read_bytes()
    raise ValueError("image missing")


def build_payloads(records: list, tokenizer, prompt_style: str = "think"):
    """(payloads, skipped): a vLLM request per usable record, a reason per unusable one.

    Each payload: {"id", "prompt" (chat template applied), "image" (bytes), "_index", "_sha256"}."""
    payloads, skipped = [], []
    for i, rec in enumerate(records):
        try:
            image = _image_bytes(rec)
        except (ValueError, OSError) as e:
            skipped.append({"prompt_id": rec.id, "image_path": rec.image_path or "", "reason": str(e)})
            continue
        text = tokenizer.apply_chat_template(build_messages(rec, prompt_style), tokenize=False,
                                             add_generation_prompt=True)
        payloads.append({"id": rec.id, "prompt": text, "image": image, "_index": i,
                         "_sha256": hashlib.sha256(image).hexdigest()})
    return payloads, skipped


# --------------------------------------------------------------------------- generation
def generate_eval_rows(workers: list, records: list, *, tokenizer, max_new_tokens: int = 256,
                       prompt_style: str = "think", weight_version: int = 0, step: int = -1, model: str = "",
                       run: str = "", progress: bool = True, chunk_size: int = 512):
    """Greedy-generate every record on the rollout actors; returns (rows, skipped, seconds).

    Records are split into R contiguous shards (one per actor); a shard larger than
    ``chunk_size`` goes as several consecutive calls to the same actor so the progress
    bar moves. Every call is in flight at once; an actor runs its calls in order.
    Rows are in record order and use the trace-store column names."""
    import ray
    from tqdm import tqdm

    if not workers:
        raise ValueError("evaluation needs at least one rollout worker")
    t0 = time.perf_counter()
    payloads, skipped = build_payloads(records, tokenizer, prompt_style)
    sampling = {"n": 1, "temperature": 0.0, "max_tokens": int(max_new_tokens), "logprobs": False}
    pending: dict[Any, list[dict]] = {}
    for wi, (start, stop) in enumerate(contiguous_shards(len(payloads), len(workers))):
        for cs in range(start, stop, max(1, chunk_size)):
            chunk = payloads[cs:min(stop, cs + chunk_size)]
            send = [{"id": p["id"], "prompt": p["prompt"], "image": p["image"]} for p in chunk]
            pending[workers[wi].generate.remote(send, sampling)] = chunk
    rows_by_index: dict[int, dict] = {}
    bar = tqdm(total=len(payloads), desc="eval", unit="prompt", disable=not progress, leave=False)
    try:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                out = ray.get(ref)
                chunk = pending[ref]
                for p, res in zip(chunk, out["results"]):
                    rec = records[p["_index"]]
                    comps = res.get("completions") or []
                    if res.get("error") or not comps:
                        skipped.append({"prompt_id": rec.id, "image_path": rec.image_path or "",
                                        "reason": res.get("error") or "no completion returned"})
                        continue
                    c = comps[0]
                    text = c["text"]
                    rows_by_index[p["_index"]] = {
                        "run": run, "kind": "eval", "step": int(step),
                        "weight_version": int(out.get("weight_version", weight_version)),
                        "model": model, "prompt_id": rec.id, "sample_index": 0, "image_sha256": p["_sha256"],
                        "image_path": rec.image_path or (rec.image if isinstance(rec.image, str) else ""),
                        "modality": rec.modality, "question_type": rec.question_type, "source": rec.source,
                        "prompt": format_question(rec), "answer": rec.answer, "completion": text,
                        "completion_tokens": len(c.get("token_ids") or []),
                        "finish_reason": str(c.get("finish_reason", "")),
                        **score_completion(text, rec.answer, prompt_style),
                        "reward": None, "reward_components": None, "advantage": None,
                        "worker": int(out.get("worker", -1)),
                    }
                bar.update(len(chunk))
    finally:
        bar.close()
    rows = [rows_by_index[i] for i in sorted(rows_by_index)]
    return rows, skipped, time.perf_counter() - t0


def evaluate_records(workers: list, records: list, *, tokenizer, max_new_tokens: int = 256,
                     prompt_style: str = "think", weight_version: int = 0, step: int = -1, model: str = "",
                     run: str = "", trace_writer=None, progress: bool = True) -> dict:
    """Evaluate ``records`` greedily on the rollout ``workers``; returns the metrics dict.

    Keys: overall, by_modality, by_question_type, by_source (each cell
    {"accuracy", "n", "correct", "ci95": [lo, hi]} with a Wilson 95% interval),
    format_rate (mean paper format reward for ``prompt_style``), unparsable (rows with
    no ``<answer>\\w+</answer>``), skipped ({"count", "records": [{prompt_id,
    image_path, reason}]}, excluded from n), n, tokens, seconds, prompts_per_s,
    weight_version, step. One trace row per scored record goes to ``trace_writer``
    (flushed before returning)."""
    rows, skipped, seconds = generate_eval_rows(
        workers, records, tokenizer=tokenizer, max_new_tokens=max_new_tokens, prompt_style=prompt_style,
        weight_version=weight_version, step=step, model=model, run=run, progress=progress)
    if trace_writer is not None and rows:
        trace_writer.add(rows)
        trace_writer.flush()
    metrics = summarize(rows, skipped, seconds)
    metrics["weight_version"] = int(weight_version)
    metrics["step"] = int(step)
    return metrics


def worst_examples(rows: list[dict], n: int) -> list[dict]:
    """Up to ``n`` failures to show: wrong-but-parsed answers first, then unparsable ones."""
    wrong = [r for r in rows if not r.get("correct") and r.get("predicted")]
    unparsable = [r for r in rows if not r.get("correct") and not r.get("predicted")]
    return (wrong + unparsable)[: max(0, n)]
