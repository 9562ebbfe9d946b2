"""Writing the trace store: rows are chained, buffered and written as numbered part files,
and the manifest is updated after each part, off the caller's thread.

``TraceWriter.add`` only queues the rows: a background thread fills the run-wide
provenance, keeps the images, hashes the chain, and writes a part file every
``flush_every`` rows (and on ``flush``/``close``), then the manifest. A step therefore
pays for a list append; ``flush`` waits for everything queued so far (before a checkpoint
records the heads). Part files are uncompressed Parquet: a changed byte then shows as a
changed value in one row, which ``verify`` names (images, the bulk, live outside).

Writers of several kinds on one directory (train and eval) share its manifest; reopening
a directory continues its chains (a resumed run), and a chain that starts in a new
directory can continue from a checkpoint's recorded head."""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.tracing.chain import (
    MANIFEST,
    SIGNATURE,
    file_sha256,
    genesis,
    new_manifest,
    read_manifest,
    row_hash,
    write_manifest,
)
from pipelines.tracing.images import ImageStore
from pipelines.tracing.provenance import code_version, new_run_id
from pipelines.tracing.rows import normalise, part_files, schema

log = logging.getLogger(__name__)
_STORES: dict[str, "_Store"] = {}  # one per directory in this process, shared by its writers
_STORES_LOCK = threading.Lock()


class _Store:
    """A directory's manifest and image folder; its writers commit parts through it."""

    def __init__(self, d: Path, run: str, images_max_mb: float, signing_key: Optional[str]):
        self.dir, self.lock, self.users = d, threading.Lock(), 0
        self.signing_key = signing_key
        self.manifest = read_manifest(d) or new_manifest(new_run_id(), run or d.parent.name)
        self.images = ImageStore(d, images_max_mb)
        # On first open in this process (no writer of ours is mid-part): settle what a crash left behind.
        kinds = {p.name.split("-")[0] for p in part_files(d)} | set(self.manifest["chains"])
        if sum(self._adopt_orphans(k) for k in sorted(kinds)):
            write_manifest(d, self.manifest, signing_key)

    def chain(self, kind: str, continue_from: Optional[dict]) -> dict:
        with self.lock:
            chains = self.manifest["chains"]
            if kind not in chains:
                start = (continue_from or {}).get("head") or genesis(self.manifest["run_id"], kind)
                chains[kind] = {"genesis": start, "continues_from": continue_from or None, "rows": 0,
                                "head": start, "parts": []}
            return chains[kind]

    def _adopt_orphans(self, kind: str) -> int:
        """Parts a crash left unlisted: kept if they continue the chain, else set aside (never deleted);
        returns how many were adopted."""
        chain, adopted = self.manifest["chains"].get(kind), 0
        listed = {p["file"] for p in chain["parts"]} if chain else set()
        for path in part_files(self.dir, kind):
            if path.name in listed:
                continue
            rows = pq.read_table(path).to_pylist() if chain and "row_sha256" in pq.read_schema(path).names else []
            prev, ok = (chain or {}).get("head"), bool(rows)
            for i, r in enumerate(rows):
                ok = ok and r["seq"] == chain["rows"] + i and row_hash(prev, r) == r["row_sha256"]
                prev = r["row_sha256"]
            if ok:
                self._append(kind, path, rows, file_sha256(path))
                adopted += 1
            else:
                log.warning("trace part %s does not continue the %s chain; moved to %s.orphan", path, kind, path.name)
                os.replace(path, path.with_name(path.name + ".orphan"))
        return adopted

    def _append(self, kind: str, path: Path, rows: list[dict], sha: str) -> None:
        chain = self.manifest["chains"][kind]
        chain["parts"].append({"file": path.name, "rows": len(rows), "first_seq": chain["rows"],
                               "prev": chain["head"], "head": rows[-1]["row_sha256"], "sha256": sha,
                               "bytes": path.stat().st_size})
        chain["rows"] += len(rows)
        chain["head"] = rows[-1]["row_sha256"]

    def commit(self, kind: str, path: Path, rows: list[dict], sha: str) -> None:
        with self.lock:
            self._append(kind, path, rows, sha)
            self.manifest["images"] = {"stored": len(self.images._known), "bytes": self.images.used,
                                       "skipped_over_cap": self.images.skipped}
            write_manifest(self.dir, self.manifest, self.signing_key)


def _open_store(d: Path, run: str, images_max_mb: float, signing_key: Optional[str]) -> _Store:
    with _STORES_LOCK:
        key = str(d.resolve())
        store = _STORES.get(key) or _Store(d, run, images_max_mb, signing_key)
        _STORES[key] = store
        store.users += 1
        return store


def _release_store(store: _Store) -> None:
    with _STORES_LOCK:
        store.users -= 1
        if store.users <= 0:
            _STORES.pop(str(store.dir.resolve()), None)


