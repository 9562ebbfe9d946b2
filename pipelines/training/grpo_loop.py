"""The GRPO loop (ARCHITECTURE.md, "One GRPO step"), wiring the actors together.

One step: next B prompts -> R rollout actors sample G completions each ->
reward actors score them -> group-relative advantages -> N learner ranks
update -> new weights pushed into every vLLM engine (version + 1).

Async mode (``rollout.async_mode``) keeps up to ``rollout.max_staleness``
later batches sampling while the learner updates on this one; those samples
come from weights up to that many versions old, and the clipped ratio uses the
log-probs vLLM reported when sampling them, so the update stays correct off policy.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import ray
import torch
from tqdm import tqdm

from actors.weight_sync import WeightPushError
from cluster.ray_utils import describe_failure
from learner.policy import vision_token_ids
from pipelines.config import to_dict
from pipelines.data.cursor import DataCursor
from pipelines.errors import RunStopped
from pipelines.evaluation.evaluate import evaluate_records, select_records
from pipelines.training.batch_metrics import batch_metrics
from pipelines.training.checkpoints import prune, resolve_resume, run_settings, tidy
from pipelines.training.dynamic_sampling import fill_live_groups
from pipelines.training.metrics import MetricsLog, driver_overhead, plot_run_curve, read_metrics
from pipelines.training.overlong import add_overlong_penalty
from pipelines.training.phase import PhaseMarker
from pipelines.training.run_setup import RunContext, start_run
from pipelines.training.run_traces import RunTraces
from pipelines.training.streamed_scoring import ScoreEachShard, gather_scores
from pipelines.training.train_samples import group_advantages, groups_that_train, learner_batch
from pipelines.training.trackers import open_trackers

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    """A batch whose rollout has been submitted but not trained on yet."""

    step: int  # the step that will train on it
    batch: list
    prompts: list[dict]
    job: Any  # actors.rollout.PendingRollout
    cursor_before: dict  # data cursor before this batch was drawn: what a checkpoint must store


@dataclass
class SampledPrompt:
    """One prompt of a step's batch after sampling: its G completions and where they came from."""

    record: Any  # pipelines.data.schema.VQARecord
    payload: dict  # the rollout request: {"id", "prompt", "image"}
    result: dict  # the rollout result: {"completions", "error", ...}
    version: int  # weight version it was sampled with
    worker: int  # the rollout actor that sampled it
    scores: list = field(default_factory=list)  # one reward-actor score per completion


class GRPOTrainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.out = Path(cfg.trainer.output_dir)
        self.ctx: Optional[RunContext] = None
        self.step = 0
        self.weight_version = 0
        self.last_checkpoint: Optional[str] = None
        self._inflight: deque[_InFlight] = deque()
        self.tr: Optional[RunTraces] = None
        self.phase = PhaseMarker(self.out)  # OUT/phase.json: where the driver is (bench/chaos.py times kills by it)
        self._log_s = 0.0  # seconds the driver spent logging the previous step

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.resume_from = resolve_resume(self.cfg.trainer.resume_from, self.out, to_dict(self.cfg))
        self.ctx = start_run(self.cfg)
        self._vision_ids = set(vision_token_ids(self.ctx.tokenizer))
        c = self.cfg
        self.cursor = DataCursor(len(self.ctx.train), c.trainer.prompts_per_step, seed=c.data.seed,
                                 shuffle=c.data.shuffle)
        self.metrics = MetricsLog(self.out, tensorboard=c.logging.tensorboard and "tensorboard" in c.logging.trackers,
                                  ray_metrics=c.logging.ray_metrics, run=self.out.name,
                                  trackers=open_trackers(c.logging, self.out, run=self.out.name, config=to_dict(c)))
        if self.resume_from:
            self._resume(self.resume_from)
        # After the resume: the chains continue from what this directory or the checkpoint recorded.
        self.tr = RunTraces(c, self.out, self.resume_from) if c.logging.traces else None
        self.traces, self.eval_traces = (self.tr.train, self.tr.eval) if self.tr else (None, None)
        if self.tr:
            self.tr.note_weights(self.weight_version, self.ctx.learners.weights_sha256())
            self.tr.note_start(self.resume_from, self.step)  # where this run's rows start (the ledger's history)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        assert self.ctx is not None, "call setup() first"
        c, ctx = self.cfg, self.ctx
        total = self.total_steps()
        summary: dict[str, Any] = {"output_dir": str(self.out), "total_steps": total}
        t_start = time.perf_counter()
        if self.step == 0:
            summary["before"] = self.evaluate(tag="before")
        bar = tqdm(total=total, initial=self.step, desc="GRPO", unit="step", disable=not c.logging.progress)
        while self.step < total:
            m = self.train_step()
            self.step += 1
            t_log = time.perf_counter()  # driver work between steps: counted in the next step's overhead
            self.metrics.log(self.step, m)
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward_mean']:.2f}", acc=f"{m['accuracy']:.2f}", kl=f"{m.get('kl', 0):.3f}")
            self._log_s = time.perf_counter() - t_log
            if c.trainer.eval_every and self.step % c.trainer.eval_every == 0 and self.step < total:
                self.evaluate(tag=f"step_{self.step}")
            if c.trainer.save_every and self.step % c.trainer.save_every == 0 and self.step < total:
                self.save(self.out / "checkpoints" / f"step_{self.step}")
        bar.close()
        summary["after"] = self.evaluate(tag="after")
        summary["examples"] = self.examples
        final = self.save(self.out / "checkpoints" / "final", export_hf=True)  # LoRA too: the merged model
        summary["final_checkpoint"] = str(final)
        summary["final_model"] = str(final / "hf")
        summary["minutes"] = (time.perf_counter() - t_start) / 60
        summary["weight_version"] = self.weight_version
        summary["rollout_restarts"] = ctx.rollout.restarts
        curve = plot_run_curve(self.out)
        summary["reward_curve"] = str(curve)
        if self.tr:  # the chains' final heads, to record elsewhere too (`medr1 trace verify --head`)
            summary.update(self.tr.close())
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        self.metrics.close(reward_curve=curve, evals=read_metrics(self.out / "evals.jsonl"))
        return summary

    def total_steps(self) -> int:
        c = self.cfg
        if c.trainer.total_steps > 0:
            return int(c.trainer.total_steps)
        return max(1, (len(self.ctx.train) * c.trainer.epochs) // c.trainer.prompts_per_step)

    def train_step(self) -> dict:
        c, ctx = self.cfg, self.ctx
        G = c.rollout.group_size
        timings: dict[str, float] = {}
        t_step = time.perf_counter()
        if not self._inflight:
            self._launch(self.step)
        item = self._inflight.popleft()
        assert item.step == self.step, (item.step, self.step)
        batch, prompts = item.batch, item.prompts
        with self.phase.timed(timings, "time_rollout", self.step):  # async: only the wait, the rest overlapped
            outcome = ctx.rollout.collect(item.job)
        if c.rollout.async_mode:
            # Queue the next batches now: they sample while this one is scored and learned from.
            for nxt in range(self.step + 1 + len(self._inflight), min(self.step + 1 + c.rollout.max_staleness,
                                                                        self.total_steps())):
                self._launch(nxt)
        queue_depth = len(self._inflight)  # batches sampling ahead of this step (always 0 in sync mode)

        with self.phase.timed(timings, "time_reward", self.step):
            kept, skipped = self._scored(batch, prompts, outcome)
        m: dict[str, Any] = {"weight_version": self.weight_version, "skipped_prompts": len(skipped)}
        if len(kept) == 0:
            raise RuntimeError(f"step {self.step}: every prompt failed preprocessing: {skipped[:3]}")
        trains = None  # which groups train (dynamic sampling decides; else all, or the live ones if filtered)
        if c.grpo.dynamic_sampling:
            with self.phase.timed(timings, "time_resample", self.step):
                filled = fill_live_groups(kept, lambda sp: [s["total"] for s in sp.scores], self._sample_more,
                                          target=c.trainer.prompts_per_step,
                                          max_tries=c.grpo.dynamic_sampling_max_tries)
            kept, trains = filled.groups, filled.trains()
            m.update(filled.metrics())
        texts = [comp["text"] for sp in kept for comp in sp.result["completions"]]
        scores = [s for sp in kept for s in sp.scores]
        rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
        m["prompts"] = len(kept)
        adv, adv_stats = group_advantages(rewards, G, c.grpo)
        if trains is None:
            trains = groups_that_train(rewards, G, c.grpo.filter_dead_groups)
        lb = learner_batch(kept, adv, trains, c.grpo.overlong_filter)
        samples, trace_rows = lb.samples, []
        if self.tr:
            k = 0
            for sp in kept:
                for si, comp in enumerate(sp.result["completions"]):
                    trace_rows.append(ctx.trace_row(
                        sp.record, comp, scores[k], step=self.step, version=sp.version, worker=sp.worker,
                        sample_index=si, advantage=float(adv[k]), weights_sha256=self.tr.weights_sha256(sp.version),
                        sampling=self._sampling(self.step)))
                    k += 1
        if self.tr:
            self.traces.add(trace_rows)  # queued: a background thread chains and writes them

        m.update(batch_metrics(kept, scores, rewards, samples, texts, outcome, c.data.prompt_style, self._vision_ids),
                 truncated_fraction=lb.truncated / max(len(scores), 1),  # completions cut at rollout.max_new_tokens
                 overlong_filtered=lb.overlong_dropped, rollout_restarts=ctx.rollout.restarts,
                 reward_rescored=ctx.reward_stats.get("reward_rescored", 0),  # over the run
                 queue_depth=queue_depth, weight_version_lag=self._staleness([sp.version for sp in kept]), **adv_stats)
        with self.phase.timed(timings, "time_learner", self.step):
            if ctx.colocation is not None:
                m.update(ctx.colocation.sleep())  # hand the shared devices to the learner
            if samples:
                m.update(self._guard_learner_call("the GRPO update", lambda: ctx.learners.train_step(samples, G)))
            else:
                m["learner_skipped"] = 1  # every group dead and filtered: nothing to learn from

        with self.phase.timed(timings, "time_push", self.step):
            do_push = bool(samples) and (self.step + 1) % c.weight_sync.every_n_steps == 0
            if do_push:
                self.weight_version += 1
            push_fn = (lambda: self._guard_learner_call("the weight push", lambda: ctx.weight_sync.push(
                ctx.learners, ctx.rollout.workers, self.weight_version))) if do_push else None
            if ctx.colocation is not None:
                push = ctx.colocation.wake_and_push(push_fn)
            else:
                push = push_fn() if push_fn else {}
            for i in push.pop("failed_workers", []):
                log.warning("rollout-%d failed during the weight push; it is caught up before the next rollout", i)
                ctx.rollout.mark_dead(i)
            m.update({k2: v for k2, v in push.items() if k2 != "weight_version"})
            if do_push and self.tr:  # hashed on the learner while the next batch samples
                self.tr.note_weights(self.weight_version, ctx.learners.weights_sha256())
        m.update(timings)
        m["time_step"] = time.perf_counter() - t_step
        # What the driver spends outside every phase (batching, advantages, traces, logging): it should stay small.
        m.update(driver_overhead(m["time_step"], timings, self._log_s))
        m["weight_version"] = self.weight_version
        return m

    def _sampling(self, step: int, extra_round: int = 0) -> dict:
        c = self.cfg
        # Seeded by the step that trains on it, so sync, async and resumed runs draw the same samples per step.
        return dict(n=c.rollout.group_size, temperature=c.rollout.temperature, top_p=c.rollout.top_p,
                    top_k=c.rollout.top_k, max_tokens=c.rollout.max_new_tokens,
                    seed=c.rollout.seed * 100_003 + step * 1009 + extra_round * 7_919_009)

    def _launch(self, step: int) -> None:
        """Draw the batch for ``step`` and start sampling it (returns at once)."""
        ctx = self.ctx
        cursor_before = self.cursor.to_dict()
        batch = [ctx.train[i] for i in self.cursor.next_batch()]
        prompts = [ctx.prompt_payload(r) for r in batch]
        # Each rollout actor's groups are scored as soon as they are sampled (pipelines/training/streamed_scoring.py).
        job = ctx.rollout.submit(prompts, self._sampling(step), then=ScoreEachShard(ctx.reward_workers,
                                                                                   [r.answer for r in batch]))
        self._inflight.append(_InFlight(step, batch, prompts, job, cursor_before))

    def _scored(self, batch: list, prompts: list[dict], outcome) -> tuple[list[SampledPrompt], list]:
        """The sampled prompts with their scores (overlong penalty included), and the (id, error) of those
        whose image failed preprocessing: they are skipped and counted, the step goes on."""
        c = self.cfg
        sampled = [SampledPrompt(record=r, payload=p, result=res, version=v, worker=w) for r, p, res, v, w
                   in zip(batch, prompts, outcome.results, outcome.versions, outcome.workers)]
        kept = [sp for sp in sampled if not sp.result["error"]]
        skipped = [(sp.record.id, sp.result["error"]) for sp in sampled if sp.result["error"]]
        for rid, err in skipped:
            log.warning("step %d: prompt %s skipped: %s", self.step, rid, err)
        comps = [comp for sp in kept for comp in sp.result["completions"]]
        scores = gather_scores(self.ctx, outcome, [r.answer for r in batch])  # streamed per shard when chained
        add_overlong_penalty(scores, comps, max_tokens=c.rollout.max_new_tokens, buffer=c.grpo.overlong_buffer,
                             factor=c.grpo.overlong_penalty)
        k = 0
        for sp in kept:
            sp.scores, k = scores[k:k + len(sp.result["completions"])], k + len(sp.result["completions"])
        return kept, skipped

    def _sample_more(self, extra_round: int) -> list[SampledPrompt]:
        """Dynamic sampling: the next prompts from the data cursor, sampled and scored now (sync mode only)."""
        batch = [self.ctx.train[i] for i in self.cursor.next_batch()]
        prompts = [self.ctx.prompt_payload(r) for r in batch]
        outcome = self.ctx.rollout.generate(prompts, self._sampling(self.step, extra_round))
        return self._scored(batch, prompts, outcome)[0]

    def _staleness(self, versions: list[int]) -> int:
        """Weight versions between the oldest sample of this batch and the policy being updated."""
        lag = self.weight_version - min(versions)
        bound = self.cfg.rollout.max_staleness if self.cfg.rollout.async_mode else 0
        if lag > bound:
            raise RuntimeError(f"step {self.step}: samples are {lag} weight versions old, over the bound of {bound}")
        return lag

    def _guard_learner_call(self, what: str, call):
        """Run a learner call; if a learner rank fails, stop the run and say where to resume from."""
        try:
            return call()
        except (ray.exceptions.RayError, WeightPushError) as e:
            where = (f"the last good checkpoint is {self.last_checkpoint}; rerun the same command to continue "
                     f"from it (trainer.resume_from=auto), or name it: trainer.resume_from={self.last_checkpoint}"
                     if self.last_checkpoint else
                     "no checkpoint was saved yet (set trainer.save_every to keep some)")
            pushed = isinstance(e, WeightPushError)
            head = f"{what} failed" if pushed else f"the learner failed during {what}"
            raise RunStopped(f"{head} at step {self.step + 1}; {where}.\n"
                             f"  cause: {e if pushed else describe_failure(e)}") from e

    # ------------------------------------------------------------------ eval / checkpoints
    def evaluate(self, tag: str) -> dict:
        c, ctx = self.cfg, self.ctx
        self.phase.enter(self.step, "evaluating")
        records = select_records(ctx.test, c.eval.max_samples)  # spread over cells, as `medr1 evaluate` does
        res = evaluate_records(ctx.rollout.workers, records, tokenizer=ctx.tokenizer,
                               max_new_tokens=c.eval.max_new_tokens, prompt_style=c.eval.prompt_style,
                               weight_version=self.weight_version, step=self.step, model=str(c.model.path),
                               run=self.out.name, trace_writer=self.eval_traces, progress=c.logging.progress,
                               weights_sha256=self.tr.weights_sha256(self.weight_version) if self.tr else "",
                               pool=ctx.rollout)  # a rollout actor dying mid-evaluation: its prompts re-issued
        brief = {k: res[k] for k in ("overall", "by_modality", "by_question_type", "format_rate", "unparsable", "n",
                                     "reissued", "faithfulness")
                 if k in res}
        self.examples = res.get("examples", [])  # a few held-out completions, printed at the end of the run
        evals_path = self.out / "evals.jsonl"
        with evals_path.open("a") as f:
            f.write(json.dumps({"tag": tag, "step": self.step, "weight_version": self.weight_version, **brief},
                               default=float) + "\n")
        log.info("eval %s (step %d): accuracy %.3f on %d", tag, self.step, res["overall"]["accuracy"], res["n"])
        return brief

    def save(self, directory: Path, export_hf: bool | None = None) -> Path:
        # Batches already sampling (async mode) are not trained yet: the checkpoint's cursor points before them.
        cursor = self._inflight[0].cursor_before if self._inflight else self.cursor.to_dict()
        self.phase.enter(self.step, "saving")
        state = {"step": self.step, "weight_version": self.weight_version, "cursor": cursor,
                 "python_random": repr(random.getstate()), "config": str(self.cfg.trainer.output_dir),
                 "settings": run_settings(to_dict(self.cfg))}
        tidy(self.out)
        files = {}
        if self.tr:  # sealed with the checkpoint: the trace heads of the rows it was trained on up to here
            state["trace_heads"], files = self.tr.checkpoint_files()
        self._guard_learner_call(f"saving {directory}",
                                 lambda: self.ctx.learners.call_all("save_checkpoint", str(directory), state, files,
                                                                    export_hf)[0])
        self.last_checkpoint = str(directory)
        for old in prune(self.out, self.cfg.trainer.keep_last_n):
            log.info("trainer.keep_last_n=%d: removed %s", self.cfg.trainer.keep_last_n, old)
        return directory

    def _resume(self, path: str) -> None:
        # setup() verified the checkpoint against its manifest once, before anything started.
        state = self.ctx.learners.call_all("load_checkpoint", str(path), False)[0]
        self.step = int(state["step"])
        self.weight_version = int(state["weight_version"])
        self.cursor = DataCursor.from_dict(state["cursor"], len(self.ctx.train), self.cfg.trainer.prompts_per_step,
                                           seed=self.cfg.data.seed, shuffle=self.cfg.data.shuffle)
        # The engines started from the base weights: bring them to the checkpoint's.
        self.ctx.weight_sync.push(self.ctx.learners, self.ctx.rollout.workers, self.weight_version)
        self.last_checkpoint = str(path)
        log.info("resumed from %s at step %d (weight version %d)", path, self.step, self.weight_version)

    def shutdown(self) -> None:
        if self.tr:  # a stopped run's rows are kept too (the ledger counts them as abandoned once it is resumed)
            self.tr.close(quiet=True)
        if self.ctx is not None:
            self.ctx.shutdown()


def run_training(cfg) -> dict:
    """Run GRPO as configured; returns the summary also written to ``output_dir/summary.json``."""
    trainer = GRPOTrainer(cfg)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.shutdown()
