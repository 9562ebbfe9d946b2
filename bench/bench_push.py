"""Weight push time per backend on this machine, measured side by side in one run.

One DeepSpeed learner rank and, per backend, a vLLM CPU engine built for it
(object_store: Ray's object store + bounded messages; gloo: the broadcast protocol of
the GPU path). Each push is timed end to end (gather/broadcast, load, version) and set
beside a plain in-memory copy of the same bytes. Ratios, not absolute times.

    python bench/bench_push.py [--size tiny|medium] [--pushes 5] [--bucket-mb 64]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEDIUM = dict(hidden_size=768, num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
              num_hidden_layers=8, vision_embed_dim=256, vision_depth=4, vision_num_heads=4)


def memcpy_seconds(nbytes: int, repeats: int = 5) -> float:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "medium"], default="tiny")
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--bucket-mb", type=int, default=64)
    ap.add_argument("--backends", nargs="*", default=["object_store", "gloo"])
    args = ap.parse_args()

    import ray
    from omegaconf import OmegaConf

    from actors.learner import LearnerGroup
    from actors.rollout import create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env
    from actors.weight_sync import make_weight_sync
    from cluster.ray_utils import kill_quietly
    from pipelines.config import MedR1Config
    from pipelines.models.tiny import build_tiny_model

    cfg = OmegaConf.structured(MedR1Config)
    for k, v in (MEDIUM if args.size == "medium" else {}).items():
        setattr(cfg.model.tiny, k, v)
    model = Path(tempfile.mkdtemp(prefix="bench-push-")) / "model"
    build_tiny_model(model, cfg.model.tiny, max_pixels=112 * 112)
    ray.init(num_cpus=max(4, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    cores = f"0-{(os.cpu_count() or 2) - 1}"
    group = LearnerGroup(str(model), cfg.learner, cfg.grpo, total_steps=1, samples_per_step=1, num_workers=1,
                         env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    rows = []
    try:
        for backend in args.backends:
            kwargs = dict(model_path=str(model), max_model_len=1024, kv_cache_memory_bytes=64 << 20,
                          max_pixels=112 * 112, weight_sync=backend)
            workers = create_rollout_workers(1, kwargs, num_cpus=1, env_vars=[cpu_engine_env(cores)],
                                             name_prefix=f"bench-{backend}")
            wait_ready(workers)
            sync = make_weight_sync(backend, bucket_size_mb=args.bucket_mb, verify="off", dtype="float32")
            sync.push(group, workers, 1)  # forms the group, warms caches
            times, nbytes = [], 0
            for v in range(2, 2 + args.pushes):
                out = sync.push(group, workers, v)
                times.append(out["push_seconds"])
                nbytes = out["push_bytes"]
            kill_quietly(workers)
            rows.append({"backend": backend, "push_s": statistics.median(times), "bytes": nbytes})
        base = memcpy_seconds(rows[0]["bytes"])
        print(f"\nweight push, {args.size} model ({rows[0]['bytes'] / 1e6:.1f} MB), median of {args.pushes}, "
              f"bucket {args.bucket_mb} MiB")
        print(f"{'backend':<14}{'push s':>9}{'MB/s':>10}{'x object_store':>16}{'/ memcpy speed':>16}")
        ref = rows[0]["push_s"]
        for r in rows:
            r.update(mb_s=r["bytes"] / r["push_s"] / 1e6, vs_first=ref / r["push_s"], vs_memcpy=base / r["push_s"])
            print(f"{r['backend']:<14}{r['push_s']:>9.3f}{r['mb_s']:>10.0f}{r['vs_first']:>15.2f}x"
                  f"{r['vs_memcpy']:>16.4f}")
        print(f"{'memcpy':<14}{base:>9.4f}{rows[0]['bytes'] / base / 1e6:>10.0f}")
        out_dir = REPO / "outputs" / "bench"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"push_{args.size}.json").write_text(json.dumps({"memcpy_s": base, "rows": rows}, indent=2))
    finally:
        group.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