def reset_store(directory: str | Path) -> None:
    """Remove a store's rows and manifest (``medr1 evaluate`` replaces its outputs); images stay."""
    d = Path(directory)
    for p in part_files(d):
        p.unlink()
    for name in (MANIFEST, SIGNATURE):
        (d / name).unlink(missing_ok=True)


class TraceWriter:
    def __init__(self, directory: str | Path, kind: str = "train", flush_every: int = 4096, *, run: str = "",
                 provenance: Optional[dict[str, Any]] = None, continue_from: Optional[dict] = None,
                 images_max_mb: float = 1024.0, signing_key: Optional[str] = None, background: bool = True):
        """``provenance``: run-wide column values for rows that leave them empty (config_sha256, dataset, ...);
        ``continue_from``: {"head", "checkpoint"} when this kind's chain is new here but continues a
        checkpoint's; ``signing_key``: an Ed25519 PEM file to sign the manifest with."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kind, self.flush_every = kind, flush_every
        self._store = _open_store(self.dir, run, images_max_mb, signing_key)
        chain = self._store.chain(kind, continue_from)
        self.run_id = self._store.manifest["run_id"]
        self.head, self._seq = chain["head"], chain["rows"]
        self._part = len(part_files(self.dir, kind))  # after the listed ones (strays were set aside)
        self._defaults = {"run": self._store.manifest["run"], "code_version": code_version(), **(provenance or {})}
        self._rows: list[dict] = []
        self._error: Optional[BaseException] = None
        self._queue: Optional[queue.Queue] = None
        self._closed = False
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name=f"trace-writer-{kind}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ caller's side
    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self._raise_if_failed()
        rows = [dict(r) for r in rows]  # the thread fills them in; the caller's dicts stay as they were
        if self._queue is None:
            self._ingest(rows)
        else:
            self._queue.put(("rows", rows))

    def flush(self) -> Optional[Path]:
        """Write what is buffered (waiting for the queue to drain); returns the part written, if any."""
        self._raise_if_failed()
        if self._queue is None:
            return self._write_part()
        done: dict[str, Any] = {"event": threading.Event()}
        self._queue.put(("flush", done))
        done["event"].wait()
        self._raise_if_failed()
        return done.get("path")

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._queue is not None:
                self._queue.put(("stop", None))
                self._thread.join()
            _release_store(self._store)

    def rows_written(self) -> int:
        """Rows in this chain so far (those of earlier runs of the directory included)."""
        return self._seq

    def note_resume(self, record: dict[str, Any]) -> None:
        """A resumed run starts here: ``record`` (checkpoint, its head, step) is listed in the chain's
        ``resumes`` with ``at_seq``, the seq of this run's first row. Call before adding rows."""
        self.flush()
        with self._store.lock:
            chain = self._store.manifest["chains"][self.kind]
            chain.setdefault("resumes", []).append({**record, "at_seq": self._seq})
            write_manifest(self.dir, self._store.manifest, self._store.signing_key)

    def heads(self) -> dict[str, str]:
        """Every chain's head in this directory as of the last part written (call ``flush`` first)."""
        with self._store.lock:
            return {k: c["head"] for k, c in sorted(self._store.manifest["chains"].items())}

    # ------------------------------------------------------------------ background side
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"trace writer for {self.dir} ({self.kind}) failed: {self._error}") from self._error

    def _work(self) -> None:
        while True:
            op, arg = self._queue.get()
            if op == "stop":
                return
            try:
                if self._error is None:
                    if op == "rows":
                        self._ingest(arg)
                    else:
                        arg["path"] = self._write_part()
            except BaseException as e:  # surfaced on the caller's next call
                self._error = e
            if op == "flush":
                arg["event"].set()

    def _ingest(self, rows: list[dict]) -> None:
        for r in rows:
            png = r.pop("_image_png", None)
            if png is not None and r.get("image_sha256"):
                with self._store.lock:  # the train and eval writers share the image folder
                    r["image_file"] = self._store.images.put(r["image_sha256"], png)
            for k, v in self._defaults.items():
                if r.get(k) in (None, ""):
                    r[k] = v
            r["kind"], r["run_id"], r["seq"] = self.kind, self.run_id, self._seq
            row = normalise(r)
            row["row_sha256"] = self.head = row_hash(self.head, row)
            self._seq += 1
            self._rows.append(row)
            if len(self._rows) >= self.flush_every:
                self._write_part()

    def _write_part(self) -> Optional[Path]:
        if not self._rows:
            return None
        path = self.dir / f"{self.kind}-{self._part:05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(self._rows, schema=schema()), sink, compression="none")
        data = sink.getvalue().to_pybytes()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see a half-written part
        self._store.commit(self.kind, path, self._rows, hashlib.sha256(data).hexdigest())
        self._part += 1
        self._rows = []
        return path
