"""`medr1 export CHECKPOINT --out DIR`: a LoRA checkpoint's adapter merged into a plain HF model."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a LoRA checkpoint's adapter into a plain HF model directory")
    p.add_argument("checkpoint", help="a checkpoint directory (holding adapter/), e.g. outputs/run/checkpoints/step_40")
    p.add_argument("--out", required=True, help="directory to write the merged HF model to")
    p.add_argument("--base", default=None,
                   help="the base model (default: the path the adapter records, adapter/adapter_config.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported on use: it pulls in torch, transformers and PEFT, and `medr1 --help` must stay instant.
    from learner import checkpoint_manifest
    from learner.lora import ADAPTER_DIR, merge_adapter

    ck = Path(args.checkpoint)
    adapter = ck / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        hint = f"; {ck / 'hf'} is already a plain HF model" if (ck / "hf" / "config.json").is_file() else ""
        raise UserError(f"{ck}: no LoRA adapter ({adapter}/adapter_config.json){hint}")
    try:
        checkpoint_manifest.verify(ck)
    except checkpoint_manifest.CheckpointError as e:
        raise UserError(str(e)) from None
    out = merge_adapter(str(adapter), args.out, args.base)
    print(f"merged {adapter} into a plain HF model: {out}")
    return 0
