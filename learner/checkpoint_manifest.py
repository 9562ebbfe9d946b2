"""A checkpoint is complete when its ``MANIFEST.json`` says so.

The manifest lists the SHA-256 and size of every file of the checkpoint and is written
last, atomically (temporary file, fsync, rename), after every rank has finished writing.
A save that crashed leaves no manifest; a file changed afterwards no longer matches it:
either way ``verify`` refuses the checkpoint, naming the file, instead of training on
from it."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "MANIFEST.json"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete or was changed after it was written."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path, parts: tuple[str, ...]) -> list[Path]:
    return sorted(p for part in parts for p in (directory / part).rglob("*") if p.is_file())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_sealed(directory: str | Path) -> bool:
    """Whether the save finished (its manifest exists); ``verify`` also checks every file against it."""
    return (Path(directory) / MANIFEST).is_file()


def seal(directory: str | Path, parts: tuple[str, ...] = ("hf", "adapter", "deepspeed", "trace")) -> dict:
    """Write the manifest of ``parts`` (sub-directories of ``directory``; absent ones hold nothing), after
    syncing their files. ``trace/`` holds the trace store's heads at the save."""
    d = Path(directory)
    files = {}
    for p in _files(d, parts):
        _fsync(p)
        files[p.relative_to(d).as_posix()] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    # The directory entries too: a synced file whose name was never synced can vanish on power loss.
    for sub in sorted({q for part in parts if (d / part).is_dir()
                       for q in [d / part, *(x for x in (d / part).rglob("*") if x.is_dir())]}):
        _fsync(sub)
    manifest = {"format": 1, "files": files}
    tmp = d / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync(tmp)
    tmp.replace(d / MANIFEST)
    _fsync(d)
    return manifest


def verify(directory: str | Path) -> dict:
    """The manifest, once every file it lists is there with its size and hash; CheckpointError otherwise."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} does not exist")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {d} is incomplete: it has no {MANIFEST} (the save did not finish)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {d}: {MANIFEST} is unreadable ({e})") from None
    for rel, want in sorted(files.items()):
        p = d / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {d} is incomplete: {rel} is missing")
        if p.stat().st_size != want["bytes"] or _sha256(p) != want["sha256"]:
            raise CheckpointError(f"checkpoint {d} was changed or corrupted after it was written: {rel} "
                                  f"does not match its SHA-256 in {MANIFEST}")
    return manifest
