"""The paper's generalization experiment (``medr1 protocol cross-modality|cross-task``).

For each training domain (the 8 modalities or the 5 question types, or a
``--domains`` subset) one GRPO run on that domain's train split, then the final
model is evaluated on the whole test split and sliced by domain: one row of the
cross-domain matrix. The base model (and an SFT model with ``--sft-model``) are
baseline rows.

Layout under the protocol directory::

    protocol.json                 what was asked (kind, dimension, rows, columns, config)
    runs/<row>/                   one training run (trainer.output_dir) per training domain
    runs/<row>/eval/              eval.json + traces/eval-*.parquet of the cross-domain eval
    runs/<row>/cell.json          the finished row; present = not recomputed on rerun
    matrix.json, matrix.csv       accuracy (rows = train domain incl. base, cols = test domain)
    report.md                     accuracy and improvement-over-base tables, with n
    heatmap_accuracy.png, heatmap_improvement.png, bars_by_domain.png

Every training run is an independent Ray task (num_cpus=0: its actors reserve
the real resources), so a cluster runs several at once (``--max-parallel``);
``--sequential`` runs them in the driver process one after another.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import ray

from cluster.connect import is_local
from cluster.ray_utils import describe_failure
from pipelines.config import from_dict, to_dict
from pipelines.data.schema import try_normalize_modality, try_normalize_question_type
from pipelines.data.store import load_prepared
from pipelines.errors import UserError
from pipelines.evaluation.evaluate import evaluate_model
from pipelines.launch import connect_ray, resource_plan
from pipelines.protocol import BASE, KINDS, SFT
from pipelines.protocol.matrix import (
    _write_json,
    all_domains,
    cell_path,
    is_finished,
    matrix_from_cells,
    slug,
    write_outputs,
)
from pipelines.training.grpo_loop import run_training
from pipelines.training.run_setup import ensure_data, ensure_model

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------- helpers


def parse_domains(kind: str, spec: Optional[str]) -> list[str]:
    """Canonical domain names from a comma-separated list (aliases accepted: 'xray', 'mr', ...)."""
    known = all_domains(kind)
    if not spec:
        return known
    norm = try_normalize_modality if KINDS[kind] == "modality" else try_normalize_question_type
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        d = norm(item)
        if d is None:
            raise UserError(f"--domains: unknown {KINDS[kind].replace('_', ' ')} {item!r}; known: {', '.join(known)}")
        if d not in out:
            out.append(d)
    if not out:
        raise UserError("--domains is empty")
    return out


def cell_config(base: dict, kind: str, domain: str, run_dir: Path, steps: Optional[int]) -> dict:
    """The training config of one cell: the base config restricted to ``domain``."""
    d = copy.deepcopy(base)
    d["data"]["modalities"] = [domain] if KINDS[kind] == "modality" else []
    d["data"]["question_types"] = [domain] if KINDS[kind] == "question_type" else []
    d["trainer"]["output_dir"] = str(run_dir)
    d["trainer"]["resume_from"] = None
    if d["sft"]["warmstart_dir"]:
        # A warm-start is built from the records a run trains on, and each cell trains on its own
        # domain: one warm-start per cell, beside its run, reused when the protocol is rerun.
        d["sft"]["warmstart_dir"] = str(run_dir / "warmstart")
    if steps is not None:
        d["trainer"]["total_steps"] = int(steps)
    return d


def eval_config(base: dict):
    """The evaluation config: the whole test split (no domain filter)."""
    d = copy.deepcopy(base)
    d["data"]["modalities"], d["data"]["question_types"] = [], []
    return from_dict(d)


# --------------------------------------------------------------------------- default train / eval
def default_train(cfg_dict: dict) -> dict:
    """Run GRPO with ``cfg_dict``; the summary (``final_model`` = the HF dir of the final weights)."""
    cfg = from_dict(cfg_dict)
    summary = dict(run_training(cfg))
    summary.setdefault("final_model", str(Path(cfg.trainer.output_dir) / "checkpoints" / "final" / "hf"))
    return summary


def default_eval(model: str, cfg_dict: dict, out: Path, row: str, num_workers: Optional[int],
                 max_samples: Optional[int]) -> dict:
    """Evaluate ``model`` on the whole test split into ``out``; eval.json's content."""
    cfg = eval_config(cfg_dict)
    return evaluate_model(model, cfg.data.prepared_dir, split=cfg.data.test_split, out=out, cfg=cfg,
                          num_workers=num_workers, max_samples=max_samples, run_name=row, print_table=False,
                          progress=cfg.logging.progress)


