"""Engine parameters that are views of the shared-memory segment, so a push is the learner's one write.

With ``weight_sync.backend=shm`` and plain CPU weights (``actors/cpu_weights.py``) a
push is two copies of every byte: the learner's into the segment, then vLLM's
``load_weights`` from the segment into the engine's parameters. When a parameter's
bytes are, in order, one stretch of the segment (q/k/v laid out one after another
in the fused ``qkv_proj``'s order, an embedding, a norm), the engine can compute
from that stretch directly: the parameter becomes a view of the mapping, later
pushes skip the load for the tensors that feed it, and every engine on the node
shares one copy of those weights.

Which parameters qualify is not guessed from model code: the first push after the
segment is mapped runs vLLM's own loaders under ``CopyRecorder``, which notes every
``copy_`` (destination, source, bytes). A parameter is aliased when those copies
tile it exactly from contiguous segment tensors of its dtype at one constant offset,
and its bytes equal the segment's after the load; anything else (a cast, a
transpose, a temporary, another device) stays on the load path. Pure torch, no vLLM.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ALIAS_ENV = "MEDR1_SHM_ALIAS"  # "0" in a worker's environment: never alias (bench/bench_push.py measures both)


@dataclass(frozen=True)
class Copy:
    dst: int  # address of the first destination byte
    src: int  # address of the first source byte
    nbytes: int
    plain: bool  # a byte-for-byte copy: same dtype and numel, both contiguous, both on the CPU


class CopyRecorder(TorchDispatchMode):
    """Every ``copy_`` run while active, as ``Copy`` records (the load path's other ops run untouched)."""

    def __init__(self):
        super().__init__()
        self.copies: list[Copy] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.copy_.default:
            dst, src = args[0], args[1]
            if isinstance(src, torch.Tensor):
                plain = (dst.dtype == src.dtype and dst.numel() == src.numel() and dst.is_contiguous()
                         and src.is_contiguous() and dst.device.type == src.device.type == "cpu")
                self.copies.append(Copy(dst.data_ptr(), src.data_ptr(), dst.numel() * dst.element_size(), plain))
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class AliasPlan:
    params: dict[str, int]  # parameter name -> its byte offset in the segment
    names: frozenset[str]  # segment tensors whose every byte lands in aliased parameters: no load needed


def plan_aliases(params: dict[str, torch.Tensor], copies: list[Copy], segment: torch.Tensor,
                 slots: dict[str, tuple[int, int]]) -> AliasPlan:
    """Which of ``params`` are exactly a stretch of ``segment``, given the ``copies`` a load made.

    ``slots``: segment tensor name -> (byte offset, nbytes). A parameter needs at least one copy, all
    plain, from inside the segment, at one source-minus-destination offset, tiling its bytes from the
    start without a gap or overlap; bytes after the last copy (vLLM's zeroed vocabulary padding) must
    fall in segment bytes no tensor uses (``plan_layout``'s ``pad_rows``). A segment tensor is skipped by
    later loads only if all its bytes were copied, once, into aliased parameters."""
    base, size = segment.data_ptr(), segment.numel()
    inside = [c for c in copies if base <= c.src and c.src + c.nbytes <= base + size]
    aliased: dict[str, int] = {}
    for name, p in params.items():
        lo, n = p.data_ptr(), p.numel() * p.element_size()
        if n == 0 or p.device.type != "cpu" or not p.is_contiguous():
            continue
        into = sorted((c for c in copies if lo <= c.dst < lo + n), key=lambda c: c.dst)
        if not into or any(c not in inside or not c.plain for c in into):
            continue
        deltas = {c.src - c.dst for c in into}
        at, tiled = lo, True
        for c in into:
            tiled &= c.dst == at
            at = c.dst + c.nbytes
        offset = lo + next(iter(deltas)) - base
        tail = (offset + at - lo, offset + n)  # in the segment: what the parameter holds after its last copy
        unused = tail[0] == tail[1] or (tail[1] <= size and not any(
            o < tail[1] and tail[0] < o + b for o, b in slots.values()))
        if len(deltas) == 1 and tiled and unused and offset % p.element_size() == 0:
            aliased[name] = offset
    spans = [(aliased_lo, aliased_lo + params[k].numel() * params[k].element_size())
             for k, aliased_lo in ((k, params[k].data_ptr()) for k in aliased)]
    names = set()
    for tensor, (offset, nbytes) in slots.items():
        lo = base + offset
        out = [c for c in inside if lo <= c.src < lo + nbytes]
        if out and sum(c.nbytes for c in out) == nbytes and \
                all(any(a <= c.dst and c.dst + c.nbytes <= b for a, b in spans) for c in out):
            names.add(tensor)
    return AliasPlan(aliased, frozenset(names))


def view_of(segment: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """The segment's bytes at ``offset`` as a tensor shaped like ``like`` (no copy)."""
    n = like.numel() * like.element_size()
    return segment[offset:offset + n].view(like.dtype).view(like.shape)


def apply_aliases(model: torch.nn.Module, plan: AliasPlan, segment: torch.Tensor) -> AliasPlan:
    """Point each planned parameter at its stretch of the segment, where the bytes there equal the
    parameter's (a loader that changed a weight after copying it keeps its own memory). Returns the
    plan that was applied: a refused parameter takes the segment tensors feeding it off the skip list."""
    params = dict(model.named_parameters())
    done, refused = {}, []
    with torch.no_grad():
        for name, offset in plan.params.items():
            p = params[name]
            view = view_of(segment, offset, p)
            if torch.equal(view, p.data):
                p.data = view
                done[name] = offset
            else:
                refused.append(name)
    if refused:  # conservative: nothing is skipped then; the next probe plans again
        return AliasPlan(done, frozenset())
    return AliasPlan(done, plan.names)


def still_aliased(model: torch.nn.Module, plan: AliasPlan, segment: torch.Tensor) -> bool:
    """Whether every aliased parameter still reads the segment (a wake from sleep or a reload may
    have given it fresh memory, and then the skipped tensors must be loaded again)."""
    params = dict(model.named_parameters())
    base = segment.data_ptr()
    return all(name in params and params[name].data_ptr() == base + off for name, off in plan.params.items())
