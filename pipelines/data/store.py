"""Prepared datasets on disk: ``DIR/<split>.parquet`` (images embedded as PNG bytes)
plus ``DIR/manifest.json`` (counts, skipped records, how it was built).

Readable by pyarrow and by ``datasets.Dataset.from_parquet``.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL.Image import DecompressionBombError, UnidentifiedImageError

from learner.image_codec import is_png, read_image_bytes, to_png
from pipelines.data.schema import LETTERS, VQARecord
from pipelines.errors import BadRecordError, UserError

MANIFEST = "manifest.json"
SPLITS = ("train", "test")
COLUMNS = ("id", "image", "image_path", "image_sha256", "question", "options", "answer",
           "modality", "question_type", "source")


def _schema():
    return pa.schema([
        ("id", pa.string()), ("image", pa.binary()), ("image_path", pa.string()),
        ("image_sha256", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
        ("answer", pa.string()), ("modality", pa.string()), ("question_type", pa.string()),
        ("source", pa.string()),
    ])


def to_png_bytes(data_or_path: bytes | str | os.PathLike, source: str = "", index: int | str = "") -> bytes:
    """PNG bytes of an image given as bytes or a path: PNG input is kept as is (after
    checking it decodes), other formats are converted. Problems -> BadRecordError."""
    where = source or str(data_or_path)[:200]
    if isinstance(data_or_path, (bytes, bytearray)):
        data = bytes(data_or_path)
    else:
        path = Path(data_or_path)
        try:
            data = read_image_bytes(path)
        except ValueError as e:  # not a file
            raise BadRecordError(where, index, str(e)) from None
        except OSError as e:
            raise BadRecordError(where, index, f"cannot read image {path}: {e}") from e
    try:
        return to_png(data)
    except (UnidentifiedImageError, DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        name = "" if isinstance(data_or_path, (bytes, bytearray)) else f" {data_or_path}"
        raise BadRecordError(where, index, f"unreadable image{name}: {e}") from e


def image_under(root: Path, rel: str, source: str, index: int | str) -> Path:
    """``root/rel``, refused (BadRecordError) when a record's image path would leave ``root``
    ('../..', an absolute path): a data file must not make us read files elsewhere."""
    path = root / rel
    # Lexical, not resolved: an image root that links to another disk is fine, '..' is not.
    base = os.path.abspath(root)
    if os.path.commonpath([base, os.path.abspath(path)]) != base:
        raise BadRecordError(source, index, f"image path {rel!r} points outside the image root {root}")
    return path


def _image_bytes(rec: VQARecord) -> bytes:
    if isinstance(rec.image, (bytes, bytearray)):
        data = bytes(rec.image)
        return data if not data or is_png(data) else to_png_bytes(data, rec.id)
    return to_png_bytes(rec.image, rec.id)


def count_stats(records: list[VQARecord]) -> dict:
    def sort(c):
        return dict(sorted(c.items()))

    return {
        "total": len(records),
        "by_modality": sort(Counter(r.modality for r in records)),
        "by_question_type": sort(Counter(r.question_type for r in records)),
        "by_answer_letter": {k: v for k, v in sorted(Counter(r.answer for r in records).items(),
                                                     key=lambda kv: LETTERS.find(kv[0]))},
        "by_option_count": {str(k): v for k, v in sorted(Counter(len(r.options) for r in records).items())},
        "missing_images": sum(1 for r in records if not r.image),
    }


def write_prepared(out_dir: str | os.PathLike, splits: dict[str, list[VQARecord]],
                   extra_manifest: dict | None = None) -> dict:
    """Write one Parquet file per split and the manifest; return the manifest.

    ``extra_manifest`` may carry ``skipped`` (a list of {file, index, reason}), the
    command, seed and anything else worth recording."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.parquet"):  # a rebuild replaces the whole dataset
        if stale.stem not in splits:
            stale.unlink()
    extra = dict(extra_manifest or {})
    skipped = list(extra.pop("skipped", []))
    seen_ids: set[str] = set()
    manifest_splits = {}
    for split, records in splits.items():
        cols: dict[str, list] = {c: [] for c in COLUMNS}
        for rec in records:
            try:
                rec.validate(allow_unknown=True)
            except ValueError as e:
                raise UserError(f"cannot write split {split!r}: {e}") from e
            if rec.id in seen_ids:
                raise UserError(f"cannot write split {split!r}: duplicate record id {rec.id!r}")
            seen_ids.add(rec.id)
            img = _image_bytes(rec)
            path = rec.image_path or (rec.image if isinstance(rec.image, str) else "")
            row = dict(id=rec.id, image=img, image_path=str(path),
                       image_sha256=hashlib.sha256(img).hexdigest() if img else "",
                       question=rec.question, options=list(rec.options), answer=rec.answer,
                       modality=rec.modality, question_type=rec.question_type, source=rec.source)
            for c in COLUMNS:
                cols[c].append(row[c])
        table = pa.Table.from_pydict(cols, schema=_schema())
        pq.write_table(table, out / f"{split}.parquet")
        manifest_splits[split] = count_stats(records)
    overall = count_stats([r for recs in splits.values() for r in recs])
    manifest = {
        "format": "medr1-prepared-v1",
        "splits": manifest_splits,
        **overall,
        "skipped": {"count": len(skipped), "records": skipped},
        **extra,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return manifest


def available_splits(data_dir: str | os.PathLike) -> list[str]:
    d = Path(data_dir)
    return sorted(p.stem for p in d.glob("*.parquet")) if d.is_dir() else []


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"no prepared dataset at {data_dir}: {MANIFEST} not found "
                        f"(build one with `medr1 prepare-data ...`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from e


def load_prepared(data_dir: str | os.PathLike, split: str) -> list[VQARecord]:
    """The records of one split, images as PNG bytes (b"" where the image was missing)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError(f"no prepared dataset at {d}: the directory does not exist")
    path = d / f"{split}.parquet"
    if not path.is_file():
        have = available_splits(d)
        raise UserError(f"{d} has no split {split!r}; splits present: {', '.join(have) or 'none'}")
    try:
        table = pq.read_table(path, columns=[c for c in COLUMNS if c != "image_sha256"])
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"cannot read {path}: {e}") from e
    want = _schema()
    for name in table.column_names:  # a file written by something else: refused, not misread
        if not table.schema.field(name).type.equals(want.field(name).type):
            raise UserError(f"{path}: column {name!r} is {table.schema.field(name).type}, expected "
                            f"{want.field(name).type} (not a dataset written by medr1 prepare-data)")
    records = []
    for i, r in enumerate(table.to_pylist()):
        rec = VQARecord(id=r["id"] or "", image=r["image"] or b"", question=r["question"] or "",
                        options=list(r["options"] or []), answer=r["answer"] or "", modality=r["modality"] or "",
                        question_type=r["question_type"] or "", source=r["source"] or "",
                        image_path=r["image_path"] or "", index=i)
        try:
            records.append(rec.validate(allow_unknown=True))
        except ValueError as e:
            raise BadRecordError(str(path), i, str(e)) from None
    return records
