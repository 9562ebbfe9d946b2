"""The learner as a Ray group of DeepSpeed ranks: ZeRO-2 and ZeRO-3 on 2 ranks take the
same step as 1 rank on the same total batch."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import TEST_MAX_PIXELS, tiny_dims
from tests.test_learner import make_cfgs, make_samples

pytestmark = pytest.mark.slow

LR = 1e-4
N_SAMPLES = 8  # 2 prompts x 4 completions


@pytest.fixture(scope="module")
def group_model_dir(tmp_path_factory):
    from pipelines.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-learner-group")
    build_tiny_model(out, tiny_dims(num_hidden_layers=2), max_pixels=TEST_MAX_PIXELS)
    return out


@pytest.fixture(scope="module")
def samples(group_model_dir):
    from learner.policy import load_processor

    return make_samples(load_processor(str(group_model_dir)), N_SAMPLES, seed=7, min_len=4, max_len=14)


def _group(model_dir, world: int, stage: int, **kw):
    from actors.learner import LearnerGroup

    lc, gc = make_cfgs(zero_stage=stage, lr=LR, beta=0.04, micro_batch_size=2, num_workers=world, **kw)
    lc.resources_per_worker.num_cpus = 1.0
    return LearnerGroup(str(model_dir), lc, gc, total_steps=10, samples_per_step=N_SAMPLES,
                        name_prefix=f"test-learner-z{stage}-w{world}")


@pytest.fixture(scope="module")
def one_rank_step(ray_session, group_model_dir, samples):
    g = _group(group_model_dir, 1, 2)
    try:
        before = g.gather_state_dict()
        metrics = g.train_step(samples, group_size=4)
        after = g.gather_state_dict()
    finally:
        g.shutdown()
    return before, metrics, after


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one_rank(ray_session, group_model_dir, samples, one_rank_step, stage):
    ref_before, ref_metrics, ref_after = one_rank_step
    g = _group(group_model_dir, 2, stage)
    try:
        before = g.gather_state_dict()
        assert set(before) == set(ref_before)
        assert _max_diff(before, ref_before) == 0.0
        metrics = g.train_step(samples, group_size=4)
        after = g.gather_state_dict()
        assert metrics["num_samples"] == N_SAMPLES
        assert metrics["num_tokens"] == ref_metrics["num_tokens"]
        assert metrics["loss"] == pytest.approx(ref_metrics["loss"], abs=1e-5)
        assert metrics["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=1e-4)
        # the update itself: lr-sized on most weights, equal across layouts up to float noise
        update = {k: after[k] - before[k] for k in after}
        ref_update = {k: ref_after[k] - ref_before[k] for k in ref_after}
        moved = sum(int((u.abs() > LR / 2).sum()) for u in ref_update.values())
        total = sum(u.numel() for u in ref_update.values())
        assert moved > total // 4
        diffs = torch.cat([(update[k] - ref_update[k]).abs().flatten() for k in update])
        # Adam's first step is ~lr * sign(grad): a grad within float noise of 0 may flip sign, so
        # allow a handful of such elements but require the rest to agree closely.
        assert float((diffs > LR * 1e-2).float().mean()) < 1e-4, diffs.max()
        assert float(diffs.max()) <= 2.5 * LR

        # a batch smaller than the world: rank 1 gets nothing and must not deadlock
        m1 = g.train_step(samples[:1])
        assert m1["num_samples"] == 1 and m1["optimizer_steps"] == 2
        if stage == 3:
            ids = g.greedy_generate(samples[0].prompt_text, samples[0].image, 4)
            assert len(ids) >= 1
    finally:
        g.shutdown()


def test_two_ranks_save_atomically_and_load(ray_session, group_model_dir, samples, tmp_path):
    """Both ranks write their ZeRO-2 shards into one staging directory (rank 0's name, broadcast), which
    appears under its name once sealed; a second save replaces it; the state loads back on both ranks."""
    from learner.checkpoint_manifest import verify

    g = _group(group_model_dir, 2, 2)
    try:
        g.train_step(samples, group_size=4)
        target = tmp_path / "checkpoints" / "step_1"
        g.call_all("save_checkpoint", str(target), {"step": 1})
        shards = sorted(p.name for p in (target / "deepspeed" / "state").glob("*optim_states.pt"))
        assert len(shards) == 2, shards  # one optimizer shard per rank, both inside the sealed checkpoint
        manifest = verify(target)
        assert all(f"deepspeed/state/{s}" in manifest["files"] for s in shards)
        saved = g.gather_state_dict()
        g.train_step(samples, group_size=4)
        g.call_all("save_checkpoint", str(target), {"step": 2})  # replaces step_1's files in place, atomically
        assert sorted(p.name for p in target.parent.iterdir()) == ["step_1"]
        assert g.call_all("load_checkpoint", str(target)) == [{"step": 2}, {"step": 2}]
        assert _max_diff(g.gather_state_dict(), saved) > 0  # the second save's weights, not the first's
    finally:
        g.shutdown()
