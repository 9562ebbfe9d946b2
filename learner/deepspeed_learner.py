"""One DeepSpeed ZeRO rank of the GRPO learner.

The caller (``actors.learner`` or a test) sets the torch.distributed env vars
(MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) before constructing it.

Decisions:
- Optimizer: ``torch.optim.AdamW`` passed to DeepSpeed as a client optimizer (runs on CPU
  and GPU without compiling ops). With ``offload_optimizer`` DeepSpeed's CPU AdamW is used
  instead (DeepSpeed JIT-builds its cpu_adam op; gcc + ninja needed).
- Micro-batches (a sample count or a token budget), mini-batch bounds and the loss weights that
  make gradient accumulation exact over ranks and micro-batches: ``learner/micro_batches.py``.
- Layout: by default each prompt runs once per micro-batch for all its completions
  (``learner/shared_prefix.py``); ``learner.shared_prefix=false`` uses
  one prompt + completion row per sample (``learner/policy.py``). Policy and reference use the same.
- Reference model (only when beta > 0): ``learner/reference.py``. Its log-probs are computed
  once per ``train_step`` and reused across ``updates_per_batch`` passes.
- One pass over the rank's samples = ``mini_batches`` optimizer steps (the micro-batches are
  split into that many contiguous mini-batches, each normalised over its own global counts);
  ``updates_per_batch`` passes repeat that. The clipped ratio against the sampling log-probs
  keeps the later steps on the same rollouts honest (PPO-style). The LR schedule counts
  optimizer steps (total_steps * updates_per_batch * mini_batches).
- LoRA (``learner.lora.rank > 0``, ``learner/lora.py``): PEFT adapters on the language model, the
  rest frozen; the reference is the same module with the adapter disabled; pushes and the HF
  export send merged weights; checkpoints hold the adapter and the trainable state only.
- Policy weights are loaded in full on every rank and partitioned by ``deepspeed.initialize``
  (fine up to a few B parameters; a ``zero.Init`` load path would be needed for much larger models).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import deepspeed
import torch
import torch.distributed as dist

from learner import checkpoint_manifest, checkpoint_save, lora
from learner.ds_config import build_ds_config, build_scheduler
from learner.ds_safe_load import use_weights_only_loads
from learner.image_codec import decode_image
from learner.micro_batches import count_minis, token_minis, weighted_micro_batches
from learner.objectives import grpo_objective, sft_objective
from learner.policy import (
    build_inputs,
    completion_logprobs,
    encode_prompts,
    exported_parameters,
    load_policy,
    load_processor,
    prompt_key,
    resolve_dtype,
    to_device,
    vision_token_ids,
)
from learner.reference import adapter_disabled_logprobs, build_reference
from learner.samples import TrainSample, dummy_sample
from learner.shared_prefix import build_prefix_inputs, shared_prefix_logprobs
from learner.weights_digest import weights_digest

log = logging.getLogger(__name__)
GAP_WARN_NATS = 0.1

_DS_TAG = checkpoint_save.DS_TAG
CLIENT_STATE = checkpoint_save.CLIENT_STATE  # the client state again, as JSON


class GRPOLearner:
    def __init__(self, model_path: str, learner_cfg, grpo_cfg, *, total_steps: int,
                 samples_per_step_per_rank: int, dtype: str = "float32", temperature: float = 1.0,
                 attn_implementation: str = "sdpa", seed: int = 0, objective: str = "grpo"):
        self.cfg, self.grpo = learner_cfg, grpo_cfg
        if objective not in ("grpo", "sft"):
            raise ValueError(f"objective must be grpo or sft, got {objective!r}")
        # "sft": token-mean negative log-likelihood of the given completions (SFT baseline, warm-start).
        self.objective = objective
        self.model_path = str(model_path)
        self.temperature = float(temperature)
        backend = learner_cfg.dist_backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=str(backend))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.stage = int(learner_cfg.zero_stage)
        # Counts and other small collectives go through a gloo group (works with nccl too, CPU tensors).
        self._cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else None
        torch.manual_seed(seed)

        self.processor = load_processor(self.model_path)
        self.pad_id = self.processor.tokenizer.pad_token_id
        self.eos_id = self.processor.tokenizer.eos_token_id
        self._dummy = dummy_sample(self.eos_id)

        model = load_policy(self.model_path, dtype=dtype, attn_implementation=attn_implementation)
        model.config.use_cache = False
        if learner_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora_cfg = getattr(learner_cfg, "lora", None)
        self.lora = lora_cfg is not None and int(lora_cfg.rank) > 0
        if self.lora:
            model = lora.apply_lora(model, lora_cfg)
        trainable, total = lora.trainable_counts(model)
        self.param_counts = {"trainable": trainable, "total": total}
        model.train()

        self.updates_per_batch = max(1, int(grpo_cfg.updates_per_batch))
        self.mini_batches = max(1, int(grpo_cfg.mini_batches))
        opt_steps = max(1, int(total_steps) * self.updates_per_batch * self.mini_batches)
        client_opt = not learner_cfg.offload_optimizer
        ds_config = build_ds_config(learner_cfg, world_size=self.world_size,
                                    samples_per_step_per_rank=samples_per_step_per_rank,
                                    client_optimizer=client_opt)
        optimizer = None
        if client_opt:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=float(learner_cfg.lr),
                                          betas=tuple(float(b) for b in learner_cfg.adam_betas),
                                          eps=1e-8, weight_decay=float(learner_cfg.weight_decay))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config,
            lr_scheduler=lambda opt: build_scheduler(opt, learner_cfg.lr_scheduler, opt_steps,
                                                     float(learner_cfg.warmup_ratio)),
            model_parameters=None if client_opt else [p for p in model.parameters() if p.requires_grad])
        use_weights_only_loads(self.engine)  # a resumed state file never runs pickled code
        self.device = self.engine.device
        self.compute_dtype = torch.bfloat16 if learner_cfg.bf16 else resolve_dtype(dtype)
        self.ds_config = ds_config

        self.ref = None
        self.beta = float(grpo_cfg.beta)
        if self.beta > 0 and not self.lora:  # under LoRA the reference is the base: the adapter disabled
            self.ref = build_reference(self.model_path, dtype, attn_implementation, self.stage, ds_config,
                                       learner_cfg.bf16, self.device, self.compute_dtype)
        self.optimizer_steps = 0
        self._gap_warned = False
        self.shared_prefix = bool(learner_cfg.shared_prefix)
        self._encoded: dict = {}  # prompt key -> processor output, within one train_step
        self._vision_ids = set(vision_token_ids(self.processor.tokenizer))  # masked out of the loss
        self.save_wait_s = checkpoint_save.SAVE_WAIT_S  # how long a save waits for a rank before naming it
        log.info("GRPOLearner rank %d/%d: ZeRO-%d, backend %s, %d of %d parameters trained, ds_config %s",
                 self.rank, self.world_size, self.stage, backend, trainable, total, json.dumps(ds_config))

    # ------------------------------------------------------------------ helpers
    def _all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, op=op, group=self._cpu_group)
        return t

    def _local_grad_norm(self) -> Optional[float]:
        # ZeRO-0 does not report a norm; after the boundary backward the grads are already rank-averaged.
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return None
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def _ref_logprobs(self, b) -> torch.Tensor:
        if self.ref is not None:
            return self._logprobs(self.ref, b)[0]
        return adapter_disabled_logprobs(self.engine.module, self._logprobs, b)  # LoRA: no second copy

    def _minis(self, samples: list[TrainSample]) -> list[list[list[TrainSample]]] | None:
        """This rank's micro-batches per mini-batch: a fixed sample count, or packed by padded tokens."""
        reduce_max = lambda t: self._all_reduce(t, dist.ReduceOp.MAX)  # noqa: E731
        budget = int(self.cfg.max_tokens_per_micro_batch)
        if budget <= 0:
            ranges = count_minis(len(samples), self.cfg.micro_batch_size, self.mini_batches, reduce_max)
        else:
            enc = encode_prompts(self.processor, samples, self._encoded)  # reused by _batch
            items = [(prompt_key(s), enc[prompt_key(s)][0].numel(), len(s.completion_ids)) for s in samples]
            ranges = token_minis(items, budget, self.shared_prefix, self.mini_batches, self.cfg.micro_batch_size,
                                 reduce_max)
        return None if ranges is None else [[samples[a:b] for a, b in m] for m in ranges]

    def _plan(self, samples: list[TrainSample], loss_agg: str):
        minis = self._minis(samples)
        if minis is None:
            return None
        return weighted_micro_batches(minis, loss_agg, self.world_size,
                                      lambda t: self._all_reduce(t, dist.ReduceOp.MAX), self._all_reduce,
                                      samples[:1] or [self._dummy],
                                      lambda s: sum(t not in self._vision_ids for t in s.completion_ids))

    def _batch(self, samples):
        build = build_prefix_inputs if self.shared_prefix else build_inputs
        return to_device(build(self.processor, samples, self.pad_id, self._encoded), self.device,
                         float_dtype=self.compute_dtype)

    def _logprobs(self, model, b, compute_entropy: bool = False):
        fn = shared_prefix_logprobs if self.shared_prefix else completion_logprobs
        return fn(model, b, self.temperature, compute_entropy=compute_entropy)

    # ------------------------------------------------------------------ training
    def train_step(self, samples: list[TrainSample]) -> dict[str, float]:
        t0 = time.perf_counter()
        self._encoded.clear()
        g = self.grpo
        loss_agg = "token_mean" if self.objective == "sft" else str(g.loss_agg)
        plan = self._plan(samples, loss_agg)
        if plan is None:
            return {"skipped": 1.0, "num_samples": 0.0, "learner_time": time.perf_counter() - t0}
        micro, bounds = plan
        n_mini = len(bounds) - 1
        batches = [self._batch(c) for c, _ in micro]
        self._encoded.clear()

        ref_logps: list[Optional[torch.Tensor]] = [None] * len(batches)
        if self.beta > 0:
            with torch.no_grad():
                for i, b in enumerate(batches):
                    ref_logps[i] = self._ref_logprobs(b)

        sums: dict[str, float] = {}
        wsum = 0.0
        grad_norms, lrs = [], []
        loss_total, n_steps = 0.0, 0
        gap = [0.0, 0.0]  # the first mini-batch's |learner - sampler| log-prob: nothing has been updated yet
        self.engine.train()
        for update in range(self.updates_per_batch):
            for j in range(n_mini):
                for i in range(bounds[j], bounds[j + 1]):
                    b, (c, w) = batches[i], micro[i]
                    self.engine.set_gradient_accumulation_boundary(i == bounds[j + 1] - 1)
                    logp, ent = self._logprobs(self.engine, b, compute_entropy=True)
                    if self.objective == "sft":
                        loss, m = sft_objective(logp, b, ent)
                    else:
                        loss, m = grpo_objective(logp, b, ref_logps[i], g, ent)
                    self.engine.backward(loss * w, scale_wrt_gas=False)
                    if w > 0:
                        loss_total += float(m["loss"]) * w
                        nb = float(len(c))
                        wsum += nb
                        for k, v in m.items():
                            if k != "num_tokens":
                                sums[k] = sums.get(k, 0.0) + float(v) * nb
                        if update == 0 and j == 0 and "logprob_gap" in m:
                            gap[0] += float(m["logprob_gap"]) * nb
                            gap[1] += nb
                lrs.append(float(self.scheduler.get_last_lr()[0]))
                pre_norm = self._local_grad_norm() if self.stage == 0 else None
                self.engine.step()
                self.optimizer_steps += 1
                n_steps += 1
                gn = self.engine.get_global_grad_norm()
                if gn is None:
                    gn = pre_norm
                if gn is not None:
                    grad_norms.append(float(gn))

        metrics = {k: v / wsum for k, v in sums.items()} if wsum > 0 else {}
        # loss: this rank's share of the global objective times world size, so the rank mean is the global loss.
        metrics["loss"] = loss_total / max(n_steps, 1)
        metrics["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        metrics["lr"] = lrs[0]
        metrics["num_tokens"] = float(sum(len(s.completion_ids) for s in samples))
        metrics["num_samples"] = float(len(samples))
        # Sampled vision special tokens (vLLM is told not to sample them): fed as pad and not trained on.
        metrics["vision_tokens_masked"] = float(sum(int(b["vision_tokens"]) for b, (_, w) in zip(batches, micro) if w > 0))
        metrics["optimizer_steps"] = float(self.optimizer_steps)
        if gap[1] > 0:
            metrics["rollout_logprob_gap"] = gap[0] / gap[1]
            self._warn_gap(metrics["rollout_logprob_gap"])
        metrics["learner_time"] = time.perf_counter() - t0
        return metrics

    def _warn_gap(self, value: float) -> None:
        """Once: sampler and learner disagree on the log-probs of the same tokens under the same weights,
        so the importance ratio measures that gap, not the update (a push that did not land everywhere,
        a dtype or kernel difference). 0.1 nats per token is far above float rounding."""
        if value > GAP_WARN_NATS and not self._gap_warned:
            self._gap_warned = True
            log.warning("the rollout engine's log-probs differ from the learner's by %.3f nats per token on average "
                        "before any update (rollout_logprob_gap); the engine may be sampling from other weights than "
                        "the learner's (check weight_sync.verify) or in another precision", value)

    # ------------------------------------------------------------------ weights
    def _gathered_params(self):
        """Yield (in-memory name, checkpoint name, full tensor on CPU or None off rank 0). Collective under ZeRO-3."""
        module = self.engine.module
        for name, ck, p in exported_parameters(module):
            if self.stage == 3 and hasattr(p, "ds_id"):
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    t = p.data.detach().to("cpu").contiguous().clone() if self.rank == 0 else None
            else:
                t = p.detach().to("cpu").contiguous().clone() if self.rank == 0 else None
            yield name, ck, t

    def gather_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """Full weights under vLLM/checkpoint names on rank 0 (None elsewhere). All ranks must call."""
        out = {ck: t for _, ck, t in self._gathered_params()}
        return out if self.rank == 0 else None

    def weights_sha256(self) -> Optional[str]:
        """``learner/weights_digest.py`` of the weights a push sends, on rank 0 (None elsewhere). All ranks call."""
        return weights_digest((ck, t) for _, ck, t in self._gathered_params())

    def save_checkpoint(self, directory: str, client_state: Optional[dict] = None,
                        files: Optional[dict[str, str]] = None, export_hf: Optional[bool] = None) -> str:
        """``dir/hf`` (safetensors + config + processor, rank 0) and ``dir/deepspeed`` (engine state). Collective.

        Under LoRA ``dir/adapter`` holds the adapter, ``dir/deepspeed`` only the trainable state, and
        ``dir/hf`` (the merged model) is written only when ``export_hf`` (default: without LoRA only).
        ``files``: small text files (relative path -> text) sealed with it, e.g. the trace heads.
        Written into a staging sibling, sealed, then renamed to ``dir`` (``learner.checkpoint_atomic``):
        a crash or a full disk mid-save leaves the previous checkpoints as they were. A failure on one rank
        is raised on every rank, naming it, never left for the others to wait on (``learner.checkpoint_save``)."""
        export_hf = (not self.lora) if export_hf is None else bool(export_hf)
        return checkpoint_save.save_checkpoint(self, directory, client_state, files, export_hf, self.save_wait_s)

    def load_checkpoint(self, directory: str, verify: bool = True) -> dict:
        """Restore weights, optimizer and scheduler from ``dir/deepspeed``; returns the saved client_state.
        A checkpoint whose files do not match its manifest is refused (CheckpointError names the file);
        ``verify=False`` when the caller has just checked it (hashing is not repeated on every rank)."""
        if verify:
            checkpoint_manifest.verify(directory)
        path, client = self.engine.load_checkpoint(str(Path(directory) / "deepspeed"), tag=_DS_TAG,
                                                   load_optimizer_states=True, load_lr_scheduler_states=True,
                                                   load_module_strict=not self.lora)  # LoRA: the adapter only
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}/deepspeed")
        client = client or {}
        self.optimizer_steps = int(client.get("medr1_optimizer_steps", self.optimizer_steps))
        return dict(client.get("medr1_client_state", {}))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def greedy_generate(self, prompt_text: str, image_png: bytes, max_new_tokens: int) -> list[int]:
        """HF greedy decoding of one prompt. Under ZeRO-3 with >1 rank every rank must call it."""
        enc = self.processor(text=[prompt_text], images=[decode_image(image_png)], return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        enc["pixel_values"] = enc["pixel_values"].to(self.compute_dtype)
        module = self.engine.module
        was_training = module.training
        module.eval()
        try:
            out = module.generate(**enc, max_new_tokens=int(max_new_tokens), do_sample=False, use_cache=True,
                                  synced_gpus=(self.stage == 3 and self.world_size > 1))
        finally:
            module.train(was_training)
        return out[0, enc["input_ids"].shape[1]:].tolist()

