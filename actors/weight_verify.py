"""Did a push land? The engines' weights checked against the learner's, per tensor.

vLLM stores weights differently from the checkpoint: renamed (its name mapper),
fused (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``) and, with tensor
parallelism, sharded over workers. A hash of the bytes cannot survive that; the sum
and the sum of squares of the values (float64) do, since fusing and sharding only
move values around. The learner sends its tensors already cast to the engines'
dtype, so both sides sum the same numbers and agree to float64 rounding. A
mismatch names the vLLM parameter and the checkpoint tensors that feed it.
"""
from __future__ import annotations

import math

import torch

RTOL = 1e-6


def tensor_stats(t: torch.Tensor) -> list[float]:
    x = t.detach().to(torch.float64)
    return [float(x.sum()), float((x * x).sum()), float(x.numel())]


def stale_cpu_kernels(model: torch.nn.Module, rtol: float = 1e-3) -> list[str]:
    """Modules whose CPU kernel disagrees with their own weight parameter. vLLM's CPU layers multiply
    through ``cpu_linear``, which may hold a packed copy of the weight; where the layer also keeps the
    weight (an LM head, an embedding), a probe through both must agree, or a push updated the parameter
    and not the copy the kernel reads. Layers that dropped their weight are checked by the stats instead."""
    bad = []
    gen = torch.Generator().manual_seed(0)
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if getattr(m, "cpu_linear", None) is None or not isinstance(w, torch.Tensor) or w.ndim != 2 or not w.numel():
            continue
        x = torch.randn(2, w.shape[1], generator=gen).to(w.dtype)
        with torch.no_grad():
            want = torch.nn.functional.linear(x, w).float()
            got = m.cpu_linear(x, w, None).float()
        if (got - want).abs().max() > rtol * (want.abs().max() + 1e-6):
            bad.append(name)
    return bad


def expected_stats(learner: dict[str, list[float]], mapping: dict[str, str | None]
                   ) -> tuple[dict[str, list[float]], dict[str, list[str]], list[str]]:
    """Sum the learner's per-checkpoint-tensor stats into the vLLM parameters they load into.

    Returns (stats per vLLM parameter, its checkpoint tensors, checkpoint names with no parameter)."""
    out: dict[str, list[float]] = {}
    sources: dict[str, list[str]] = {}
    unmapped = []
    for ck, s in learner.items():
        target = mapping.get(ck)
        if target is None:
            unmapped.append(ck)
            continue
        acc = out.setdefault(target, [0.0, 0.0, 0.0])
        for k in range(3):
            acc[k] += s[k]
        sources.setdefault(target, []).append(ck)
    return out, sources, unmapped


def engine_stats(per_worker: list[dict], expected: dict[str, list[float]], sources: dict[str, list[str]]
                 ) -> dict[str, list[float]]:
    """One engine's stats per parameter from its workers' reports (``params`` and ``received``).

    A parameter sharded over the tensor-parallel workers is summed over them; a replicated one
    is taken from the first worker. A parameter the CPU kernels emptied (its weight repacked
    into an opaque buffer) is judged by what the push delivered for it instead."""
    out = {}
    first = per_worker[0]
    for name, row in first["params"].items():
        rows = [w["params"][name] for w in per_worker if name in w["params"]]
        want = expected.get(name, [0.0, 0.0, row[2]])[2]
        if row[2] == 0 and want > 0:
            got = [first["received"].get(ck) for ck in sources.get(name, [])]
            out[name] = [sum(g[k] for g in got) for k in range(3)] if got and None not in got else row
        elif len(rows) > 1 and row[2] < want:  # a shard: the parts add up
            out[name] = [sum(r[k] for r in rows) for k in range(3)]
        else:
            out[name] = list(row[:3])
    return out


def mismatches(expected: dict[str, list[float]], actual: dict[str, list[float]],
               sources: dict[str, list[str]]) -> list[str]:
    """Human-readable differences; empty when every expected parameter matches."""
    bad = []
    for name, (s, sq, n) in sorted(expected.items()):
        got = actual.get(name)
        if got is None:
            bad.append(f"{name}: not in the engine")
            continue
        gs, gsq, gn = got[:3]
        scale = math.sqrt(max(sq, gsq, 1e-30) * max(n, 1.0))
        # gn > n: vLLM pads some parameters (the vocabulary to a multiple of 64) with zeros.
        if gn < n or abs(gsq - sq) > RTOL * max(sq, gsq, 1e-30) or abs(gs - s) > RTOL * scale:
            bad.append(f"{name} (from {', '.join(sources.get(name, []))}): engine sum {gs:.6g} sumsq {gsq:.6g} "
                       f"n {gn:.0f}, learner sum {s:.6g} sumsq {sq:.6g} n {n:.0f}")
    return bad
