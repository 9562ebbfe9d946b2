"""Everything a training run needs before its first step: the model and data on
disk, Ray, a checked resource plan, and the rollout, reward and learner actors."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from transformers import AutoTokenizer

from actors.learner import LearnerGroup
from actors.reward import REWARD_MAX_RESTARTS, RewardActor, score_sharded
from actors.rollout import Colocation, RolloutPool, create_rollout_workers, wait_ready
from actors.weight_sync import make_weight_sync
from cluster.connect import is_local
from cluster.ray_utils import kill_quietly, remove_placement_groups_quietly
from cluster.resources import check_plan, create_placement_groups
from learner import checkpoint_manifest
from learner.image_codec import read_image_bytes
from pipelines.config_checks import sync_backend
from pipelines.data.store import load_prepared
from pipelines.data.synthetic import prepare_synthetic
from pipelines.errors import UserError
from pipelines.launch import REWARD_WORKER_CPUS, connect_ray, core_plan, engine_kwargs, resource_plan, rollout_env
from pipelines.models.checks import refuse_unsafe_model
from pipelines.models.base_build import build_base, check_cached_base
from pipelines.models.tiny import is_model_dir
from pipelines.prompts import chat_prompt
from pipelines.traces import trace_row
from pipelines.training.sft import limit_records, own_reasonings, run_sft

log = logging.getLogger(__name__)


def ensure_model(cfg) -> str:
    path = Path(cfg.model.path)
    refuse_unsafe_model(path, cfg.model.trust_remote_code)
    if is_model_dir(path):
        if cfg.model.build_tiny_if_missing:
            check_cached_base(path, cfg.model.pretrain)
        return str(path)
    if cfg.model.build_tiny_if_missing:
        log.info("building the tiny %s into %s", cfg.model.tiny.family, path)
        build_base(path, cfg.model.tiny, cfg.model.pretrain, min_pixels=cfg.model.min_pixels,
                   max_pixels=cfg.model.max_pixels, progress=cfg.logging.progress)
        return str(path)
    if path.exists() or str(path).startswith(("/", ".")):
        raise UserError(f"model.path '{path}' is not an HF model directory (no config.json + *.safetensors)")
    return str(path)  # a hub id: resolved from the local HF cache by transformers / vLLM


def ensure_data(cfg):
    """(train, test) records, filtered to the configured modalities / question types."""
    d = Path(cfg.data.prepared_dir)
    if cfg.data.source == "synthetic":
        s = cfg.data.synthetic
        wanted = {"seed": s.seed, "per_cell": s.per_cell, "image_size": s.image_size,
                  "test_fraction": s.test_fraction, "option_order": str(s.option_order)}
        if (d / "manifest.json").is_file():
            _check_synthetic_build(d, wanted)
        else:
            log.info("building the synthetic benchmark into %s", d)
            prepare_synthetic(str(d), command="medr1 train (auto)", **wanted)
    train = load_prepared(d, cfg.data.train_split)
    test = load_prepared(d, cfg.data.test_split)

    def keep(r) -> bool:
        return ((not cfg.data.modalities or r.modality in cfg.data.modalities)
                and (not cfg.data.question_types or r.question_type in cfg.data.question_types))

    train, test = [r for r in train if keep(r)], [r for r in test if keep(r)]
    if not train:
        raise UserError(f"no training records in {d} for modalities={list(cfg.data.modalities)} "
                        f"question_types={list(cfg.data.question_types)}")
    return train, test


def _check_synthetic_build(d: Path, wanted: dict) -> None:
    """A synthetic build is reused only if it was built with the configured settings;
    otherwise the run would silently train on other data than its config says."""
    manifest = json.loads((d / "manifest.json").read_text())
    if manifest.get("builder") != "synthetic":
        return  # prepared by hand from another source: the user chose this directory
    built = {"option_order": "shuffled", **manifest}  # builds from before option_order existed were shuffled
    _refuse_other_settings(f"{d} holds a synthetic benchmark", d, built, wanted, "config", "data.prepared_dir")


def _refuse_other_settings(what: str, d: Path, built: dict, wanted: dict, now: str, key: str) -> None:
    differ = [f"{k}={built.get(k)!r} ({now}: {v!r})" for k, v in wanted.items() if built.get(k) != v]
    if differ:
        raise UserError(f"{what} built with other settings: {', '.join(differ)}. "
                        f"Delete {d} to rebuild it, or set {key} to a new directory.")


def records_digest(records: list) -> str:
    """Short hash of what a warm-start learns from: ids, options and answers, in order."""
    text = "\n".join(f"{r.id}|{r.answer}|{'|'.join(r.options)}" for r in records)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_warmstart(cfg, model_path: str, train: list) -> str:
    """The format warm-start (SFT on random letters) the run starts from, built once if configured.

    ``warmstart.json`` records what it was built from; a later run with other settings is
    stopped instead of silently starting from a policy trained for another prompt or data."""
    if not cfg.sft.warmstart_dir:
        return model_path
    d = Path(cfg.sft.warmstart_dir)
    hf, record = d / "hf", d / "warmstart.json"
    wanted = {"base_model": str(model_path), "prompt_style": str(cfg.sft.prompt_style),
              "epochs": float(cfg.sft.warmstart_epochs), "lr": float(cfg.sft.warmstart_lr),
              # what the warm-start trains on: sft.max_records trims the split first
              "train_records": records_digest(limit_records(train, cfg.sft.max_records)),
              "reasoning": str(cfg.sft.warmstart_reasoning)}
    if is_model_dir(hf):
        try:
            checkpoint_manifest.verify(d)
        except checkpoint_manifest.CheckpointError as e:  # an interrupted build, or changed since: build anew
            log.warning("the format warm-start is built again: %s", e)
        else:
            # warm-starts from before warmstart_reasoning existed used the fixed sentence
            built = {"reasoning": "fixed", **json.loads(record.read_text())} if record.is_file() else {}
            _refuse_other_settings(f"the format warm-start in {d} was", d, built, wanted, "now", "sft.warmstart_dir")
            return str(hf)
    log.info("format warm-start of %s into %s", model_path, hf)
    run_sft(cfg, model_path, train, cfg.sft.warmstart_dir, target="format",
            epochs=cfg.sft.warmstart_epochs, lr=cfg.sft.warmstart_lr, reasonings=own_reasonings(cfg, model_path, train))
    record.write_text(json.dumps(wanted, indent=2))
    return str(hf)


@dataclass
class RunContext:
    cfg: Any
    model_path: str
    train: list
    test: list
    tokenizer: Any
    rollout: Any  # actors.rollout.RolloutPool
    reward_workers: list
    learners: Any  # actors.learner.LearnerGroup
    weight_sync: Any
    placement_groups: dict = field(default_factory=dict)
    colocation: Any = None  # actors.rollout.Colocation when cluster.colocate
    _payloads: dict = field(default_factory=dict)
    _image_hashes: dict = field(default_factory=dict)  # id(payload image bytes) -> SHA-256; payloads are kept
    reward_stats: dict = field(default_factory=dict)  # reward_rescored: completions scored again after a death

    def prompt_payload(self, record) -> dict:
        """The rollout request for a record: chat-templated prompt text and PNG bytes."""
        p = self._payloads.get(record.id)
        if p is None:
            text = chat_prompt(self.tokenizer, record, self.cfg.data.prompt_style)
            image = read_image_bytes(record.image)
            p = {"id": record.id, "prompt": text, "image": image}
            self._payloads[record.id] = p
        return p

    def score(self, texts: list[str], answers: list[str]) -> list[dict]:
        return score_sharded(self.reward_workers, texts, answers, stats=self.reward_stats)

    def trace_row(self, record, comp: dict, score: dict, *, step: int, version: int, worker: int,
                  sample_index: int, advantage: float, weights_sha256: str = "", sampling: dict | None = None) -> dict:
        """The trace row of one scored training completion (the reward components give its flags)."""
        comps = score["components"]
        acc = comps.get("accuracy_strict", comps.get("accuracy"))
        fmt = next((comps[k] for k in ("format", "format_nothink", "format_think_after", "format_strict",
                                       "format_strict_nothink") if k in comps), None)
        image = self.prompt_payload(record)["image"]
        sampling = dict(sampling or {})
        return trace_row(record, comp, kind="train", run=Path(self.cfg.trainer.output_dir).name,
                         model=self.model_path, step=step, weight_version=version, worker=worker,
                         image_sha256=self._image_sha256(image), sample_index=sample_index,
                         correct=bool(acc), format_ok=bool(fmt), reward=score["total"], reward_components=comps,
                         advantage=advantage, weights_sha256=weights_sha256, seed=sampling.pop("seed", -1),
                         sampling=sampling, image_png=image)

    def _image_sha256(self, image: bytes) -> str:
        # The same payload bytes come back G times a step: hash each image once per run.
        key = id(image)
        if key not in self._image_hashes:
            self._image_hashes[key] = _sha256(image)
        return self._image_hashes[key]

    def shutdown(self) -> None:
        try:
            self.learners.shutdown()
        except Exception:
            pass
        kill_quietly(list(self.rollout.workers) + list(self.reward_workers))
        remove_placement_groups_quietly(self.placement_groups.values())


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def start_run(cfg) -> RunContext:
    model_path = ensure_model(cfg)
    train, test = ensure_data(cfg)
    plan = resource_plan(cfg)
    local = is_local(cfg.cluster.address)
    info = connect_ray(cfg, wanted_cpus=plan.totals().get("CPU", 1))
    model_path = ensure_warmstart(cfg, model_path, train)
    print(plan.table(info["resources"]))
    if info.get("dashboard_url"):
        print(f"Ray dashboard: {info['dashboard_url']}")
    check_plan(plan, info["resources"])
    pgs = create_placement_groups(plan)

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    R, N = cfg.rollout.num_workers, cfg.learner.num_workers
    ro = cfg.rollout.resources_per_worker
    cores = core_plan(cfg)  # on one machine's CPUs: which cores each actor computes on (cluster/cores.py)
    if cores is not None:
        log.info("cores: rollout %s, learner %s%s", cores.rollout, cores.learner,
                 " (disjoint: async overlap)" if cores.overlapped else " (each phase uses every core)")
    rollout_workers = create_rollout_workers(
        R, engine_kwargs(cfg, model_path), num_cpus=ro.num_cpus, num_gpus=ro.num_gpus,
        custom_resources=dict(ro.custom),
        env_vars=[rollout_env(cfg, i, cores.rollout[i] if cores else None) for i in range(R)],
        placement_group=pgs["rollout"], bundle_indices=list(range(R)), max_restarts=3)
    reward_workers = [RewardActor.options(name=f"reward-{i}", num_cpus=REWARD_WORKER_CPUS,
                                          max_restarts=REWARD_MAX_RESTARTS)
                      .remote(dict(cfg.reward.functions)) for i in range(cfg.reward.num_workers)]
    if cfg.cluster.colocate:
        # The engines size their memory when they start: they must be up and asleep before the
        # learner ranks allocate on the same devices, and wake only once those are set up.
        log.info("rollout actors ready: %s", wait_ready(rollout_workers))
        ray.get([w.sleep.remote(cfg.rollout.sleep_level) for w in rollout_workers])
    learner_env = {k: str(v) for k, v in cfg.cluster.runtime_env_vars.items()}
    if cfg.learner.resources_per_worker.num_gpus == 0:
        # Ray would set OMP_NUM_THREADS to the nominal CPU share (1); with a core plan each rank also
        # sets its torch threads to its cores whenever a phase starts (actors/phase_threads.py).
        learner_env["OMP_NUM_THREADS"] = str(len(cores.learner[0])) if cores else \
            str(max(1, (os.cpu_count() or 1) // N)) if local else str(int(cfg.learner.resources_per_worker.num_cpus))
    total_steps = cfg.trainer.total_steps if cfg.trainer.total_steps > 0 else max(
        1, len(train) * cfg.trainer.epochs // cfg.trainer.prompts_per_step)
    learners = LearnerGroup(
        model_path, cfg.learner, cfg.grpo, total_steps=total_steps,
        samples_per_step=cfg.trainer.prompts_per_step * cfg.rollout.group_size,
        placement_group=pgs["learner"], bundle_indices=list(range(N)), env=learner_env,
        cores=cores.learner if cores else None,
        learner_kwargs={"dtype": cfg.model.dtype, "attn_implementation": cfg.model.attn_implementation,
                        "temperature": cfg.rollout.temperature, "seed": cfg.trainer.seed})
    if cfg.cluster.colocate:
        ray.get([w.wake_up.remote() for w in rollout_workers])
    else:
        log.info("rollout actors ready: %s", wait_ready(rollout_workers))
    ws = cfg.weight_sync
    sync = make_weight_sync(str(sync_backend(cfg)), bucket_size_mb=ws.bucket_size_mb, timeout_s=ws.timeout_s,
                            verify=str(ws.verify), dtype=str(cfg.model.dtype), tp_size=cfg.rollout.tensor_parallel_size)
    ctx = RunContext(cfg, model_path, train, test, tokenizer, None, reward_workers, learners, sync, pgs)

    def catch_up(worker) -> None:
        # A restarted actor came back with the base weights: it rejoins the push (a broadcast group is
        # re-formed with it) and takes the current weights before it samples.
        version = max(ray.get([w.get_weight_version.remote() for w in rollout_workers if w is not worker]
                              or [0]))
        if version > 0:
            sync.rejoin(learners, rollout_workers, worker, version)

    ctx.rollout = RolloutPool(rollout_workers, on_restart=catch_up)
    if cfg.cluster.colocate:
        ctx.colocation = Colocation(ctx.rollout, cfg.rollout.sleep_level)
    return ctx
