"""`medr1 protocol cross-modality|cross-task CONFIG`: the paper's generalization matrix."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cli.main import setup_logging
from pipelines.config import load_config
from pipelines.errors import UserError
from pipelines.protocol import KINDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protocol", help="the paper's cross-modality / cross-task generalization matrix "
                                        "(one GRPO run per domain, each evaluated on every test domain)")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("config", help="YAML config for each training run (a path, or a name in configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--domains", default=None, help="comma-separated training domains (default: all 8 modalities "
                                                   "or all 5 question types)")
    p.add_argument("--test-domains", default=None, help="comma-separated test domains: the matrix's columns "
                                                        "(default: every domain in the test split)")
    p.add_argument("--sft-arm", action="store_true", help="also one SFT run (ground-truth letters, sft.epochs at "
                                                         "sft.lr) per training domain, from the same start as GRPO")
    p.add_argument("--prompt-styles", default=None, help="comma-separated prompt styles (think, nothink, "
                                                         "think_after): GRPO rows in each style besides the "
                                                         "config's, each with its own base row")
    p.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: trainer.total_steps)")
    p.add_argument("--out", default=None, help="protocol directory (default: <trainer.output_dir>-<kind>)")
    p.add_argument("--sft-model", default=None, help="an SFT model directory, evaluated as a baseline row")
    p.add_argument("--sequential", action="store_true", help="run the cells one after another in this process")
    p.add_argument("--max-parallel", type=int, default=None,
                   help="training runs in flight at once (default: 1 on a local Ray, all on a cluster)")
    p.add_argument("--eval-workers", type=int, default=None, help="rollout actors per evaluation "
                                                                  "(default: rollout.num_workers)")
    p.add_argument("--eval-max-samples", type=int, default=None,
                   help="evaluate on N test records spread over the split (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported on use: it pulls in Ray, torch and vLLM, and `medr1 --help` must stay instant.
    from pipelines.evaluation.evaluate import check_model_dir
    from pipelines.protocol.arms import parse_styles, plan_rows
    from pipelines.protocol.run import parse_domains, run_protocol

    cfg = load_config(args.config, args.overrides)
    domains = parse_domains(args.kind, args.domains)
    test_domains = parse_domains(args.kind, args.test_domains, "--test-domains") if args.test_domains else None
    styles = parse_styles(args.prompt_styles, str(cfg.data.prompt_style))
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be >= 1")
    if args.sft_model:
        check_model_dir(args.sft_model)
    out = args.out or f"{str(cfg.trainer.output_dir).rstrip('/')}-{args.kind}"
    setup_logging()
    matrix = run_protocol(cfg, args.kind, protocol_dir=out, domains=domains, steps=args.steps,
                          sft_model=args.sft_model, sequential=args.sequential, max_parallel=args.max_parallel,
                          eval_workers=args.eval_workers, eval_max_samples=args.eval_max_samples,
                          test_domains=test_domains, sft_arm=args.sft_arm, prompt_styles=styles)
    planned = plan_rows(domains, styles, sft_arm=args.sft_arm, sft_model=bool(args.sft_model))
    missing = [r for r in planned if r not in matrix["rows"]]
    print((Path(out) / "report.md").read_text())
    print(f"outputs in {out}: matrix.json, matrix.csv, report.md, heatmap_accuracy.png, "
          f"heatmap_improvement.png, in_vs_out.png, bars_by_domain.png, runs/")
    if missing:
        print(f"unfinished rows (rerun the same command to retry them): {', '.join(missing)}")
        return 1
    return 0
