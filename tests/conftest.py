"""Shared, expensive fixtures: the tiny model is built once per session and the
vLLM engines are started once (engine start-up dominates on 2 cores)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from learner.image_codec import encode_png

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TEST_MAX_PIXELS = 112 * 112


def tiny_dims(**overrides):
    from omegaconf import OmegaConf

    from pipelines.config import TinyModelConfig

    cfg = OmegaConf.structured(TinyModelConfig)
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def noise_png(seed: int, size: tuple[int, int] = (112, 112)) -> bytes:
    """A random RGB image of ``size`` (width, height) as PNG bytes; the same bytes for the same seed."""
    import numpy as np
    from PIL import Image

    pixels = np.random.RandomState(seed).rand(size[1], size[0], 3) * 255
    return encode_png(Image.fromarray(pixels.astype("uint8")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from pipelines.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-qwen2vl")
    build_tiny_model(out, tiny_dims(), max_pixels=TEST_MAX_PIXELS)
    return out


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield ray
    ray.shutdown()


# The settings of the session's smoke run, and of the runs that resume it (tests/test_resume.py).
SMOKE_RUN_OVERRIDES = ("logging.progress=false", "logging.tensorboard=false", "trainer.save_every=1")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, ray_session):
    """`medr1 train configs/smoke.yaml` from nothing, once per session: the run builds the tiny model,
    the benchmark and the format warm-start, then trains 2 steps with a checkpoint after each.
    tests/test_train_smoke.py checks its outputs, tests/test_resume.py resumes it, and ``smoke_start``
    starts other runs from what it built. Each smoke run costs minutes on 2 cores (the actors' start-up
    and the warm-start are most of it), so the slow tests share this one where they can."""
    from types import SimpleNamespace

    from pipelines.config import load_config
    from pipelines.training.grpo_loop import run_training

    root = tmp_path_factory.mktemp("smoke")
    start = [f"model.path={root / 'model'}", f"data.prepared_dir={root / 'data'}",
             f"sft.warmstart_dir={root / 'warm'}"]
    cfg = load_config("smoke.yaml", [f"trainer.output_dir={root / 'full'}", *start, *SMOKE_RUN_OVERRIDES])
    summary = run_training(cfg)
    return SimpleNamespace(root=root, out=root / "full", cfg=cfg, summary=summary, start=start)


@pytest.fixture(scope="session")
def smoke_start(smoke_run) -> list[str]:
    """Overrides that start a smoke run from the session smoke run's model, benchmark and format warm-start."""
    return list(smoke_run.start)


@pytest.fixture(scope="session")
def rollout_worker(ray_session, tiny_model_dir):
    """One rollout actor on the tiny model, shared by every test that needs vLLM."""
    from actors.rollout import create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env

    engine_kwargs = dict(model_path=str(tiny_model_dir), max_model_len=1024, kv_cache_memory_bytes=128 << 20,
                         max_pixels=TEST_MAX_PIXELS, seed=0)
    env = {**cpu_engine_env(f"0-{(os.cpu_count() or 2) - 1}"), "PYTHONPATH": str(REPO)}
    [worker] = create_rollout_workers(1, engine_kwargs, num_cpus=1, env_vars=[env], name_prefix="test-rollout")
    wait_ready([worker])
    return worker
