"""One SHA-256 for a set of weights, the same whether computed on the learner before a push
or from a saved ``model.safetensors``: names sorted, and for each its name, dtype, shape and
raw bytes. Trace rows carry it next to the weight version they were sampled with."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import load_file


def weights_digest(named_tensors: Iterable[tuple[str, Optional[torch.Tensor]]]) -> Optional[str]:
    """SHA-256 (hex) over ``(name, tensor)`` pairs; pairs whose tensor is None are skipped (ranks
    other than 0 hold none), and None comes back when no tensor was given."""
    tensors = {name: t for name, t in named_tensors if t is not None}  # consumed in full: may be collective
    if not tensors:
        return None
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def safetensors_digest(path: str) -> str:
    """The digest of the weights in a ``model.safetensors`` file (or every ``*.safetensors`` of a directory)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    merged = {}
    for f in files:
        merged.update(load_file(str(f)))
    return weights_digest(merged.items()) or ""
