"""`medr1 sft CONFIG [key=value ...]`: supervised fine-tuning (the paper's baseline, or the format warm-start)."""
from __future__ import annotations

import argparse

from pipelines.cli.main import setup_logging
from pipelines.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning (paper baseline, or the format warm-start)")
    p.add_argument("config", help="YAML config (a path, or a name in configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.target=format sft.epochs=2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    # Imported on use: it pulls in Ray, torch and vLLM, and `medr1 --help` must stay instant.
    from pipelines.launch import connect_ray
    from pipelines.training.run_setup import ensure_data, ensure_model
    from pipelines.training.sft import run_sft

    model_path = ensure_model(cfg)
    train, _ = ensure_data(cfg)
    res = cfg.learner.resources_per_worker
    connect_ray(cfg, wanted_cpus=cfg.learner.num_workers * res.num_cpus)
    s = cfg.sft
    out = run_sft(cfg, model_path, train, s.output_dir, target=s.target, epochs=s.epochs, lr=s.lr)
    print(f"SFT model: {out}")
    return 0


