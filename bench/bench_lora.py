"""LoRA vs full fine-tuning on the learner: trainable parameters, optimizer state, peak memory, step time.

The ~60M-parameter Qwen2-VL of ``bench_rollout.py`` ("medium"), one DeepSpeed ZeRO-2 rank on the
CPU, GRPO with beta 0.04 (so full fine-tuning holds a reference copy, LoRA disables its adapter
instead), 2 steps of 8 samples. Each mode runs in a fresh process so its peak RSS is its own.

    python bench/bench_lora.py [--rank 8] [--steps 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEDIUM = dict(hidden_size=768, num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
              num_hidden_layers=8, vision_embed_dim=256, vision_depth=4, vision_num_heads=4)


def _one(model_dir: str, rank: int, steps: int) -> dict:
    """One learner in this process: build, train ``steps`` steps, report."""
    import torch
    from omegaconf import OmegaConf

    from cluster.ray_utils import free_port
    from learner.deepspeed_learner import GRPOLearner
    from pipelines.config import GRPOConfig, LearnerConfig
    from tests.test_learner import make_samples

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    lc, gc = OmegaConf.structured(LearnerConfig), OmegaConf.structured(GRPOConfig)
    lc.micro_batch_size, lc.lr = 8, (2e-4 if rank else 1e-5)
    lc.lora.rank = rank
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    learner = GRPOLearner(model_dir, lc, gc, total_steps=steps, samples_per_step_per_rank=8)
    samples = make_samples(learner.processor, 8, seed=0, min_len=16, max_len=32)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        learner.train_step(samples)
        times.append(time.perf_counter() - t)
    opt_state = sum(v.numel() * v.element_size() for st in learner.optimizer.state.values()
                    for v in st.values() if torch.is_tensor(v))
    return {"trainable": learner.param_counts["trainable"], "total": learner.param_counts["total"],
            "reference_copy": learner.ref is not None, "optimizer_state_mb": opt_state / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_before_mb": rss0 / 1024, "step_s": min(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("MODEL_DIR", "RANK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(_one(args.one[0], int(args.one[1]), args.steps)))
        return

    from omegaconf import OmegaConf

    from pipelines.config import TinyModelConfig
    from pipelines.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        dims = OmegaConf.structured(TinyModelConfig)
        for k, v in MEDIUM.items():
            dims[k] = v
        build_tiny_model(tmp, dims, max_pixels=112 * 112)
        rows = {}
        for name, rank in (("full fine-tuning", 0), (f"LoRA r={args.rank}", args.rank)):
            out = subprocess.run([sys.executable, __file__, "--one", tmp, str(rank), "--steps", str(args.steps)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            rows[name] = json.loads(line[0][7:])
    print(f"\nlearner, ~60M Qwen2-VL (bench_rollout 'medium'), 1 ZeRO-2 rank on CPU, GRPO beta 0.04, "
          f"{args.steps} steps x 8 samples")
    # peak RSS: the whole process; "learner": its growth from just before the learner was built.
    print(f"{'mode':<18}{'trainable':>12}{'of total':>12}{'ref copy':>10}{'optim MB':>10}{'peak RSS MB':>13}"
          f"{'learner MB':>12}{'step s':>8}")
    for name, r in rows.items():
        print(f"{name:<18}{r['trainable']:>12,}{r['total']:>12,}{'yes' if r['reference_copy'] else 'no':>10}"
              f"{r['optimizer_state_mb']:>10.1f}{r['peak_rss_mb']:>13.0f}"
              f"{r['peak_rss_mb'] - r['peak_rss_before_mb']:>12.0f}{r['step_s']:>8.2f}")


if __name__ == "__main__":
    main()
