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


def _schema():
    import pyarrow as pa

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
        import pyarrow as pa
        import pyarrow.parquet as pq

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
    import pyarrow as pa
    import pyarrow.parquet as pq

    pattern = f"{kind}-*.parquet" if kind else "*.parquet"
    parts = sorted(Path(directory).glob(pattern))
    if not parts:
        return _schema().empty_table()
    return pa.concat_tables([pq.read_table(p) for p in parts])
