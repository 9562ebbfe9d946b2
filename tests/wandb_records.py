"""Read a W&B offline run back (test helper): the records of its ``run-*.wandb`` file.

The file is W&B's append-only log: a 7-byte header (":W&B", magic 0xBEE1, version), then
32 KiB blocks of chunks, each a 7-byte header (crc32, length, type) and a piece of one
protobuf ``Record``; type 1 holds a whole record, 2/3/4 its first/middle/last pieces, and a
block tail too short for a header is zero padding. wandb itself ships no Python reader now.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7


def raw_records(path: str | Path):
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file (header {ident!r}, {magic:#x})")
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # padding up to the block's end
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pieces = chunk
        elif kind == 3:
            pieces += chunk
        elif kind == 4:
            yield pieces + chunk


def offline_run(wandb_dir: str | Path) -> dict:
    """{"history": [{key: value} per logged row], "config": {key: value}} of the one offline run under wandb_dir."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise ValueError(f"expected one offline run under {wandb_dir}, found {files}")
    history, config = [], {}
    for raw in raw_records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
    return {"history": history, "config": config}
