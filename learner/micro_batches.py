"""How one rank's samples become micro-batches, mini-batches and loss weights.

Micro-batches hold a fixed number of samples (``learner.micro_batch_size``) or, with
``learner.max_tokens_per_micro_batch`` > 0, as many as fit in that many padded tokens of the
forward: short completions then share one forward and long ones get their own, instead of the
longest row setting the cost of a fixed count. Groups (runs of samples with the same prompt) stay
whole when they fit, so the shared-prefix layout computes each prompt once.

Loss weights make gradient accumulation exact: each micro-batch's loss is weighted by its share of
its mini-batch's *global* batch (sequences, or completion tokens for ``token_mean``; counts summed
over ranks) times world size, and backpropagated with ``scale_wrt_gas=False``. DeepSpeed's rank
average then gives the gradient of the mini-batch's loss however the samples are split over ranks
and micro-batches. Every rank runs the same number of micro-batches (the most any rank has; the
short ones run a filler with weight 0), so ZeRO's collectives never wait on a missing rank.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch


def padded_tokens(items: Sequence[tuple[Hashable, int, int]], shared_prefix: bool) -> int:
    """Tokens a micro-batch of (prompt key, prompt length, completion length) items feeds the model.

    Per-sample rows: B x longest prompt + completion. Shared prefix: one row per distinct prompt
    (all but its last token) plus B rows of last prompt token + completion."""
    if not items:
        return 0
    if not shared_prefix:
        return len(items) * max(p + c for _, p, c in items)
    prompts = {k: p for k, p, _ in items}
    return len(prompts) * (max(prompts.values()) - 1) + len(items) * (1 + max(c for _, _, c in items))


def pack_by_tokens(items: Sequence[tuple[Hashable, int, int]], max_tokens: int,
                   shared_prefix: bool) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of ``items``, each within ``max_tokens`` padded tokens.

    A group (a run of one prompt key) that does not fit after what the micro-batch already holds
    starts the next one; a group too big for any micro-batch is split over several. An item that
    alone exceeds the budget gets a micro-batch of its own."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    runs, start = [], 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i][0] != items[start][0]:
            runs.append((start, i))
            start = i
    out: list[tuple[int, int]] = []
    lo = 0  # start of the open micro-batch
    for a, b in runs:
        if a > lo and padded_tokens(items[lo:b], shared_prefix) > max_tokens:
            out.append((lo, a))  # the whole group does not fit beside what is there: close it
            lo = a
        for i in range(a, b):
            if i > lo and padded_tokens(items[lo:i + 1], shared_prefix) > max_tokens:
                out.append((lo, i))
                lo = i
    if lo < len(items):
        out.append((lo, len(items)))
    return out


def count_minis(n: int, micro_batch_size: int, mini_batches: int,
                reduce_max: Callable[[torch.Tensor], torch.Tensor]) -> list[list[tuple[int, int]]] | None:
    """Micro-batches of ``micro_batch_size`` samples, mini-batch j being micro-batches
    ``bounds[j]:bounds[j+1]`` of the rank with the most (the same bounds on every rank)."""
    mb = max(1, int(micro_batch_size))
    chunks = [(i, min(i + mb, n)) for i in range(0, n, mb)]
    n_micro = int(reduce_max(torch.tensor([len(chunks)], dtype=torch.int64))[0])
    if n_micro == 0:
        return None
    n_mini = min(max(1, int(mini_batches)), n_micro)
    bounds = [round(j * n_micro / n_mini) for j in range(n_mini + 1)]
    return [chunks[bounds[j]:bounds[j + 1]] for j in range(n_mini)]


def mini_batch_ranges(keys: Sequence[Hashable], targets: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous ranges cut at ``targets`` (sample indices), each cut moved to the nearest group
    boundary (a change of prompt key) so a group stays in one mini-batch; a cut with no boundary
    between its neighbours stays where it is."""
    n = len(keys)
    cuts = [i for i in range(1, n) if keys[i] != keys[i - 1]]
    ends = [0]
    for target in targets:
        t = min(max(int(target), ends[-1]), n)
        options = [c for c in cuts if c > ends[-1]] if ends[-1] < t < n else []
        ends.append(min(options, key=lambda c: (abs(c - t), c)) if options else t)
    ends.append(n)
    return [(ends[j], ends[j + 1]) for j in range(len(ends) - 1)]


def token_minis(items: Sequence[tuple[Hashable, int, int]], max_tokens: int, shared_prefix: bool,
                mini_batches: int, micro_batch_size: int, reduce_max: Callable[[torch.Tensor], torch.Tensor],
                ) -> list[list[tuple[int, int]]] | None:
    """The mini-batches a fixed ``micro_batch_size`` would give (cuts moved to group boundaries),
    each then packed into micro-batches of at most ``max_tokens``: packing changes neither the
    number of optimizer steps nor, when groups align with the fixed cuts, their samples."""
    mb = max(1, int(micro_batch_size))
    n_max = int(reduce_max(torch.tensor([len(items)], dtype=torch.int64))[0])
    if n_max == 0:
        return None
    n_micro = -(-n_max // mb)
    n_mini = min(max(1, int(mini_batches)), n_micro)
    targets = [min(len(items), round(j * n_micro / n_mini) * mb) for j in range(1, n_mini)]
    out = []
    for a, b in mini_batch_ranges([k for k, _, _ in items], targets):
        out.append([(a + x, a + y) for x, y in pack_by_tokens(items[a:b], max_tokens, shared_prefix)] if b > a else [])
    return out


def weighted_micro_batches(minis: list[list[list]], loss_agg: str, world_size: int,
                           reduce_max: Callable[[torch.Tensor], torch.Tensor],
                           reduce_sum: Callable[[torch.Tensor], torch.Tensor], filler: list,
                           trained_tokens: Callable[[object], int] = lambda s: len(s.completion_ids),
                           ) -> tuple[list[tuple[list, float]], list[int]] | None:
    """(micro-batches as (samples, loss weight), mini-batch bounds) or None if no rank has a sample.

    ``minis[j]``: this rank's micro-batches (lists of samples) of mini-batch j; every rank passes the
    same number of mini-batches. Mini-batch j runs micro-batches ``bounds[j]:bounds[j+1]`` on every
    rank (the most any rank has; fillers of weight 0 make up the rest). ``reduce_*`` reduce a tensor
    over ranks (identity on one rank). ``trained_tokens``: the tokens of a sample that ``token_mean``
    counts (the loss masks sampled vision tokens out)."""
    n_mini = len(minis)
    k = reduce_max(torch.tensor([len(m) for m in minis], dtype=torch.int64)).tolist() if n_mini else []
    if sum(k) == 0:
        return None
    bounds = [0]
    for kj in k:
        bounds.append(bounds[-1] + int(kj))

    def tokens(c):
        return sum(trained_tokens(s) for s in c)

    local = torch.zeros(2 * n_mini, dtype=torch.float64)  # [seqs_0, tokens_0, seqs_1, ...]
    for j, m in enumerate(minis):
        for c in m:
            local[2 * j] += len(c)
            local[2 * j + 1] += tokens(c)
    counts = reduce_sum(local)
    micro = []
    for j, m in enumerate(minis):
        seqs, toks = float(counts[2 * j]), float(counts[2 * j + 1])
        for i in range(int(k[j])):
            if i < len(m):
                share = tokens(m[i]) / max(toks, 1.0) if loss_agg == "token_mean" else len(m[i]) / max(seqs, 1.0)
                micro.append((m[i], share * world_size))
            else:
                micro.append((filler, 0.0))
    return micro, bounds
