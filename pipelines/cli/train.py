"""`medr1 train CONFIG [key=value ...]`: the GRPO run (``--dry-run``: validate and plan only)."""
from __future__ import annotations

import argparse

from pipelines.cli.main import setup_logging
from pipelines.config import load_config, to_yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="GRPO training on Ray (rollout actors, reward actors, DeepSpeed learner)")
    p.add_argument("config", help="YAML config (a path, or a name in configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rollout.num_workers=4")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and resource plan, "
                                                          "start nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    # Imported on use: it pulls in Ray, torch and vLLM, and `medr1 --help` must stay instant.
    import ray

    from pipelines.launch import resource_plan
    from pipelines.training.grpo_loop import run_training

    if args.dry_run:
        print(to_yaml(cfg))
        print(resource_plan(cfg).table())
        return 0
    setup_logging()
    summary = run_training(cfg)
    if cfg.cluster.address is None:
        ray.shutdown()  # our local Ray: stop worker log forwarding so the summary is the last thing printed
    _print_summary(summary)
    return 0


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
        fb, fa = before.get("faithfulness"), after.get("faithfulness")
        if fb and fa:  # the auditable link between reasoning and answer (rewards/faithfulness.py)
            print(f"  reasoning names the chosen option, of correct answers: {fb['faithful_correct']:.3f} -> "
                  f"{fa['faithful_correct']:.3f} (n={fb['n_correct']} -> {fa['n_correct']})")
            print(f"  reasoning names another option, of wrong answers:     {fb['other_named_wrong']:.3f} -> "
                  f"{fa['other_named_wrong']:.3f} (n={fb['n_wrong']} -> {fa['n_wrong']})")
    if summary.get("examples"):
        from pipelines.evaluation.examples import format_examples

        print(f"\n{len(summary['examples'])} held-out completions after training:")
        print(format_examples(summary["examples"]))
    print(f"minutes: {summary.get('minutes', 0):.1f}")
    out = summary.get("output_dir")
    print(f"outputs in {out}: metrics.jsonl, traces/, checkpoints/, summary.json, reward_curve.png")
    print(f"final model: {summary.get('final_model')}")
    if summary.get("trace_head"):  # record it elsewhere: it proves later that no trace row was changed
        print(f"trace head: {summary['trace_head']}  (check later: medr1 trace verify {out} --head "
              f"{summary['trace_head']})")
