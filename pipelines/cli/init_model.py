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
    p.add_argument("--pretrain", action="store_true",
                   help="then pretrain it on captions of a separate pool of synthetic images (model.pretrain.*)")
    p.add_argument("--config", default="tiny_cpu.yaml", help="config whose model.tiny section sets the dimensions")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.tiny.num_hidden_layers=2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported on use: it pulls in torch and transformers, and `medr1 --help` must stay instant.
    from learner.model_family import FAMILIES
    from pipelines.models.base_build import build_base
    from pipelines.models.pretrain import pretrained_settings

    overrides = list(args.overrides) + ([f"model.tiny.family={args.family}"] if args.family else [])
    overrides += [f"model.pretrain.enabled={str(bool(args.pretrain)).lower()}"]
    cfg = load_config(args.config, overrides)
    out = build_base(args.out, cfg.model.tiny, cfg.model.pretrain, min_pixels=cfg.model.min_pixels,
                     max_pixels=cfg.model.max_pixels)
    done = pretrained_settings(out)
    print(f"tiny {FAMILIES[cfg.model.tiny.family].title} written to {out}"
          + (f" (caption-pretrained: {done['steps']} steps, loss {done['final_loss']}, "
             f"{done['seconds'] / 60:.1f} min)" if done else ""))
    return 0
