"""A shared-memory segment that holds a model's weights, and where each tensor sits in it.

The ``shm`` weight push (``actors/transfer_shm.py``) has the learner write every
tensor once into a file under ``/dev/shm`` that each vLLM worker on the node has
mapped; a worker hands the engine tensors that are views of that mapping, so the
bytes are copied once on each side and never pickled or serialised. This module is
the part without vLLM: the layout (aligned offsets, buckets cut at layer
boundaries), creating and mapping the segment, views into it, and which machine a
process runs on. Pure torch and the standard library, tested in milliseconds.
"""
from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.weight_stream import TensorSpec

SHM_DIR = Path("/dev/shm")
ALIGN = 64  # every tensor starts on a cache line (and so on its dtype's alignment)


@dataclass(frozen=True)
class Slot(TensorSpec):
    offset: int  # bytes from the start of the segment


@dataclass(frozen=True)
class Layout:
    slots: list[Slot]  # in the order the trainer sends them
    buckets: list[list[int]]  # slot indices per bucket; each bucket is one load call on the workers
    nbytes: int  # the segment's size

    def bucket_info(self, k: int) -> dict:
        """What a worker needs to load bucket ``k``: plain lists (they travel through vLLM's RPC)."""
        s = [self.slots[i] for i in self.buckets[k]]
        return {"names": [x.name for x in s], "dtype_names": [x.dtype for x in s],
                "shapes": [list(x.shape) for x in s], "offsets": [x.offset for x in s]}


def plan_layout(specs: list[tuple[str, str, tuple[int, ...]]], groups: list[list[str]], bucket_bytes: int,
                pad_rows: dict[str, int] | None = None) -> Layout:
    """Place ``specs`` (name, dtype name, shape) one after another, aligned, in ``groups`` order.

    A bucket closes before a group that would take it past ``bucket_bytes``, so a
    group (one decoder layer, as vLLM's ``layerwise_groups`` cuts them) is never split:
    when a worker's load call for a bucket returns, vLLM has seen every weight of
    those layers and processed them. A group larger than ``bucket_bytes`` is a bucket
    of its own. Within a group, weights come before biases (``actors/shm_alias.py``).

    ``pad_rows``: name -> a row multiple; that tensor is followed by unused (zero) bytes up to it, as
    vLLM pads a vocabulary's rows, so the padded parameter can be a view of the segment too."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive (got {bucket_bytes})")
    index = {name: i for i, (name, _, _) in enumerate(specs)}
    grouped = [n for g in groups for n in g]
    if sorted(grouped) != sorted(index) or len(set(grouped)) != len(grouped):
        missing = sorted(set(index) - set(grouped))[:3]
        raise ValueError(f"shm layout: the groups must name every tensor exactly once (missing {missing})")
    slots: list[Slot] = []
    buckets: list[list[int]] = []
    offset, current, current_bytes = 0, [], 0
    for group in groups:
        # Weights before biases (stable): q, k, v weights then sit back to back in the order vLLM fuses them
        # into qkv_proj (gate, up into gate_up_proj), so the fused parameter can be a view of the segment.
        members = sorted((index[n] for n in group), key=lambda i: specs[i][0].endswith("bias"))
        size = sum(Slot(*specs[i][:3], 0).nbytes for i in members)
        if current and current_bytes + size > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        for i in members:
            name, dtype, shape = specs[i]
            slot = Slot(name, dtype, tuple(int(d) for d in shape), offset)
            current.append(len(slots))
            slots.append(slot)
            rows = (pad_rows or {}).get(name)
            span = slot.nbytes if not rows or not shape else -(-shape[0] // rows) * rows * (slot.nbytes // shape[0])
            offset += -(-span // ALIGN) * ALIGN
        current_bytes += size
    if current:
        buckets.append(current)
    return Layout(slots, buckets, max(offset, ALIGN))


def view(segment: torch.Tensor, slot: Slot) -> torch.Tensor:
    """``slot``'s tensor as a view of the segment's bytes (no copy)."""
    raw = segment[slot.offset:slot.offset + slot.nbytes]
    return raw.view(getattr(torch, slot.dtype)).view(slot.shape)


def bucket_views(segment: torch.Tensor, names: list[str], dtype_names: list[str], shapes: list[list[int]],
                 offsets: list[int]) -> list[tuple[str, torch.Tensor]]:
    """A bucket's (name, tensor) pairs as ``Layout.bucket_info`` describes them: views of the segment."""
    return [(n, view(segment, Slot(n, d, tuple(s), o))) for n, d, s, o in zip(names, dtype_names, shapes, offsets)]


def host_id() -> str:
    """This machine: its hostname and boot id (two containers on one host share the boot id and
    can share /dev/shm only if it is mounted into both; mapping then fails, naming the file)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def create_segment(nbytes: int, directory: Path = SHM_DIR) -> tuple[str, torch.Tensor]:
    """A new file of ``nbytes`` under ``directory``, its memory reserved now (a full /dev/shm fails
    here with a clear error, not later with a SIGBUS), mapped shared. Returns (path, uint8 tensor)."""
    path = directory / f"medr1-weights-{os.getpid()}-{secrets.token_hex(6)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as e:
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            raise OSError(f"weight_sync.backend=shm: cannot reserve {nbytes / 2**20:.0f} MiB in {directory} "
                          f"({e.strerror}; {free / 2**20:.0f} MiB free). Enlarge it (docker run --shm-size) "
                          "or use weight_sync.backend=object_store") from None
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return str(path), open_segment(str(path), nbytes)


def open_segment(path: str, nbytes: int) -> torch.Tensor:
    """Map an existing segment (shared: the writer's stores are what the reader sees)."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"weight_sync.backend=shm: no segment {path} on {host_id()}: the learner and "
                                "this engine do not share /dev/shm (another node or container)") from None
    if size < nbytes:
        raise ValueError(f"weight_sync.backend=shm: segment {path} holds {size} bytes, the layout needs {nbytes}")
    return torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)


def unlink(path: str | None) -> None:
    """Remove the segment's name; every mapping stays valid until its process drops it, and the
    memory is freed with the last one (so no file outlives a crash once all sides have mapped it)."""
    if path:
        Path(path).unlink(missing_ok=True)
