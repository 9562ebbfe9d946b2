"""`medr1 evaluate --model DIR --data PREPARED`: the paper's held-out evaluation of any
HF-format Qwen-VL directory (any supported family) on a prepared dataset, on R vLLM rollout actors."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from pipelines.cli.main import setup_logging
from pipelines.config import load_config
from pipelines.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="greedy held-out evaluation (paper scoring) of a Qwen-VL model on R "
                                        "vLLM actors")
    p.add_argument("--model", required=True, help="HF-format Qwen-VL directory (Qwen2-VL, Qwen2.5-VL or Qwen3-VL)")
    p.add_argument("--data", required=True, help="prepared dataset directory (medr1 prepare-data)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="output directory (default: outputs/eval/<model dir name>-<split>)")
    p.add_argument("--workers", type=int, default=None, help="rollout actors R (default: rollout.num_workers)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: eval.max_new_tokens (256)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="evaluate N records spread over modality x question-type cells "
                        "(default: eval.max_samples, or all)")
    p.add_argument("--prompt-style", default=None, help="think (paper), nothink or think_after")
    p.add_argument("--show-errors", type=int, default=0, metavar="N",
                   help="print the N worst examples (wrong answers first, then unparsable)")
    p.add_argument("--modalities", default=None, help="comma-separated subset of modalities to evaluate")
    p.add_argument("--question-types", default=None, help="comma-separated subset of question types")
    p.add_argument("--config", default=None, help="YAML config for engine/cluster settings")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. rollout.kv_cache_memory_bytes=...)")
    p.set_defaults(func=run)


def _csv(s: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def run(args: argparse.Namespace, workers: Optional[list] = None) -> int:
    # Imported on use: it pulls in Ray, torch and vLLM, and `medr1 --help` must stay instant.
    from pipelines.evaluation.evaluate import check_model_dir, evaluate_model

    cfg = load_config(args.config, args.overrides)
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be >= 1")
    check_model_dir(args.model)
    if not Path(args.data).is_dir():
        raise UserError(f"prepared dataset directory not found: {args.data}")
    setup_logging()
    evaluate_model(args.model, args.data, split=args.split, out=args.out, cfg=cfg, workers=workers,
                   num_workers=args.workers, max_new_tokens=args.max_new_tokens, max_samples=args.max_samples,
                   prompt_style=args.prompt_style, modalities=_csv(args.modalities),
                   question_types=_csv(args.question_types), show_errors=args.show_errors,
                   progress=not args.no_progress)
    return 0
