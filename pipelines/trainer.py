"""The synchronous GRPO loop of DESIGN.md, wiring the actors together.

One step: next B prompts -> R rollout actors sample G completions each ->
reward actors score them -> group-relative advantages -> N learner ranks
update -> new weights pushed into every vLLM engine (version + 1).
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Optional

import ray

from pipelines.data_cursor import DataCursor
from pipelines.metrics_log import MetricsLog, plot_reward_curve
from pipelines.run_setup import RunContext, start_run
from pipelines.traces import TraceWriter

log = logging.getLogger(__name__)


class GRPOTrainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.out = Path(cfg.trainer.output_dir)
        self.ctx: Optional[RunContext] = None
        self.step = 0
        self.weight_version = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.ctx = start_run(self.cfg)
        c = self.cfg
        self.cursor = DataCursor(len(self.ctx.train), c.trainer.prompts_per_step, seed=c.data.seed,
                                 shuffle=c.data.shuffle)
        self.metrics = MetricsLog(self.out, tensorboard=c.logging.tensorboard, ray_metrics=c.logging.ray_metrics,
                                  run=self.out.name)
        self.traces = TraceWriter(self.out / "traces", kind="train") if c.logging.traces else None
        self.eval_traces = TraceWriter(self.out / "traces", kind="eval") if c.logging.traces else None
        if c.trainer.resume_from:
            self._resume(c.trainer.resume_from)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        assert self.ctx is not None, "call setup() first"
        c, ctx = self.cfg, self.ctx
        total = self.total_steps()
        summary: dict[str, Any] = {"output_dir": str(self.out), "total_steps": total}
        t_start = time.perf_counter()
        if self.step == 0:
            summary["before"] = self.evaluate(tag="before")
        from tqdm import tqdm

        bar = tqdm(total=total, initial=self.step, desc="GRPO", unit="step", disable=not c.logging.progress)
        while self.step < total:
            m = self.train_step()
            self.step += 1
            self.metrics.log(self.step, m)
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward_mean']:.2f}", acc=f"{m['accuracy']:.2f}", kl=f"{m.get('kl', 0):.3f}")
            if c.trainer.eval_every and self.step % c.trainer.eval_every == 0 and self.step < total:
                self.evaluate(tag=f"step_{self.step}")
            if c.trainer.save_every and self.step % c.trainer.save_every == 0 and self.step < total:
                self.save(self.out / "checkpoints" / f"step_{self.step}")
        bar.close()
        summary["after"] = self.evaluate(tag="after")
        final = self.save(self.out / "checkpoints" / "final")
        summary["final_checkpoint"] = str(final)
        summary["final_model"] = str(final / "hf")
        summary["minutes"] = (time.perf_counter() - t_start) / 60
        summary["weight_version"] = self.weight_version
        summary["rollout_restarts"] = ctx.rollout.restarts
        summary["reward_curve"] = str(self._plot())
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        if self.traces:
            self.traces.close()
        if self.eval_traces:
            self.eval_traces.close()
        self.metrics.close()
        return summary

    def total_steps(self) -> int:
        c = self.cfg
        if c.trainer.total_steps > 0:
            return int(c.trainer.total_steps)
        return max(1, (len(self.ctx.train) * c.trainer.epochs) // c.trainer.prompts_per_step)

    def train_step(self) -> dict:
        from learner.grpo import compute_advantages, dead_group_mask
        from learner.samples import TrainSample
        import torch

        c, ctx = self.cfg, self.ctx
        G = c.rollout.group_size
        timings: dict[str, float] = {}
        batch = [ctx.train[i] for i in self.cursor.next_batch()]
        prompts = [ctx.prompt_payload(r) for r in batch]

        t = time.perf_counter()
        sampling = dict(n=G, temperature=c.rollout.temperature, top_p=c.rollout.top_p, top_k=c.rollout.top_k,
                        max_tokens=c.rollout.max_new_tokens, seed=c.rollout.seed * 100_003 + self.step * 1009)
        outcome = ctx.rollout.generate(prompts, sampling)
        timings["time_rollout"] = time.perf_counter() - t

        # Prompts whose image failed preprocessing are skipped and counted; the step goes on.
        kept = [(r, p, res, v, w) for r, p, res, v, w in zip(batch, prompts, outcome.results, outcome.versions,
                                                              outcome.workers) if not res["error"]]
        skipped = [(r.id, res["error"]) for r, res in zip(batch, outcome.results) if res["error"]]
        for rid, err in skipped:
            log.warning("step %d: prompt %s skipped: %s", self.step, rid, err)

        texts, answers = [], []
        for r, _, res, _, _ in kept:
            for comp in res["completions"]:
                texts.append(comp["text"])
                answers.append(r.answer)
        t = time.perf_counter()
        scores = ctx.score(texts, answers)
        timings["time_reward"] = time.perf_counter() - t

        rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
        m: dict[str, Any] = {"weight_version": self.weight_version, "prompts": len(kept),
                             "skipped_prompts": len(skipped)}
        if len(kept) == 0:
            raise RuntimeError(f"step {self.step}: every prompt failed preprocessing: {skipped[:3]}")
        adv, adv_stats = compute_advantages(rewards, G, scale=c.grpo.advantage_scale.value, eps=c.grpo.advantage_eps)
        live_groups = ~dead_group_mask(rewards, G)
        samples, trace_rows = [], []
        k = 0
        for gi, (r, p, res, version, worker) in enumerate(kept):
            for si, comp in enumerate(res["completions"]):
                s = scores[k]
                if not c.grpo.filter_dead_groups or bool(live_groups[gi]):
                    samples.append(TrainSample(sample_id=f"{r.id}#{si}", prompt_text=p["prompt"], image=p["image"],
                                               completion_ids=comp["token_ids"], old_logprobs=comp["logprobs"],
                                               advantage=float(adv[k])))
                trace_rows.append(ctx.trace_row(r, comp, s, step=self.step, version=version, worker=worker,
                                                sample_index=si, advantage=float(adv[k])))
                k += 1
        if self.traces:
            self.traces.add(trace_rows)

        comps = [s["components"] for s in scores]
        m.update(
            reward_mean=float(rewards.mean()),
            reward_std=float(rewards.std()) if len(rewards) > 1 else 0.0,
            accuracy=_mean([x.get("accuracy_strict", x.get("accuracy", 0.0)) for x in comps]),
            format_rate=_mean([x.get("format", x.get("format_nothink", x.get("format_think_after", 0.0)))
                               for x in comps]),
            completion_length=_mean([len(s.completion_ids) for s in samples]) if samples else 0.0,
            rollout_tokens=outcome.tokens,
            rollout_tokens_per_s=outcome.tokens / max(outcome.seconds, 1e-9),
            rollout_reissued=outcome.reissued,
            rollout_restarts=ctx.rollout.restarts,
            weight_version_lag=self.weight_version - min(v for *_, v, _ in kept),
            **{f"reward_{name}": _mean([x[name] for x in comps]) for name in (comps[0] if comps else {})},
            **adv_stats,
        )
        t = time.perf_counter()
        if samples:
            m.update(ctx.learners.train_step(samples, G))
        else:
            m["learner_skipped"] = 1  # every group dead and filtered: nothing to learn from
        timings["time_learner"] = time.perf_counter() - t

        t = time.perf_counter()
        if samples and (self.step + 1) % c.weight_sync.every_n_steps == 0:
            self.weight_version += 1
            push = ctx.weight_sync.push(ctx.learners, ctx.rollout.workers, self.weight_version)
            m.update({k2: v for k2, v in push.items() if k2 != "weight_version"})
        timings["time_push"] = time.perf_counter() - t
        m.update(timings)
        m["time_step"] = sum(timings.values())
        m["weight_version"] = self.weight_version
        return m

    # ------------------------------------------------------------------ eval / checkpoints
    def evaluate(self, tag: str) -> dict:
        from pipelines.evaluation import evaluate_records

        c, ctx = self.cfg, self.ctx
        records = ctx.test if not c.eval.max_samples else ctx.test[: c.eval.max_samples]
        res = evaluate_records(ctx.rollout.workers, records, tokenizer=ctx.tokenizer,
                               max_new_tokens=c.eval.max_new_tokens, prompt_style=c.eval.prompt_style.value,
                               weight_version=self.weight_version, step=self.step, model=str(c.model.path),
                               run=self.out.name, trace_writer=self.eval_traces, progress=c.logging.progress)
        brief = {k: res[k] for k in ("overall", "by_modality", "by_question_type", "format_rate", "unparsable", "n")
                 if k in res}
        evals_path = self.out / "evals.jsonl"
        with evals_path.open("a") as f:
            f.write(json.dumps({"tag": tag, "step": self.step, "weight_version": self.weight_version, **brief},
                               default=float) + "\n")
        log.info("eval %s (step %d): accuracy %.3f on %d", tag, self.step, res["overall"]["accuracy"], res["n"])
        return brief

    def save(self, directory: Path) -> Path:
        state = {"step": self.step, "weight_version": self.weight_version, "cursor": self.cursor.to_dict(),
                 "python_random": repr(random.getstate()), "config": str(self.cfg.trainer.output_dir)}
        self.ctx.learners.save_checkpoint(str(directory), state)
        return directory

    def _resume(self, path: str) -> None:
        state = self.ctx.learners.load_checkpoint(path)
        self.step = int(state["step"])
        self.weight_version = int(state["weight_version"])
        self.cursor = DataCursor.from_dict(state["cursor"], len(self.ctx.train), self.cfg.trainer.prompts_per_step,
                                           seed=self.cfg.data.seed, shuffle=self.cfg.data.shuffle)
        # The engines started from the base weights: bring them to the checkpoint's.
        self.ctx.weight_sync.push(self.ctx.learners, self.ctx.rollout.workers, self.weight_version)
        log.info("resumed from %s at step %d (weight version %d)", path, self.step, self.weight_version)

    def _plot(self) -> Optional[Path]:
        evals = {}
        p = self.out / "evals.jsonl"
        if p.is_file():
            for line in p.read_text().splitlines():
                e = json.loads(line)
                evals[e["step"]] = e["overall"]["accuracy"]
        return plot_reward_curve(self.out / "metrics.jsonl", self.out / "reward_curve.png", evals)

    def shutdown(self) -> None:
        if self.ctx is not None:
            self.ctx.shutdown()


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else 0.0
