"""Checking a trace store: every row against its hash and place in the chain, every part
against the manifest, the manifest against itself (and its signature), the images against
their names, and optionally the chain's end against a head recorded elsewhere.

Problems are listed in the order they are found; the first names the first bad file and
row. What each check catches: a changed value (the row's hash), a removed, added or
reordered row (its ``seq`` and the chain), a removed part (the manifest lists it), a part
added from elsewhere (unlisted, another run id), an edited manifest (its own hash, its
signature), rows cut from the end with the manifest rewritten to match (only a head
recorded outside the store can tell: ``--head``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pyarrow.parquet as pq

from pipelines.tracing.chain import (
    MANIFEST,
    SIGNATURE,
    check_signature,
    combined_head,
    file_sha256,
    genesis,
    manifest_self_ok,
    row_hash,
)
from pipelines.tracing.rows import part_files


@dataclass
class Problem:
    file: str
    row: Optional[int]  # 0-based row within the file; None when the whole file is at fault
    what: str

    def __str__(self) -> str:
        return f"{self.file} row {self.row}: {self.what}" if self.row is not None else f"{self.file}: {self.what}"


@dataclass
class Verdict:
    directory: Path
    problems: list[Problem] = field(default_factory=list)
    chains: dict[str, dict] = field(default_factory=dict)  # kind -> {"rows", "head", "parts"}

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def head(self) -> str:
        return combined_head({k: c["head"] for k, c in self.chains.items()})


def verify_store(directory: str | Path, heads: tuple[str, ...] = (), public_key: Optional[str] = None,
                 check_images: bool = True, head_records: tuple[dict, ...] = ()) -> Verdict:
    """``heads``: recorded heads, each ``KIND:HEX`` or the combined HEX a run prints; ``head_records``:
    per-kind heads found beside the store (summary.json, checkpoints). They are trusted only when they
    hash to a combined head given, and then say which chain was cut."""
    d = Path(directory)
    v = Verdict(d)
    path = d / MANIFEST
    if not path.is_file():
        v.problems.append(Problem(MANIFEST, None, f"missing ({len(part_files(d))} part files in {d})"))
        return v
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
        chains, run_id = manifest["chains"], manifest["run_id"]
    except (ValueError, KeyError, TypeError) as e:
        v.problems.append(Problem(MANIFEST, None, f"unreadable ({e})"))
        return v
    if not manifest_self_ok(manifest):
        v.problems.append(Problem(MANIFEST, None, "edited after it was written (its manifest_sha256 does not match)"))
    if manifest.get("signed_by") or public_key or (d / SIGNATURE).is_file():
        bad = check_signature(d, raw, public_key or manifest.get("signed_by"))
        if bad:
            v.problems.append(Problem(SIGNATURE if "signature" in bad else MANIFEST, None, bad))
    listed = {p["file"] for c in chains.values() for p in c["parts"]}
    for p in part_files(d):
        if p.name not in listed:
            v.problems.append(Problem(p.name, 0, f"not listed in {MANIFEST} (added afterwards{_other_run(p, run_id)})"))
    where: dict[str, tuple[str, int]] = {}  # row hash -> (file, row), to place a recorded head
    images: dict[str, tuple[str, int]] = {}
    for kind in sorted(chains):
        v.chains[kind] = _walk_chain(d, kind, chains[kind], run_id, v.problems, where, images)
    for h in heads:
        h = h.strip().lower()
        rec = next((r for r in head_records if r and combined_head(r) == h), None)
        for one in ([f"{k}:{x}" for k, x in sorted(rec.items())] if rec and h != v.head else [h]):
            _check_head(one, v, where)
    if check_images:
        for rel, (f, i) in sorted(images.items()):
            p = d / rel
            if not p.is_file():
                v.problems.append(Problem(rel, None, f"missing (the image of {f} row {i})"))
            elif file_sha256(p) != Path(rel).stem:
                v.problems.append(Problem(rel, None, f"does not hash to its name (the image of {f} row {i})"))
    return v


def _other_run(path: Path, run_id: str) -> str:
    try:
        first = pq.read_table(path).slice(0, 1).to_pylist()
    except Exception:  # unreadable: the unlisted name says enough
        return ""
    other = first[0].get("run_id") if first else None
    return f"; its rows belong to run {other}" if other and other != run_id else ""


def _walk_chain(d: Path, kind: str, chain: dict, run_id: str, problems: list, where: dict, images: dict) -> dict:
    start = (chain.get("continues_from") or {}).get("head") or genesis(run_id, kind)
    if chain["genesis"] != start:
        problems.append(Problem(MANIFEST, None, f"the {kind} chain's genesis is not this run's"))
    prev, seq, last = chain["genesis"], 0, (MANIFEST, None)
    for part in chain["parts"]:
        name, first = part["file"], part.get("first_seq", seq)
        if part["prev"] != prev or first != seq:
            problems.append(Problem(MANIFEST, None, f"the {kind} chain breaks before {name}"))
        p = d / name
        if not p.is_file():
            problems.append(Problem(name, None, f"missing: rows {first}..{first + part['rows'] - 1} of the "
                                                f"{kind} chain"))
            prev, seq = part["head"], first + part["rows"]
            continue
        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            problems.append(Problem(name, None, f"unreadable Parquet ({e})"))
            prev, seq = part["head"], first + part["rows"]
            continue
        bad = _first_bad_row(rows, kind, run_id, prev, seq)
        if bad is not None:
            problems.append(Problem(name, bad[0], bad[1]))
            prev, seq = part["head"], first + part["rows"]
            continue
        for i, r in enumerate(rows):
            where[r["row_sha256"]] = (name, i)
            if r.get("image_file"):
                images.setdefault(r["image_file"], (name, i))
        if rows:
            prev, seq, last = rows[-1]["row_sha256"], seq + len(rows), (name, len(rows) - 1)
        if len(rows) != part["rows"]:
            problems.append(Problem(name, len(rows) - 1 if rows else None,
                                    f"{len(rows)} rows where {MANIFEST} lists {part['rows']}: rows cut from the end"))
        elif prev != part["head"]:
            problems.append(Problem(name, len(rows) - 1, f"ends at another head than {MANIFEST} records"))
        elif file_sha256(p) != part["sha256"]:
            problems.append(Problem(name, None, f"bytes differ from {MANIFEST}'s SHA-256 (every row still matches "
                                                f"its hash: the change is in the file's metadata)"))
    if chain["rows"] != seq or chain["head"] != prev:
        problems.append(Problem(MANIFEST, None, f"the {kind} chain's recorded end ({chain['rows']} rows) is not "
                                                f"where its parts end ({seq} rows)"))
    return {"rows": seq, "head": prev, "parts": len(chain["parts"]), "last": last,
            "continues_from": chain.get("continues_from")}


def _first_bad_row(rows: list[dict], kind: str, run_id: str, prev: str, seq: int) -> Optional[tuple[int, str]]:
    for i, r in enumerate(rows):
        if "row_sha256" not in r or "seq" not in r:
            return i, "not a chained trace row (no row_sha256 / seq column)"
        if r["run_id"] != run_id:
            return i, f"belongs to run {r['run_id']}, not to this store's run {run_id}"
        if r["kind"] != kind:
            return i, f"a {r['kind']} row in the {kind} chain"
        if r["seq"] != seq + i:
            return i, (f"holds chain position {r['seq']} where {seq + i} belongs: a row was removed, added or "
                       f"moved here")
        if row_hash(prev, r) != r["row_sha256"]:
            return i, "its content does not match its hash (changed after it was written)"
        prev = r["row_sha256"]
    return None


def _check_head(h: str, v: Verdict, where: dict) -> None:
    kind, _, hexa = h.rpartition(":")
    heads = {k: c["head"] for k, c in v.chains.items()}
    if not kind and (hexa == v.head or hexa in heads.values()):
        return
    if kind and heads.get(kind) == hexa:
        return
    ends = ", ".join(f"{k} at {c['last'][0]} row {c['last'][1]}" for k, c in sorted(v.chains.items())
                     if not kind or k == kind)
    if kind and kind not in heads:
        v.problems.append(Problem(MANIFEST, None, f"the recorded head names a {kind} chain; the store has none"))
    elif hexa in where:
        f, i = where[hexa]
        v.problems.append(Problem(f, i, f"the recorded head {hexa[:16]}... is this row's; rows were added after it "
                                        f"(chains end {ends})"))
    else:
        f, i = v.chains[kind]["last"] if kind else min((c["last"] for c in v.chains.values()), key=str)
        v.problems.append(Problem(f, i, f"the recorded head {hexa[:16]}... is not in the chain, which ends here "
                                        f"({ends}): rows were cut from the end or changed"))
