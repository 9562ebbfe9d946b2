"""Aliasing engine parameters to the shm segment (actors/shm_alias.py), on a torch module whose
loader does what vLLM's do: narrow a fused parameter and copy each part in, cast, or transpose.
The real engines run it in the slow push tests (tests/test_weight_push.py, shm-plain)."""
from __future__ import annotations

import torch

from actors import shm_segment
from actors.shm_alias import CopyRecorder, apply_aliases, plan_aliases, still_aliased


class Fused(torch.nn.Module):
    """qkv fused from three checkpoint tensors; a norm loaded as is; a head loaded transposed; a
    half-precision copy of another tensor (a cast)."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.zeros(12, 16), requires_grad=False)
        self.norm = torch.nn.Parameter(torch.zeros(16), requires_grad=False)
        self.head = torch.nn.Parameter(torch.zeros(16, 3), requires_grad=False)
        self.f16 = torch.nn.Parameter(torch.zeros(4, dtype=torch.float16), requires_grad=False)

    def load_weights(self, weights):
        rows = {"q": (0, 4), "k": (4, 4), "v": (8, 4)}  # 64-byte multiples: no padding between parts
        for name, w in weights:
            if name in rows:
                self.qkv.data.narrow(0, *rows[name]).copy_(w)
            elif name == "norm":
                self.norm.data.copy_(w)
            elif name == "head":
                self.head.data.copy_(w.t())
            elif name == "f16":
                self.f16.data.copy_(w)


def _segment(tensors: dict[str, torch.Tensor], order: list[str]):
    specs = [(n, "float32", tuple(tensors[n].shape)) for n in order]
    layout = shm_segment.plan_layout(specs, [order], 1 << 20)
    seg = torch.zeros(layout.nbytes, dtype=torch.uint8)
    for s in layout.slots:
        shm_segment.view(seg, s).copy_(tensors[s.name])
    return seg, layout, {s.name: (s.offset, s.nbytes) for s in layout.slots}


def _load(model, seg, layout, recorder=None, skip=frozenset()):
    pairs = [(s.name, shm_segment.view(seg, s)) for s in layout.slots if s.name not in skip]
    if recorder is None:
        model.load_weights(pairs)
    else:
        with recorder:
            model.load_weights(pairs)


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"q": torch.randn(4, 16, generator=g), "k": torch.randn(4, 16, generator=g),
            "v": torch.randn(4, 16, generator=g), "norm": torch.randn(16, generator=g),
            "head": torch.randn(3, 16, generator=g), "f16": torch.randn(4, generator=g)}


def _probed(order: list[str]):
    """A Fused model loaded once from a segment laid out in ``order``, under the copy recorder, and the
    plan that load gives: (model, tensors, segment, layout, plan)."""
    model, t = Fused(), _tensors(0)
    seg, layout, slots = _segment(t, order)
    rec = CopyRecorder()
    _load(model, seg, layout, rec)
    return model, t, seg, layout, plan_aliases(dict(model.named_parameters()), rec.copies, seg, slots)


def test_parameters_that_are_one_stretch_of_the_segment_become_views_and_later_writes_reach_them():
    model, _, seg, layout, plan = _probed(["q", "k", "v", "norm", "head", "f16"])
    plan = apply_aliases(model, plan, seg)
    assert set(plan.params) == {"qkv", "norm"}  # head was transposed, half was cast: they keep their memory
    assert plan.names == {"q", "k", "v", "norm"}
    assert still_aliased(model, plan, seg)

    new = _tensors(1)  # the learner's next write, straight into the segment; only the rest is loaded
    for s in layout.slots:
        shm_segment.view(seg, s).copy_(new[s.name])
    _load(model, seg, layout, skip=plan.names)
    assert torch.equal(model.qkv, torch.cat([new["q"], new["k"], new["v"]]))
    assert torch.equal(model.norm, new["norm"])
    assert torch.equal(model.head, new["head"].t())
    assert torch.equal(model.f16, new["f16"].half())


def test_parts_out_of_the_fused_order_or_a_changed_parameter_are_not_aliased():
    model, t, seg, _, plan = _probed(["k", "q", "v", "norm", "head", "f16"])  # k before q in the segment
    assert set(plan.params) == {"norm"} and plan.names == {"norm"}

    model.norm.data.mul_(2)  # a loader that changed the weight after copying it: the bytes differ
    applied = apply_aliases(model, plan, seg)
    assert applied.params == {} and applied.names == frozenset()
    assert torch.equal(model.norm, 2 * t["norm"])


def test_a_parameter_given_fresh_memory_is_no_longer_aliased():
    model, _, seg, _, plan = _probed(["q", "k", "v", "norm", "head", "f16"])
    plan = apply_aliases(model, plan, seg)
    model.norm.data = model.norm.data.clone()  # e.g. a wake from sleep reallocating the weights
    assert not still_aliased(model, plan, seg)


def test_layout_puts_a_layers_weights_before_its_biases():
    specs = [(n, "float32", (4,)) for n in ("l0.q.weight", "l0.q.bias", "l0.k.weight", "l0.k.bias", "l0.v.weight")]
    layout = shm_segment.plan_layout(specs, [[s[0] for s in specs]], 1 << 20)
    assert [s.name for s in layout.slots] == ["l0.q.weight", "l0.k.weight", "l0.v.weight", "l0.q.bias", "l0.k.bias"]


def test_a_padded_parameter_aliases_only_where_the_segment_leaves_its_padding_unused():
    class Vocab(torch.nn.Module):  # vLLM's embedding: rows padded to a multiple, the padding zeroed
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Parameter(torch.ones(8, 16), requires_grad=False)

        def load_weights(self, weights):
            for _, w in weights:
                self.embed.data[: w.shape[0]].copy_(w)
                self.embed.data[w.shape[0]:].fill_(0)

    t = {"embed": torch.randn(5, 16), "norm": torch.randn(16)}
    for pad, aliased in ((8, {"embed"}), (None, set())):
        specs = [("embed", "float32", (5, 16)), ("norm", "float32", (16,))]
        layout = shm_segment.plan_layout(specs, [["embed"], ["norm"]], 1 << 20, {"embed": pad} if pad else None)
        seg = torch.zeros(layout.nbytes, dtype=torch.uint8)
        for s in layout.slots:
            shm_segment.view(seg, s).copy_(t[s.name])
        model, rec = Vocab(), CopyRecorder()
        with rec:
            model.load_weights([(s.name, shm_segment.view(seg, s)) for s in layout.slots if s.name == "embed"])
        slots = {s.name: (s.offset, s.nbytes) for s in layout.slots}
        plan = apply_aliases(model, plan_aliases(dict(model.named_parameters()), rec.copies, seg, slots), seg)
        assert set(plan.params) == aliased, pad  # without padding room the tail would read "norm"
        assert torch.equal(model.embed[:5], t["embed"]) and not model.embed[5:].any()