def run_cell(row: str, kind: str, domain: Optional[str], cfg_dict: dict, protocol_dir: str, *,
             steps: Optional[int] = None, model: Optional[str] = None, eval_workers: Optional[int] = None,
             eval_max_samples: Optional[int] = None, train_fn: Optional[Callable] = None,
             eval_fn: Optional[Callable] = None) -> dict:
    """One row of the matrix: train on ``domain`` (unless ``model`` is given: a baseline),
    evaluate on the whole test split, write ``cell.json``; returns it."""
    train_fn = train_fn or default_train
    eval_fn = eval_fn or default_eval
    run_dir = cell_path(Path(protocol_dir), row)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = {}
    if model is None:
        summary = train_fn(cell_config(cfg_dict, kind, domain, run_dir, steps))
        model = summary.get("final_model") or str(run_dir / "checkpoints" / "final" / "hf")
    ev = eval_fn(model, cfg_dict, run_dir / "eval", row, eval_workers, eval_max_samples)
    dim = KINDS[kind]
    cell = {
        "row": row, "kind": kind, "train_domain": domain, "model": str(model),
        "test": ev["by_modality" if dim == "modality" else "by_question_type"],
        "overall": ev["overall"], "n": ev["n"], "skipped": ev.get("skipped", {}).get("count", 0),
        "format_rate": ev.get("format_rate"), "unparsable": ev.get("unparsable"),
        "train": {k: summary[k] for k in ("total_steps", "minutes", "weight_version", "before", "after",
                                          "final_model") if k in summary},
        "seconds": time.perf_counter() - t0,
    }
    _write_json(run_dir / "cell.json", cell)
    return cell


# --------------------------------------------------------------------------- matrix + report


# --------------------------------------------------------------------------- driver
def run_protocol(cfg, kind: str, *, protocol_dir: str | Path, domains: Optional[list[str]] = None,
                 steps: Optional[int] = None, sft_model: Optional[str] = None, sequential: bool = False,
                 max_parallel: Optional[int] = None, eval_workers: Optional[int] = None,
                 eval_max_samples: Optional[int] = None, train_fn: Optional[Callable] = None,
                 eval_fn: Optional[Callable] = None, test_domains: Optional[list[str]] = None) -> dict:
    """Run every unfinished row, then write the matrix and the report; returns the matrix.

    ``train_fn(cfg_dict) -> summary`` and ``eval_fn(model, cfg_dict, out, row, workers,
    max_samples) -> eval.json dict`` default to GRPO training and ``evaluate_model``;
    tests pass fakes (with ``sequential=True``)."""
    d = Path(protocol_dir)
    d.mkdir(parents=True, exist_ok=True)
    domains = list(domains or all_domains(kind))
    base_dict = to_dict(cfg)
    base_model = str(cfg.model.path)
    if train_fn is None or eval_fn is None:
        # The real thing: make sure the base model and the dataset exist before any cell starts.
        base_model = ensure_model(cfg)
        base_dict["model"]["path"] = base_model
        ensure_data(eval_config(base_dict))
    if test_domains is None:
        test_domains = _present_test_domains(base_dict, kind) if eval_fn is None else all_domains(kind)
    rows = [BASE] + ([SFT] if sft_model else []) + domains
    meta = {"kind": kind, "dimension": KINDS[kind], "rows": rows, "cols": test_domains, "steps": steps,
            "base_model": base_model, "sft_model": sft_model, "config": base_dict}
    _write_json(d / "protocol.json", meta)

    jobs = []  # (row, domain, model)
    for r in rows:
        if is_finished(d, r):
            log.info("protocol: %s already finished (%s); not recomputed", r, cell_path(d, r) / "cell.json")
            continue
        jobs.append((r, None if r in (BASE, SFT) else r, base_model if r == BASE else sft_model if r == SFT else None))
    common = dict(steps=steps, eval_workers=eval_workers, eval_max_samples=eval_max_samples, train_fn=train_fn,
                  eval_fn=eval_fn)
    if sequential:
        for r, dom, model in jobs:
            log.info("protocol: running %s", r)
            run_cell(r, kind, dom, base_dict, str(d), model=model, **common)
    elif jobs:
        _run_on_ray(cfg, jobs, kind, base_dict, d, max_parallel, common)
    matrix = matrix_from_cells(d)
    write_outputs(d, matrix, {"kind": kind, "base model": base_model, "steps per run": steps,
                              "training domains": ", ".join(domains), "protocol dir": str(d)})
    return matrix


def _present_test_domains(base_dict: dict, kind: str) -> list[str]:
    cfg = eval_config(base_dict)
    recs = load_prepared(cfg.data.prepared_dir, cfg.data.test_split)
    key = KINDS[kind]
    present = {getattr(r, key) for r in recs}
    return [x for x in all_domains(kind) if x in present]


def _run_on_ray(cfg, jobs, kind, base_dict, d: Path, max_parallel, common) -> None:
    local = is_local(cfg.cluster.address)
    started = False
    if not ray.is_initialized():
        connect_ray(cfg, wanted_cpus=resource_plan(cfg).totals().get("CPU", 1))
        started = True
    limit = max_parallel or (1 if local else len(jobs))
    # num_cpus=0: the task only coordinates; its rollout / learner actors reserve the real resources.
    task = ray.remote(num_cpus=0, max_retries=0)(run_cell)
    pending: dict = {}
    queue = list(jobs)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                r, dom, model = queue.pop(0)
                log.info("protocol: submitting %s", r)
                ref = task.options(name=f"protocol-{slug(r)}").remote(r, kind, dom, base_dict, str(d), model=model,
                                                                      **common)
                pending[ref] = r
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                r = pending.pop(ref)
                try:
                    ray.get(ref)
                    log.info("protocol: %s finished", r)
                except Exception as e:  # one failed cell does not lose the others; rerun retries it
                    log.error("protocol: %s failed: %s", r, describe_failure(e))
    finally:
        if started:
            ray.shutdown()
