"""The caption pool and the perception pretraining of the tiny base (a few steps on a small model)."""
from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import TEST_MAX_PIXELS, tiny_dims


def test_caption_pool_is_deterministic_and_names_each_drawn_fact():
    from pipelines.data.captions import build_caption_pool
    from rewards.faithfulness import names_option

    a, b, c = (build_caption_pool(seed=s, per_cell=2) for s in (5, 5, 6))
    assert len(a) == 8 * 5 * 2
    assert [(x.caption, x.image) for x in a] == [(x.caption, x.image) for x in b]
    assert [x.image for x in a] != [x.image for x in c]
    for item in a:
        assert names_option(item.caption, item.label), (item.caption, item.label)
    assert len({x.caption for x in build_caption_pool(seed=5, per_cell=8)}) > 200  # varied free text


def test_caption_pool_shares_no_image_with_the_benchmark():
    from pipelines.data.captions import build_caption_pool
    from pipelines.data.synthetic import build_synthetic

    bench = build_synthetic(seed=0, per_cell=4)
    seen = {hashlib.sha256(r.image).hexdigest() for r in bench["train"] + bench["test"]}
    pool = build_caption_pool(seed=0, per_cell=4)  # even the benchmark's seed draws from other streams
    assert not seen & {hashlib.sha256(x.image).hexdigest() for x in pool}


def test_pretraining_lowers_caption_loss_and_is_deterministic(tmp_path):
    import torch
    from omegaconf import OmegaConf

    from pipelines.config import CaptionPretrainConfig
    from pipelines.data.captions import build_caption_pool
    from pipelines.models.base_build import build_base
    from pipelines.models.pretrain import _load, caption_loss, describe

    tiny = tiny_dims(num_hidden_layers=1, vision_depth=1)
    pre = OmegaConf.structured(CaptionPretrainConfig)
    pre.enabled, pre.steps, pre.per_cell, pre.batch_size, pre.lr = True, 12, 1, 8, 3e-3
    probe = build_caption_pool(seed=77, per_cell=1)[:16]
    losses, digests = [], []
    for name in ("a", "b"):
        out = build_base(tmp_path / name, tiny, pre, min_pixels=3136, max_pixels=TEST_MAX_PIXELS, progress=False,
                         check_per_cell=0)
        digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
        assert json.loads((out / "medr1_pretrain.json").read_text())["steps"] == 12
    off = OmegaConf.structured(CaptionPretrainConfig)
    rnd = build_base(tmp_path / "random", tiny, off, min_pixels=3136, max_pixels=TEST_MAX_PIXELS)
    assert not (rnd / "medr1_pretrain.json").exists()
    for d in (rnd, tmp_path / "a"):
        proc, model = _load(d)
        with torch.no_grad():
            losses.append(float(caption_loss(model.eval(), proc, probe)))
    assert digests[0] == digests[1]
    assert losses[1] < losses[0] - 0.5, losses
    texts = describe(tmp_path / "a", [p.image for p in probe[:3]], max_new_tokens=8, progress=False)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_a_cached_base_with_other_pretraining_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from pipelines.config import CaptionPretrainConfig
    from pipelines.errors import UserError
    from pipelines.models.base_build import build_base, check_cached_base

    off = OmegaConf.structured(CaptionPretrainConfig)
    build_base(tmp_path, tiny_dims(num_hidden_layers=1, vision_depth=1), off, min_pixels=3136,
               max_pixels=TEST_MAX_PIXELS)
    check_cached_base(tmp_path, off)  # nothing asked for: accepted
    on = OmegaConf.structured(CaptionPretrainConfig)
    on.enabled = True
    with pytest.raises(UserError, match="without caption pretraining"):
        check_cached_base(tmp_path, on)
