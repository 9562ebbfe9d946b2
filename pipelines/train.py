"""`medr1 train CONFIG [key=value ...]`: the GRPO run (``--dry-run``: validate and plan only)."""
from __future__ import annotations

import argparse
import logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="GRPO training on Ray (rollout actors, reward actors, DeepSpeed learner)")
    p.add_argument("config", help="YAML config (a path, or a name in configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rollout.num_workers=4")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and resource plan, "
                                                          "start nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config, to_yaml

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from pipelines.run_setup import resource_plan

        print(to_yaml(cfg))
        print(resource_plan(cfg).table())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run_training(cfg)
    if cfg.cluster.address is None:
        import ray

        ray.shutdown()  # our local Ray: stop worker log forwarding so the summary is the last thing printed
    _print_summary(summary)
    return 0


def run_training(cfg) -> dict:
    """Run GRPO as configured; returns the summary also written to ``output_dir/summary.json``."""
    from pipelines.trainer import GRPOTrainer

    trainer = GRPOTrainer(cfg)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.shutdown()


def _print_summary(summary: dict) -> None:
    before, after = summary.get("before"), summary.get("after")
    print()
    if before and after:
        print(f"held-out accuracy: {before['overall']['accuracy']:.3f} -> {after['overall']['accuracy']:.3f} "
              f"(n={after['overall']['n']})")
        for key in ("by_modality", "by_question_type"):
            print(f"  {key.replace('by_', 'by ')}:")
            for name, a in after.get(key, {}).items():
                b = before.get(key, {}).get(name, {}).get("accuracy", float("nan"))
                print(f"    {name:<30} {b:.3f} -> {a['accuracy']:.3f}  (n={a['n']})")
    print(f"minutes: {summary.get('minutes', 0):.1f}")
    out = summary.get("output_dir")
    print(f"outputs in {out}: metrics.jsonl, traces/, checkpoints/, summary.json, reward_curve.png")
    print(f"final model: {summary.get('final_model')}")
