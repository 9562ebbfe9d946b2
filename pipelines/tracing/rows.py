"""Trace rows: one per completion, from training rollouts and from evaluation alike, so any
reported number can be traced to the prompt, image, weights, code and reasoning behind it.

Rows are written by ``pipelines/tracing/writer.py`` as numbered part files
(``traces/<kind>-00000.parquet``); readers load the whole directory with ``read_traces``
or HF ``datasets``. The first columns are the original ones (other tools read them);
the provenance and chain columns follow.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.prompts import format_question
from rewards import extract_eval_answer

# Reward components, options and sampling parameters are JSON text so that user-registered
# rewards and new sampling knobs need no schema change.
TRACE_COLUMNS = {
    "run": "string",
    "kind": "string",  # train | eval
    "step": "int64",
    "weight_version": "int64",
    "model": "string",
    "prompt_id": "string",
    "sample_index": "int64",
    "image_sha256": "string",
    "image_path": "string",
    "modality": "string",
    "question_type": "string",
    "source": "string",
    "prompt": "string",
    "answer": "string",
    "completion": "string",
    "completion_tokens": "int64",
    "finish_reason": "string",
    "predicted": "string",
    "correct": "bool",
    "format_ok": "bool",
    "reward": "float64",
    "reward_components": "string",
    "advantage": "float64",
    "worker": "int64",  # the rollout actor (rollout-N) that sampled it
    # provenance
    "run_id": "string",  # unique per run (the directory name may repeat); filled by the writer
    "seq": "int64",  # position in its chain (run, kind); filled by the writer
    "dataset": "string",  # prepared dataset directory and split
    "record_index": "int64",  # the record's position in that split file
    "question": "string",
    "options": "string",  # JSON list, in letter order
    "reasoning": "string",  # the text inside <think>...</think>
    "weights_sha256": "string",  # of the weights weight_version names (learner/weights_digest.py)
    "config_sha256": "string",
    "code_version": "string",  # package version + git commit
    "sampling": "string",  # JSON: temperature, top_p, top_k, max_tokens, n
    "seed": "int64",
    "timestamp": "string",  # UTC, ISO 8601
    "image_file": "string",  # images/<sha256>.png in the store, "" when not kept (size cap)
    "row_sha256": "string",  # SHA-256 over the previous row's and every column above (pipelines/tracing/chain.py)
}
_EMPTY = {"string": "", "int64": -1, "bool": False, "float64": float("nan")}
_CAST = {"string": str, "int64": int, "bool": bool, "float64": float}
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def parse_reasoning(text: str) -> str:
    """The reasoning inside the first ``<think>`` (to the end when it is never closed); "" without one."""
    m = _THINK.search(text or "")
    return m.group(1).strip() if m else ""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def trace_row(record, completion: dict[str, Any], *, kind: str, run: str, model: str, step: int,
              weight_version: int, worker: int, image_sha256: str, correct: bool, format_ok: bool,
              sample_index: int = 0, reward: Optional[float] = None,
              reward_components: Optional[dict[str, float]] = None, advantage: Optional[float] = None,
              weights_sha256: str = "", sampling: Optional[dict] = None, seed: int = -1,
              image_png: Optional[bytes] = None) -> dict:
    """One trace row for ``completion`` (``{"text", "token_ids", "finish_reason"}``) of ``record``.
    Training rows carry the reward, its components and the advantage; evaluation rows leave them
    ``None`` (written as NaN / ""). ``image_png`` goes to the store's image folder, not the row.
    Run-wide provenance (run id, config hash, code version, dataset) is filled in by the writer."""
    text = completion["text"]
    row = {
        "run": run, "kind": kind, "step": int(step), "weight_version": int(weight_version), "model": model,
        "prompt_id": record.id, "sample_index": int(sample_index), "image_sha256": image_sha256,
        "image_path": record.image_path or (record.image if isinstance(record.image, str) else ""),
        "modality": record.modality, "question_type": record.question_type, "source": record.source,
        "prompt": format_question(record), "answer": record.answer, "completion": text,
        "completion_tokens": len(completion.get("token_ids") or []),
        "finish_reason": str(completion.get("finish_reason", "")),
        "predicted": extract_eval_answer(text) or "", "correct": bool(correct), "format_ok": bool(format_ok),
        "reward": reward, "reward_components": reward_components, "advantage": advantage, "worker": int(worker),
        "run_id": None, "seq": None, "dataset": None, "record_index": int(getattr(record, "index", -1)),
        "question": record.question, "options": list(record.options), "reasoning": parse_reasoning(text),
        "weights_sha256": weights_sha256, "config_sha256": None, "code_version": None,
        "sampling": sampling, "seed": int(seed), "timestamp": now_iso(), "image_file": None, "row_sha256": None,
    }
    if image_png is not None:
        row["_image_png"] = image_png
    return row


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """Exactly the stored values: every column present, JSON columns as text, None as the column's empty
    value, numbers and flags as plain Python types (what a read-back row holds, so hashes agree)."""
    out = {}
    for name, t in TRACE_COLUMNS.items():
        v = row.get(name)
        if isinstance(v, (dict, list, tuple)):
            v = json.dumps(v, sort_keys=True)
        out[name] = _EMPTY[t] if v is None else _CAST[t](v)
    return out


def schema() -> pa.Schema:
    types = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64()}
    return pa.schema([(name, types[t]) for name, t in TRACE_COLUMNS.items()])


def part_files(directory: str | Path, kind: Optional[str] = None) -> list[Path]:
    pattern = f"{kind}-*.parquet" if kind else "*-*.parquet"
    return sorted(Path(directory).glob(pattern))


def read_traces(directory: str | Path, kind: Optional[str] = None):
    """All trace rows under ``directory`` as a pyarrow Table (optionally one kind). Part files
    written before a column existed read back with that column empty."""
    parts = part_files(directory, kind)
    if not parts:
        return schema().empty_table()
    tables = []
    for p in parts:
        t = pq.read_table(p)
        for name, field in zip(schema().names, schema()):
            if name not in t.column_names:
                t = t.append_column(field, pa.array([_EMPTY[TRACE_COLUMNS[name]]] * t.num_rows, field.type))
        tables.append(t.select(schema().names))
    return pa.concat_tables(tables)
