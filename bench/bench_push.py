"""Weight push time per backend on this machine, measured side by side in one run.

One DeepSpeed learner rank and, per backend, a vLLM CPU engine built for it
(object_store: Ray's object store + bounded messages; gloo: the broadcast protocol of
the GPU path; shm: a /dev/shm segment both sides map). Each push is timed end to end
(write/gather/broadcast, vLLM's load path, version) and set beside a plain in-memory
copy of the same bytes on the same machine: push bytes/s / memcpy bytes/s. Ratios, not
absolute times. Pushes are not verified (weight_sync.verify=off, as in a run after its
first push); the bench checks once, after its last push, that the engine's weights equal
the learner's.

Each engine is ``backend:cpu_linear`` (rollout.cpu_linear: ``plain`` weights a push copies
into, or vLLM's oneDNN ``packed`` layout that each push rebuilds through the layer-wise
reload; ``shm:plain:copy`` is shm with the engine's parameters kept apart from the segment,
``shm:plain`` aliases them to it, actors/shm_alias.py), and each also samples the think shape (8 image prompts x G=4, 64 tokens) before
its pushes, so a faster push is never bought with slower sampling unseen.

    python bench/bench_push.py [--sizes tiny medium] [--pushes 5] [--bucket-mb 64]
                               [--engines object_store:plain gloo:plain shm:plain shm:packed]
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
sys.path.insert(0, str(REPO / "bench"))

# bench/bench_rollout.py's medium (~60M) size.
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


def bench_size(size: str, args) -> dict:
    from omegaconf import OmegaConf

    from actors.learner import LearnerGroup
    from pipelines.config import MedR1Config
    from pipelines.models.tiny import build_tiny_model

    cfg = OmegaConf.structured(MedR1Config)
    for k, v in (MEDIUM if size == "medium" else {}).items():
        setattr(cfg.model.tiny, k, v)
    model = Path(tempfile.mkdtemp(prefix="bench-push-")) / "model"
    build_tiny_model(model, cfg.model.tiny, max_pixels=112 * 112)
    cores = f"0-{(os.cpu_count() or 2) - 1}"
    group = LearnerGroup(str(model), cfg.learner, cfg.grpo, total_steps=1, samples_per_step=1, num_workers=1,
                         env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    rows = []
    try:
        for spec in args.engines:
            backend, _, rest = spec.partition(":")
            cpu_linear, _, mode = rest.partition(":")
            try:
                rows.append(_bench_backend(backend, cpu_linear or "plain", mode, group, model, cores, args))
            except Exception as e:  # noqa: BLE001  (one backend failing must not hide the others' figures)
                rows.append({"backend": spec, "error": f"{type(e).__name__}: {e}"})
    finally:
        group.shutdown()
    ok = [r for r in rows if "error" not in r]
    base = memcpy_seconds(ok[0]["bytes"]) if ok else float("nan")
    ref = next((r["push_s"] for r in ok if r["backend"].startswith("object_store")), ok[0]["push_s"] if ok else 1.0)
    for r in ok:
        r.update(mb_s=r["bytes"] / r["push_s"] / 1e6, vs_object_store=ref / r["push_s"],
                 push_over_memcpy=base / r["push_s"])
    nbytes = ok[0]["bytes"] if ok else 0
    return {"size": size, "bytes": nbytes, "memcpy_s": base, "memcpy_mb_s": nbytes / base / 1e6, "rows": rows}


def _prompts(model: Path) -> list[dict]:
    from transformers import AutoProcessor

    from bench_rollout import _images
    from pipelines.prompts import chat_prompt

    text = chat_prompt(AutoProcessor.from_pretrained(model),
                       {"question": "What imaging modality is shown?", "options": ["CT", "MRI", "X-ray", "OCT"]})
    return [{"id": str(i), "prompt": text, "image": img} for i, img in enumerate(_images(8))]


def _sample_tok_s(worker, prompts: list[dict]) -> float:
    """Sampling speed of the think shape (8 prompts x G=4, <= 64 tokens), best of two."""
    import ray

    best = 0.0
    for seed in (1, 2):
        out = ray.get(worker.generate.remote(prompts, {"n": 4, "temperature": 1.0, "max_tokens": 64, "seed": seed}))
        best = max(best, out["tokens"] / out["seconds"])
    return best


def _bench_backend(backend: str, cpu_linear: str, mode: str, group, model: Path, cores: str, args) -> dict:
    import ray

    from actors.rollout import create_rollout_workers, wait_ready
    from actors.shm_alias import ALIAS_ENV
    from actors.vllm_engine import cpu_engine_env
    from actors.weight_sync import make_weight_sync
    from cluster.ray_utils import kill_quietly

    kwargs = dict(model_path=str(model), max_model_len=1024, kv_cache_memory_bytes=64 << 20,
                  max_pixels=112 * 112, weight_sync=backend, cpu_linear=cpu_linear)
    env = {**cpu_engine_env(cores), **({ALIAS_ENV: "0"} if mode == "copy" else {})}
    workers = create_rollout_workers(1, kwargs, num_cpus=1, env_vars=[env], name_prefix=f"bench-{backend}-{cpu_linear}-{mode}")
    try:
        wait_ready(workers)
        prompts = _prompts(model)
        ray.get(workers[0].generate.remote(prompts[:1], {"n": 1, "max_tokens": 4}))  # warm-up
        tok_s = _sample_tok_s(workers[0], prompts)
        sync = make_weight_sync(backend, bucket_size_mb=args.bucket_mb, verify="off", dtype="float32")
        sync.push(group, workers, 1)  # forms the group, warms caches
        ray.get(workers[0].take_push_parts.remote())
        times, nbytes, sender = [], 0, {}
        for v in range(2, 2 + args.pushes):
            out = sync.push(group, workers, v)
            times.append(out["push_seconds"])
            nbytes = out["push_bytes"]
            for k, x in out.items():
                if k.startswith("push_sender_"):
                    sender.setdefault(k.removeprefix("push_sender_").removesuffix("_seconds"), []).append(x)
        engine_parts = {k: x / args.pushes for k, x in ray.get(workers[0].take_push_parts.remote()).items()}
        sync.verify_when = "every"  # one checked push after the timed ones: the engine holds the learner's weights
        sync.push(group, workers, 2 + args.pushes)
        if backend != "object_store":
            group.call_all("shutdown_weight_transfer")
        ray.get(workers[0].ready.remote())
    finally:
        kill_quietly(workers)
    return {"backend": ":".join(filter(None, (backend, cpu_linear, mode))), "push_s": statistics.median(times), "push_s_all": times,
            "bytes": nbytes, "verified": True, "sample_tok_s": tok_s, "engine_parts_s": engine_parts,
            "sender_parts_s": {k: statistics.median(x) for k, x in sender.items()}}


def print_table(res: dict, args) -> None:
    print(f"\nweight push, {res['size']} model ({res['bytes'] / 1e6:.1f} MB), median of {args.pushes}, "
          f"bucket {args.bucket_mb} MiB")
    print(f"{'engine':<22}{'push s':>9}{'MB/s':>10}{'x object_store':>16}{'push/memcpy':>13}{'sample tok/s':>14}")
    for r in res["rows"]:
        if "error" in r:
            print(f"{r['backend']:<22}failed: {r['error'][:200]}")
            continue
        print(f"{r['backend']:<22}{r['push_s']:>9.4f}{r['mb_s']:>10.0f}{r['vs_object_store']:>15.2f}x"
              f"{r['push_over_memcpy']:>13.3f}{r['sample_tok_s']:>14.0f}")
    print(f"{'memcpy':<22}{res['memcpy_s']:>9.4f}{res['memcpy_mb_s']:>10.0f}")
    print("where a push goes (s per push; engine: inside the rollout engine, sender: on learner rank 0)")
    for r in res["rows"]:
        if "error" not in r:
            parts = [f"engine {k} {v:.4f}" for k, v in r["engine_parts_s"].items()]
            parts += [f"sender {k} {v:.4f}" for k, v in r["sender_parts_s"].items()]
            print(f"  {r['backend']:<20}" + ", ".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", choices=["tiny", "medium"], default=["tiny", "medium"])
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--bucket-mb", type=int, default=64)
    ap.add_argument("--engines", nargs="*",
                    default=["object_store:plain", "gloo:plain", "shm:plain:copy", "shm:plain", "shm:packed"],
                    help="backend:cpu_linear[:copy] per engine (cpu_linear: plain or packed; copy: shm without "
                         "aliasing the engine's parameters to the segment)")
    args = ap.parse_args()

    import ray

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        results = [bench_size(size, args) for size in args.sizes]
    finally:
        ray.shutdown()
    for res in results:
        print_table(res, args)
    out_dir = REPO / "outputs" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "push.json").write_text(json.dumps({"bucket_mb": args.bucket_mb, "pushes": args.pushes,
                                                   "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
