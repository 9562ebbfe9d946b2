"""Learner time per GRPO step: per-sample rows vs the shared prefix (and token-packed micro-batches).

One DeepSpeed rank in this process (gloo, world of 1) on the tiny model of a config, with that
config's learner and GRPO settings (micro-batch size, mini-batches, beta: the reference forward
counts), fed one step's worth of samples: ``trainer.prompts_per_step`` prompts of the built-in
synthetic benchmark x ``rollout.group_size`` completions of a fixed length (random token ids: the
learner's cost does not depend on which tokens). The layouts take turns step by step, so load from
other processes hits them alike; each row reports the median of its timed steps.

Shapes:
  default  configs/tiny_cpu.yaml as it stands (its prompt style, 4-token completions as its runs sample)
  think    the issue-18 bench shape: think prompt, 8 prompts x G=4, 64-token completions

    flock /work/notes/heavy.lock python bench/bench_learner.py [--shapes default think] [--budget-s 240]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    "default": {"overrides": [], "completion_tokens": 4},
    "think": {"overrides": ["data.prompt_style=think", "trainer.prompts_per_step=8", "rollout.group_size=4",
                            "rollout.max_new_tokens=64"], "completion_tokens": 64},
}
# (label, learner overrides): the layouts compared, per-sample first (the baseline of the ratios).
LAYOUTS = [("per-sample", {"shared_prefix": False}),
           ("shared-prefix", {"shared_prefix": True}),
           ("shared+packed", {"shared_prefix": True, "max_tokens_per_micro_batch": 4096})]


def _samples(cfg, processor, completion_tokens: int, seed: int = 0):
    import torch

    from learner.image_codec import read_image_bytes
    from learner.samples import TrainSample
    from pipelines.data.synthetic import build_synthetic
    from pipelines.prompts import chat_prompt

    recs = build_synthetic(seed=int(cfg.data.seed), per_cell=4, option_order=str(cfg.data.synthetic.option_order))
    qtypes = set(cfg.data.question_types)
    recs = [r for r in recs["train"] if not qtypes or r.question_type in qtypes]  # the questions the config trains
    g = torch.Generator().manual_seed(seed)
    hi = min(len(processor.tokenizer) - 1, 2000)
    out = []
    for p, rec in enumerate(recs[:int(cfg.trainer.prompts_per_step)]):
        text = chat_prompt(processor.tokenizer, rec, str(cfg.data.prompt_style))
        image = read_image_bytes(rec.image)
        for k in range(int(cfg.rollout.group_size)):
            ids = torch.randint(20, hi, (completion_tokens,), generator=g).tolist()
            out.append(TrainSample(f"{rec.id}#{k}", text, image, ids, [-5.0] * completion_tokens,
                                   float(torch.randn((), generator=g))))
    return out


def _learner(cfg, model_dir: str, layout: dict):
    from omegaconf import OmegaConf

    from learner.deepspeed_learner import GRPOLearner

    lc = OmegaConf.merge(cfg.learner, layout)
    n = int(cfg.trainer.prompts_per_step) * int(cfg.rollout.group_size)
    return GRPOLearner(model_dir, lc, cfg.grpo, total_steps=1000, samples_per_step_per_rank=n,
                       temperature=float(cfg.rollout.temperature))


def run_shape(name: str, config: str, budget_s: float, threads: int) -> dict:
    import torch

    from pipelines.config import load_config
    from pipelines.models.tiny import build_tiny_model

    shape = SHAPES[name]
    cfg = load_config(config, shape["overrides"])
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "model", cfg.model.tiny, cfg.model.min_pixels,
                                         cfg.model.max_pixels))
        learners = [(label, _learner(cfg, model_dir, lay)) for label, lay in LAYOUTS]
        samples = _samples(cfg, learners[0][1].processor, shape["completion_tokens"])
        times: dict[str, list[float]] = {label: [] for label, _ in learners}
        for label, ln in learners:  # warm-up: first-call allocations and lazy inits
            ln.train_step(samples)
        t_end = time.perf_counter() + budget_s
        rounds = 0
        while rounds < 2 or (time.perf_counter() < t_end and rounds < 10):
            for label, ln in learners:
                times[label].append(ln.train_step(samples)["learner_time"])
            rounds += 1
    base = statistics.median(times[LAYOUTS[0][0]])
    rows = {label: {"median_s": statistics.median(t), "speedup": base / statistics.median(t), "steps": len(t)}
            for label, t in times.items()}
    return {"shape": name, "samples": len(samples), "prompts": int(cfg.trainer.prompts_per_step),
            "group_size": int(cfg.rollout.group_size), "completion_tokens": shape["completion_tokens"],
            "prompt_style": str(cfg.data.prompt_style), "micro_batch_size": int(cfg.learner.micro_batch_size),
            "mini_batches": int(cfg.grpo.mini_batches), "beta": float(cfg.grpo.beta), "threads": threads,
            "layouts": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "tiny_cpu.yaml"))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--budget-s", type=float, default=120.0, help="timed rounds per shape stop after this (min 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: what the learner actor gets in the synchronous loop today)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()

    from cluster.ray_utils import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    results = [run_shape(s, args.config, args.budget_s, args.threads) for s in args.shapes]
    for r in results:
        print(f"\n{r['shape']}: {r['prompts']} prompts x G={r['group_size']}, {r['completion_tokens']}-token "
              f"completions, {r['prompt_style']} prompt, micro-batch {r['micro_batch_size']}, "
              f"{r['mini_batches']} mini-batches, beta {r['beta']}, {r['threads']} thread(s)")
        for label, row in r["layouts"].items():
            print(f"  {label:14s} {row['median_s']:7.3f} s/step  {row['speedup']:5.2f}x  ({row['steps']} steps)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
