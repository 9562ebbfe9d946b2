"""`medr1 init-model`: build a tiny Qwen-VL (tokenizer, processor, weights) offline."""
from __future__ import annotations

import argparse

from pipelines.choices import ModelFamily
from pipelines.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-model", help="build a tiny Qwen-VL locally (no downloads)")
    p.add_argument("--out", required=True, help="directory to write the HF-format model to")
    p.add_argument("--family", choices=[f.value for f in ModelFamily], default=None,
                   help="Qwen-VL generation to replicate (default: the config's model.tiny.family, qwen2_vl)")
    p.add_argument("--config", default="tiny_cpu.yaml", help="config whose model.tiny section sets the dimensions")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.tiny.num_hidden_layers=2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported on use: it pulls in torch and transformers, and `medr1 --help` must stay instant.
    from learner.model_family import FAMILIES
    from pipelines.models.tiny import build_tiny_model

    overrides = list(args.overrides) + ([f"model.tiny.family={args.family}"] if args.family else [])
    cfg = load_config(args.config, overrides)
    out = build_tiny_model(args.out, cfg.model.tiny, cfg.model.min_pixels, cfg.model.max_pixels)
    print(f"tiny {FAMILIES[cfg.model.tiny.family].title} written to {out}")
    return 0
