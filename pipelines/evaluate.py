"""`medr1 evaluate --model DIR --data PREPARED`: the paper's held-out evaluation of
any HF-format Qwen2-VL directory on a prepared dataset, on R vLLM rollout actors.

Writes ``OUT/eval.json`` (metrics + model, data, split, weight_version),
``OUT/traces/eval-*.parquet`` (one row per scored prompt; a rerun into the same
OUT replaces them), ``OUT/accuracy_by_modality.png`` and
``OUT/accuracy_by_question_type.png``; prints a table and, with
``--show-errors N``, the N worst examples.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="greedy held-out evaluation (paper scoring) of a Qwen2-VL model on R "
                                        "vLLM actors")
    p.add_argument("--model", required=True, help="HF-format Qwen2-VL directory")
    p.add_argument("--data", required=True, help="prepared dataset directory (medr1 prepare-data)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="output directory (default: outputs/eval/<model dir name>-<split>)")
    p.add_argument("--workers", type=int, default=None, help="rollout actors R (default: rollout.num_workers)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: eval.max_new_tokens (256)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="evaluate N records spread over modality x question-type cells "
                        "(default: eval.max_samples, or all)")
    p.add_argument("--prompt-style", default=None, help="think (paper), nothink or think_after")
    p.add_argument("--show-errors", type=int, default=0, metavar="N",
                   help="print the N worst examples (wrong answers first, then unparsable)")
    p.add_argument("--modalities", default=None, help="comma-separated subset of modalities to evaluate")
    p.add_argument("--question-types", default=None, help="comma-separated subset of question types")
    p.add_argument("--config", default=None, help="YAML config for engine/cluster settings")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. rollout.kv_cache_memory_bytes=...)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- pieces
def check_model_dir(model: str | os.PathLike) -> str:
    from pipelines.errors import UserError
    from pipelines.tiny_model import is_model_dir

    p = Path(model)
    if not p.exists():
        raise UserError(f"model directory not found: {p}")
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


def start_eval_workers(cfg, model_path: str, num_workers: int, max_new_tokens: int) -> list:
    """R rollout actors on ``model_path`` (CPU cores split between them when on the CPU)."""
    from actors.rollout_group import create_rollout_workers, wait_ready
    from pipelines.config import REPO_ROOT
    from pipelines.run_setup import engine_kwargs, rollout_env

    cfg.rollout.num_workers = num_workers  # rollout_env splits cores by it
    kwargs = engine_kwargs(cfg, model_path)
    kwargs["max_model_len"] = int(cfg.data.max_prompt_length + max_new_tokens)
    ro = cfg.rollout.resources_per_worker
    envs = []
    for i in range(num_workers):
        env = rollout_env(cfg, i)
        env.setdefault("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
        envs.append(env)
    workers = create_rollout_workers(num_workers, kwargs, num_cpus=ro.num_cpus, num_gpus=ro.num_gpus,
                                     custom_resources=dict(ro.custom), env_vars=envs, name_prefix="eval-rollout")
    wait_ready(workers)
    return workers


def write_outputs(out: Path, metrics: dict, rows: list[dict], info: dict[str, Any]) -> dict:
    """eval.json + traces + bar charts; returns the eval.json content."""
    from pipelines.report import plot_accuracy_bars
    from pipelines.traces import TraceWriter

    out.mkdir(parents=True, exist_ok=True)
    tdir = out / "traces"
    if tdir.is_dir():
        for old in tdir.glob("eval-*.parquet"):  # eval.json is replaced, so are the rows behind it
            old.unlink()
    tw = TraceWriter(tdir, kind="eval")
    tw.add(rows)
    tw.close()
    doc = {**info, **metrics}
    (out / "eval.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    plot_accuracy_bars(metrics["by_modality"], out / "accuracy_by_modality.png", "accuracy by modality",
                       metrics["overall"])
    plot_accuracy_bars(metrics["by_question_type"], out / "accuracy_by_question_type.png",
                       "accuracy by question type", metrics["overall"])
    return doc


def print_errors(rows: list[dict], n: int, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape

    from pipelines.evaluation import worst_examples

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
    import ray
    from transformers import AutoTokenizer

    from pipelines.config import REPO_ROOT, load_config
    from pipelines.data.store import load_prepared
    from pipelines.evaluation import generate_eval_rows, summarize

    cfg = cfg if cfg is not None else load_config(None)
    model = check_model_dir(model)
    records = load_prepared(data, split)
    records = select_records(records, max_samples if max_samples is not None else cfg.eval.max_samples,
                             modalities, question_types)
    max_new_tokens = int(max_new_tokens or cfg.eval.max_new_tokens)
    style = prompt_style or cfg.eval.prompt_style.value
    out = Path(out) if out else REPO_ROOT / "outputs" / "eval" / f"{Path(model).name}-{split}"
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=cfg.model.trust_remote_code)

    started_ray = started_workers = False
    try:
        if workers is None:
            from cluster.connect import connect

            R = int(num_workers or cfg.rollout.num_workers)
            if not ray.is_initialized():
                local = cfg.cluster.address is None and not os.environ.get("RAY_ADDRESS")
                ncpu = cfg.cluster.num_cpus or (max(os.cpu_count() or 1, R) if local else None)
                connect(cfg.cluster.address, num_cpus=ncpu, dashboard_host=cfg.cluster.dashboard_host,
                        env_vars=dict(cfg.cluster.runtime_env_vars), working_dir_on_path=str(REPO_ROOT))
                started_ray = True
            workers = start_eval_workers(cfg, model, R, max_new_tokens)
            started_workers = True
        rows, skipped, seconds = generate_eval_rows(
            workers, records, tokenizer=tokenizer, max_new_tokens=max_new_tokens, prompt_style=style,
            weight_version=weight_version, step=-1, model=model, run=run_name or out.name, progress=progress)
    finally:
        if started_workers:
            for w in workers or []:
                try:
                    ray.kill(w)
                except Exception:
                    pass
        if started_ray:
            ray.shutdown()
    metrics = summarize(rows, skipped, seconds)
    info = {"model": model, "data": str(data), "split": split, "weight_version": int(weight_version),
            "prompt_style": style, "max_new_tokens": max_new_tokens, "workers": len(workers or []),
            "records": len(records)}
    doc = write_outputs(out, metrics, rows, info)
    if print_table:
        from pipelines.report import print_eval_table

        print_eval_table(metrics, title=f"{Path(model).name} on {Path(data).name}/{split}")
        if show_errors:
            print_errors(rows, show_errors)
        print(f"outputs in {out}: eval.json, traces/, accuracy_by_modality.png, accuracy_by_question_type.png")
    return doc


def _csv(s: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def run(args: argparse.Namespace, workers: Optional[list] = None) -> int:
    from pipelines.config import load_config
    from pipelines.errors import UserError

    cfg = load_config(args.config, args.overrides)
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be >= 1")
    check_model_dir(args.model)
    if not Path(args.data).is_dir():
        raise UserError(f"prepared dataset directory not found: {args.data}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    evaluate_model(args.model, args.data, split=args.split, out=args.out, cfg=cfg, workers=workers,
                   num_workers=args.workers, max_new_tokens=args.max_new_tokens, max_samples=args.max_samples,
                   prompt_style=args.prompt_style, modalities=_csv(args.modalities),
                   question_types=_csv(args.question_types), show_errors=args.show_errors,
                   progress=not args.no_progress)
    return 0
