"""GRPO step time, synchronous vs async rollouts (``rollout.async_mode``), on the same config.

    .venv/bin/python bench/bench_async.py [--config tiny_cpu.yaml] [--steps 10] [--warmup 2] [key=value ...]

Each mode gets its own fresh run (same seed, same data, same starting weights, same
actors and resources) and trains ``--steps`` steps; the first ``--warmup`` steps are
left out of the figures. Async overlaps step t+1's sampling with step t's update, so
its step time tends to max(rollout, learner) + push instead of their sum; on a machine
where rollout and learner share the same few cores the overlap buys less.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_mode(config: str, overrides: list[str], steps: int, out: Path) -> list[dict]:
    from tqdm import tqdm

    from pipelines.config import load_config
    from pipelines.training.grpo_loop import GRPOTrainer

    cfg = load_config(config, [*overrides, f"trainer.output_dir={out}", f"trainer.total_steps={steps}",
                               "logging.progress=false", "logging.tensorboard=false", "logging.traces=false"])
    trainer = GRPOTrainer(cfg)
    rows = []
    try:
        trainer.setup()
        for _ in tqdm(range(steps), desc=f"async={cfg.rollout.async_mode}", unit="step"):
            rows.append(trainer.train_step())
            trainer.step += 1
    finally:
        trainer.shutdown()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny_cpu.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")

    import logging

    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("false", "true"):
            rows = run_mode(args.config, [*args.overrides, f"rollout.async_mode={mode}"], args.steps,
                            Path(tmp) / f"async-{mode}")
            results[mode] = rows[args.warmup:]

    def med(rows, key):
        return statistics.median(float(r.get(key, 0.0)) for r in rows)

    keys = [("time_step", "step s"), ("time_rollout", "rollout wait s"), ("time_learner", "learner s"),
            ("time_push", "push s"), ("weight_version_lag", "lag"), ("rollout_tokens", "tokens/step")]
    print(f"\nGRPO step time, {args.config}, median of steps {args.warmup + 1}..{args.steps}")
    print(f"{'mode':<8}" + "".join(f"{label:>16}" for _, label in keys))
    for mode, name in (("false", "sync"), ("true", "async")):
        print(f"{name:<8}" + "".join(f"{med(results[mode], k):>16.3f}" for k, _ in keys))
    ratio = med(results["true"], "time_step") / med(results["false"], "time_step")
    print(f"async / sync step time: {ratio:.2f}")
    r, l, p = (med(results["false"], k) for k in ("time_rollout", "time_learner", "time_push"))
    # What full overlap would give if rollout and learner did not share cores (e.g. separate GPUs).
    print(f"bound with disjoint devices, from the sync phases: (max(rollout, learner) + push) / sum = "
          f"{(max(r, l) + p) / (r + l + p):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
