"""`medr1 init-model`: build the tiny Qwen2-VL (tokenizer, processor, weights) offline."""
from __future__ import annotations

import argparse

from pipelines.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-model", help="build the tiny Qwen2-VL locally (no downloads)")
    p.add_argument("--out", required=True, help="directory to write the HF-format model to")
    p.add_argument("--config", default="tiny_cpu.yaml", help="config whose model.tiny section sets the dimensions")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.tiny.num_hidden_layers=2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported on use: it pulls in Ray, torch and vLLM, and `medr1 --help` must stay instant.
    from pipelines.models.tiny import build_tiny_model

    cfg = load_config(args.config, args.overrides)
    out = build_tiny_model(args.out, cfg.model.tiny, cfg.model.min_pixels, cfg.model.max_pixels)
    print(f"tiny Qwen2-VL written to {out}")
    return 0
