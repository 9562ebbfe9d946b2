"""The paper's held-out evaluation of an HF-format Qwen-VL directory (``medr1 evaluate``)
or of the live policy during training, greedy, sharded over R vLLM rollout actors.

Writes ``OUT/eval.json`` (metrics + model, data, split, weight_version),
``OUT/traces/eval-*.parquet`` (one row per scored prompt; a rerun into the same
OUT replaces them), ``OUT/accuracy_by_modality.png`` and
``OUT/accuracy_by_question_type.png``; prints a table and, with
``--show-errors N``, the N worst examples.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import ray
from rich.console import Console
from rich.markup import escape
from tqdm import tqdm
from transformers import AutoTokenizer

from actors.rollout import wait_restarted
from actors.sharding import contiguous_shards
from cluster.ray_utils import ACTOR_GONE, describe_failure, kill_quietly
from learner.image_codec import read_image_bytes
from learner.weights_digest import safetensors_digest
from pipelines.config import REPO_ROOT, load_config
from pipelines.data.store import load_prepared
from pipelines.errors import UserError
from pipelines.evaluation.accuracy import score_completion, summarize, worst_examples
from pipelines.evaluation.examples import pick_examples
from pipelines.evaluation.report import plot_accuracy_bars, print_eval_table
from pipelines.launch import connect_ray, start_eval_workers
from pipelines.models.checks import refuse_unsafe_model
from pipelines.models.tiny import is_model_dir
from pipelines.prompts import chat_prompt
from pipelines.traces import TraceWriter, reset_store, trace_row
from pipelines.tracing.provenance import config_sha256

log = logging.getLogger(__name__)
MAX_EVAL_REISSUES = 3
_ACTOR_FAILURES = ACTOR_GONE  # the actor died (not an error in a prompt)


# --------------------------------------------------------------------------- pieces
def check_model_dir(model: str | os.PathLike, trust_remote_code: bool = False) -> str:
    p = Path(model)
    if not p.exists():
        raise UserError(f"model directory not found: {p}")
    refuse_unsafe_model(p, trust_remote_code)
    if not is_model_dir(p):
        raise UserError(f"{p} is not an HF model directory (needs config.json and *.safetensors); "
                        f"for a training run, point at <run>/checkpoints/final/hf")
    return str(p)


def select_records(records: list, max_samples: Optional[int] = None, modalities: Optional[list[str]] = None,
                   question_types: Optional[list[str]] = None) -> list:
    """Filter by domain, then take ``max_samples`` records spread over modality x question-type
    cells (deterministic): each round takes one record per modality, from a question type that
    rotates with the modality and the round, so even a few samples cover both axes."""
    if modalities:
        records = [r for r in records if r.modality in modalities]
    if question_types:
        records = [r for r in records if r.question_type in question_types]
    if not max_samples or not 0 < max_samples < len(records):
        return records
    cells: dict[str, dict[str, list[int]]] = {}
    for i, r in enumerate(records):
        cells.setdefault(r.modality, {}).setdefault(r.question_type, []).append(i)
    picked: list[int] = []
    rnd = 0
    while len(picked) < max_samples:
        for mi, by_q in enumerate(cells.values()):
            qts = [q for q in by_q if by_q[q]]
            if qts and len(picked) < max_samples:
                picked.append(by_q[qts[(mi + rnd) % len(qts)]].pop(0))
        rnd += 1
    return [records[i] for i in sorted(picked)]


def write_outputs(out: Path, metrics: dict, rows: list[dict], info: dict[str, Any]) -> dict:
    """eval.json + traces + bar charts; returns the eval.json content."""
    out.mkdir(parents=True, exist_ok=True)
    tdir = out / "traces"
    if tdir.is_dir():
        reset_store(tdir)  # eval.json is replaced, so are the rows behind it (a new chain)
    tw = TraceWriter(tdir, kind="eval", provenance={"dataset": f"{info['data']}:{info['split']}",
                                                    "config_sha256": info.get("config_sha256", "")},
                     images_max_mb=info.get("images_max_mb", 1024.0), signing_key=info.get("signing_key") or None)
    tw.add(rows)
    tw.close()
    heads = tw.heads()
    info = {k: v for k, v in info.items() if k not in ("images_max_mb", "signing_key")}
    doc = {**info, **metrics, "trace_head": heads.get("eval", "")}
    (out / "eval.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    plot_accuracy_bars(metrics["by_modality"], out / "accuracy_by_modality.png", "accuracy by modality",
                       metrics["overall"])
    plot_accuracy_bars(metrics["by_question_type"], out / "accuracy_by_question_type.png",
                       "accuracy by question type", metrics["overall"])
    return doc


def print_errors(rows: list[dict], n: int, console=None) -> None:
    console = console or Console()
    worst = worst_examples(rows, n)
    if not worst:
        console.print("no errors to show")
        return
    console.rule(f"{len(worst)} worst examples")
    for r in worst:
        kind = "WRONG" if r.get("predicted") else "UNPARSABLE"
        console.print(f"[bold]{kind}[/bold] {escape(r['prompt_id'])}  ({escape(r['modality'])} / "
                      f"{escape(r['question_type'])} / {escape(r['source'])})")
        console.print(f"  image:     {escape(r.get('image_path') or '(embedded)')}  sha256 {r['image_sha256'][:12]}")
        console.print(f"  question:  {escape(r['prompt'])}")
        console.print(f"  reasoning: {escape(r['completion'])!s}")
        console.print(f"  answer:    predicted {escape(r.get('predicted') or '(none)')}, truth {escape(r['answer'])}")


def evaluate_model(model: str, data: str, *, split: str = "test", out: Optional[str | Path] = None, cfg=None,
                   workers: Optional[list] = None, num_workers: Optional[int] = None,
                   max_new_tokens: Optional[int] = None, max_samples: Optional[int] = None,
                   prompt_style: Optional[str] = None, modalities: Optional[list[str]] = None,
                   question_types: Optional[list[str]] = None, show_errors: int = 0, progress: bool = True,
                   print_table: bool = True, run_name: str = "", weight_version: int = 0) -> dict:
    """Evaluate ``model`` on ``data``/``split``; write outputs under ``out``; return eval.json's content.

    ``workers``: existing rollout actors already serving ``model`` (then none are started
    or stopped here); otherwise R actors are started on the current Ray (started locally,
    or joined at ``cluster.address``, if needed) and killed at the end."""
    cfg = cfg if cfg is not None else load_config(None)
    model = check_model_dir(model, cfg.model.trust_remote_code)
    records = load_prepared(data, split)
    records = select_records(records, max_samples if max_samples is not None else cfg.eval.max_samples,
                             modalities, question_types)
    max_new_tokens = int(max_new_tokens or cfg.eval.max_new_tokens)
    style = prompt_style or cfg.eval.prompt_style
    out = Path(out) if out else REPO_ROOT / "outputs" / "eval" / f"{Path(model).name}-{split}"
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=cfg.model.trust_remote_code)

    started_ray = started_workers = False
    try:
        if workers is None:
            R = int(num_workers or cfg.rollout.num_workers)
            if not ray.is_initialized():
                connect_ray(cfg, wanted_cpus=R * cfg.rollout.resources_per_worker.num_cpus)
                started_ray = True
            workers = start_eval_workers(cfg, model, R, max_new_tokens)
            started_workers = True
        weights = safetensors_digest(model)  # the weights evaluated, as training rows cite theirs
        rows, skipped, seconds = generate_eval_rows(
            workers, records, tokenizer=tokenizer, max_new_tokens=max_new_tokens, prompt_style=style,
            weight_version=weight_version, step=-1, model=model, run=run_name or out.name, progress=progress,
            weights_sha256=weights)
    finally:
        if started_workers:
            kill_quietly(workers or [])
        if started_ray:
            ray.shutdown()
    metrics = summarize(rows, skipped, seconds)
    info = {"model": model, "data": str(data), "split": split, "weight_version": int(weight_version),
            "prompt_style": style, "max_new_tokens": max_new_tokens, "workers": len(workers or []),
            "records": len(records), "weights_sha256": weights, "config_sha256": config_sha256(cfg),
            "images_max_mb": cfg.logging.trace_images_max_mb, "signing_key": cfg.logging.trace_signing_key}
    doc = write_outputs(out, metrics, rows, info)
    if print_table:
        print_eval_table(metrics, title=f"{Path(model).name} on {Path(data).name}/{split}")
        if show_errors:
            print_errors(rows, show_errors)
        print(f"outputs in {out}: eval.json, traces/, accuracy_by_modality.png, accuracy_by_question_type.png")
        print(f"trace head: eval:{doc['trace_head']}  (check later: medr1 trace verify {out} --head "
              f"eval:{doc['trace_head']})")
    return doc


# --------------------------------------------------------------------------- payloads
def build_payloads(records: list, tokenizer, prompt_style: str = "think"):
    """(payloads, skipped): a vLLM request per usable record, a reason per unusable one.

    Each payload: {"id", "prompt" (chat template applied), "image" (bytes), "_index", "_sha256"}."""
    payloads, skipped = [], []
    for i, rec in enumerate(records):
        try:
            if isinstance(rec.image, (bytes, bytearray)) and not rec.image:
                raise ValueError("image missing (empty)")
            image = read_image_bytes(rec.image)
        except (ValueError, OSError) as e:
            skipped.append({"prompt_id": rec.id, "image_path": rec.image_path or "", "reason": str(e)})
            continue
        text = chat_prompt(tokenizer, rec, prompt_style)
        payloads.append({"id": rec.id, "prompt": text, "image": image, "_index": i,
                         "_sha256": hashlib.sha256(image).hexdigest()})
    return payloads, skipped


# --------------------------------------------------------------------------- generation
def generate_eval_rows(workers: list, records: list, *, tokenizer, max_new_tokens: int = 256,
                       prompt_style: str = "think", weight_version: int = 0, step: int = -1, model: str = "",
                       run: str = "", progress: bool = True, chunk_size: int = 512, weights_sha256: str = "",
                       pool=None, stats: Optional[dict] = None):
    """Greedy-generate every record on the rollout actors; returns (rows, skipped, seconds).

    Records are split into R contiguous shards (one per actor); a shard larger than
    ``chunk_size`` goes as several consecutive calls to the same actor so the progress
    bar moves. Every call is in flight at once; an actor runs its calls in order.
    Rows are in record order and use the trace-store column names.

    A call whose actor dies is re-issued (up to MAX_EVAL_REISSUES times): on the next actor, or,
    with one actor, on the same one once Ray has restarted it. Within a training run ``pool``
    (the RolloutPool) brings a restarted actor to the current weights first.
    ``stats["eval_reissued"]`` counts the prompts re-issued."""
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
            pending[workers[wi].generate.remote(send, sampling)] = (wi, chunk, 0)
    rows_by_index: dict[int, dict] = {}
    down: set[int] = set()  # actors that failed a call in this evaluation
    bar = tqdm(total=len(payloads), desc="eval", unit="prompt", disable=not progress, leave=False)
    try:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                wi, chunk, attempt = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except _ACTOR_FAILURES as e:
                    if attempt >= MAX_EVAL_REISSUES:
                        raise RuntimeError(f"evaluation prompts {chunk[0]['id']}.. failed {attempt + 1} times; "
                                           f"last: {describe_failure(e)}") from e
                    target = _reissue_target(workers, wi, pool, down)
                    log.warning("eval-rollout-%d died (%s); re-issuing %d prompts to rollout-%d", wi,
                                type(e).__name__, len(chunk), target)
                    new = workers[target].generate.remote(
                        [{"id": p["id"], "prompt": p["prompt"], "image": p["image"]} for p in chunk], sampling)
                    pending[new] = (target, chunk, attempt + 1)
                    waiting.append(new)
                    if stats is not None:
                        stats["eval_reissued"] = stats.get("eval_reissued", 0) + len(chunk)
                    continue
                for p, res in zip(chunk, out["results"]):
                    rec = records[p["_index"]]
                    comps = res.get("completions") or []
                    if res.get("error") or not comps:
                        skipped.append({"prompt_id": rec.id, "image_path": rec.image_path or "",
                                        "reason": res.get("error") or "no completion returned"})
                        continue
                    c = comps[0]
                    scored = score_completion(c["text"], rec.answer, prompt_style)
                    rows_by_index[p["_index"]] = trace_row(
                        rec, c, kind="eval", run=run, model=model, step=step,
                        weight_version=out.get("weight_version", weight_version), worker=out.get("worker", -1),
                        image_sha256=p["_sha256"], correct=scored["correct"], format_ok=scored["format_ok"],
                        weights_sha256=weights_sha256, sampling=sampling, image_png=p["image"])
                bar.update(len(chunk))
    finally:
        bar.close()
    rows = [rows_by_index[i] for i in sorted(rows_by_index)]
    return rows, skipped, time.perf_counter() - t0


def _reissue_target(workers: list, dead: int, pool, down: set[int]) -> int:
    """Where a dead actor's evaluation prompts go: an actor that has not failed in this evaluation (it
    holds the same weights), else, once Ray has restarted it, the next one (in training the pool also
    brings it to the current weights). Sending to an actor that is still restarting fails at once, so
    two deaths in one evaluation used to spend every re-issue in a second."""
    down.add(dead)
    if pool is not None:
        target = pool.recover(dead)  # a live actor, else the dead one healed (restarted, current weights)
        down.discard(target)
        return target
    live = [i for i in range(len(workers)) if i not in down]
    if live:
        return live[(bisect.bisect(live, dead)) % len(live)]
    target = (dead + 1) % len(workers)
    wait_restarted(workers[target], f"rollout-{target}")
    down.discard(target)
    return target


def evaluate_records(workers: list, records: list, *, tokenizer, max_new_tokens: int = 256,
                     prompt_style: str = "think", weight_version: int = 0, step: int = -1, model: str = "",
                     run: str = "", trace_writer=None, progress: bool = True, weights_sha256: str = "",
                     pool=None) -> dict:
    """Evaluate ``records`` greedily on the rollout ``workers``; returns the metrics dict.

    Keys: overall, by_modality, by_question_type, by_source (each cell
    {"accuracy", "n", "correct", "ci95": [lo, hi]} with a Wilson 95% interval),
    format_rate (mean paper format reward for ``prompt_style``), unparsable (rows with
    no ``<answer>\\w+</answer>``), skipped ({"count", "records": [{prompt_id,
    image_path, reason}]}, excluded from n), n, tokens, seconds, prompts_per_s,
    weight_version, step. One trace row per scored record goes to ``trace_writer``
    (flushed before returning)."""
    stats: dict = {}
    rows, skipped, seconds = generate_eval_rows(
        workers, records, tokenizer=tokenizer, max_new_tokens=max_new_tokens, prompt_style=prompt_style,
        weight_version=weight_version, step=step, model=model, run=run, progress=progress,
        weights_sha256=weights_sha256, pool=pool, stats=stats)
    if trace_writer is not None and rows:
        trace_writer.add(rows)
        trace_writer.flush()
    metrics = summarize(rows, skipped, seconds)
    metrics["weight_version"] = int(weight_version)
    metrics["step"] = int(step)
    metrics["reissued"] = int(stats.get("eval_reissued", 0))
    metrics["examples"] = pick_examples(rows, 10)
    return metrics
