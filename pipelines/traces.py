"""The Parquet trace store: one row per completion, from training rollouts and
from evaluation alike, so any reported number can be traced to the prompt,
image, model version and reasoning behind it.

Rows are buffered and written as numbered part files (``traces/<kind>-00000.parquet``);
readers load the whole directory with ``read_traces`` or HF ``datasets``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.prompts import format_question
from rewards import extract_eval_answer

# Stable columns (other tools read them). Reward components are a JSON object
# so that user-registered rewards need no schema change.
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
    "worker": "int64",
}


def trace_row(record, completion: dict[str, Any], *, kind: str, run: str, model: str, step: int,
              weight_version: int, worker: int, image_sha256: str, correct: bool, format_ok: bool,
              sample_index: int = 0, reward: Optional[float] = None,
              reward_components: Optional[dict[str, float]] = None, advantage: Optional[float] = None) -> dict:
    """One trace row (the columns of ``TRACE_COLUMNS``) for ``completion`` (``{"text", "token_ids",
    "finish_reason"}``) of ``record``. Training rows carry the reward, its components and the
    advantage; evaluation rows leave them ``None`` (written as NaN / "")."""
    text = completion["text"]
    return {
        "run": run, "kind": kind, "step": int(step), "weight_version": int(weight_version), "model": model,
        "prompt_id": record.id, "sample_index": int(sample_index), "image_sha256": image_sha256,
        "image_path": record.image_path or (record.image if isinstance(record.image, str) else ""),
        "modality": record.modality, "question_type": record.question_type, "source": record.source,
        "prompt": format_question(record), "answer": record.answer, "completion": text,
        "completion_tokens": len(completion.get("token_ids") or []),
        "finish_reason": str(completion.get("finish_reason", "")),
        "predicted": extract_eval_answer(text) or "", "correct": bool(correct), "format_ok": bool(format_ok),
        "reward": reward, "reward_components": reward_components, "advantage": advantage, "worker": int(worker),
    }


def _schema():
    types = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64()}
    return pa.schema([(name, types[t]) for name, t in TRACE_COLUMNS.items()])


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, t in TRACE_COLUMNS.items():
        v = row.get(name)
        if name == "reward_components" and isinstance(v, dict):
            v = json.dumps(v, sort_keys=True)
        if v is None:
            v = {"string": "", "int64": -1, "bool": False, "float64": float("nan")}[t]
        out[name] = v
    return out


class TraceWriter:
    def __init__(self, directory: str | Path, kind: str = "train", flush_every: int = 4096):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.flush_every = flush_every
        self._rows: list[dict] = []
        self._part = len(list(self.dir.glob(f"{kind}-*.parquet")))  # resume appends, never overwrites

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self._rows.extend(_normalise({"kind": self.kind, **r}) for r in rows)
        if len(self._rows) >= self.flush_every:
            self.flush()

    def flush(self) -> Optional[Path]:
        if not self._rows:
            return None
        path = self.dir / f"{self.kind}-{self._part:05d}.parquet"
        table = pa.Table.from_pylist(self._rows, schema=_schema())
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)  # readers never see a half-written part
        self._part += 1
        self._rows = []
        return path

    def close(self) -> None:
        self.flush()


def read_traces(directory: str | Path, kind: Optional[str] = None):
    """All trace rows under ``directory`` as a pyarrow Table (optionally one kind)."""
    pattern = f"{kind}-*.parquet" if kind else "*.parquet"
    parts = sorted(Path(directory).glob(pattern))
    if not parts:
        return _schema().empty_table()
    return pa.concat_tables([pq.read_table(p) for p in parts])
