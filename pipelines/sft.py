"""Supervised fine-tuning on the GRPO learner: `medr1 sft CONFIG [key=value ...]`.

The same DeepSpeed learner group, with the token-mean negative log-likelihood
of a target completion in place of the GRPO objective. Two targets:
``answer`` (the paper's SFT baseline: the ground-truth letter) and ``format``
(a random option letter: the format warm-start for a randomly initialised model).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning (paper baseline, or the format warm-start)")
    p.add_argument("config", help="YAML config (a path, or a name in configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.target=format sft.epochs=2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    from cluster.connect import connect
    from pipelines.config import REPO_ROOT
    from pipelines.run_setup import ensure_data, ensure_model

    model_path = ensure_model(cfg)
    train, _ = ensure_data(cfg)
    connect(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus, dashboard_host=cfg.cluster.dashboard_host,
            env_vars=dict(cfg.cluster.runtime_env_vars), working_dir_on_path=str(REPO_ROOT))
    s = cfg.sft
    out = run_sft(cfg, model_path, train, s.output_dir, target=s.target, epochs=s.epochs, lr=s.lr)
    print(f"SFT model: {out}")
    return 0


def sft_target_text(record, *, target: str, style: str, reasoning: str, rng: random.Random) -> str:
    from pipelines.prompts import completion_template

    letter = record.answer
    if target == "format":
        letter = "ABCDEFGH"[rng.randrange(len(record.options))]
    return completion_template(dataclasses.replace(record, answer=letter), style, reasoning)


def build_sft_samples(records, tokenizer, *, target: str, style: str, reasoning: str, seed: int = 0) -> list:
    from learner.samples import TrainSample
    from pipelines.prompts import build_messages

    rng = random.Random(seed)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    samples = []
    for r in records:
        prompt = tokenizer.apply_chat_template(build_messages(r, style), tokenize=False, add_generation_prompt=True)
        text = sft_target_text(r, target=target, style=style, reasoning=reasoning, rng=rng)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        image = r.image if isinstance(r.image, bytes) else Path(r.image).read_bytes()
        samples.append(TrainSample(sample_id=f"{r.id}#sft", prompt_text=prompt, image=image, completion_ids=ids,
                                   old_logprobs=[0.0] * len(ids), advantage=0.0))
    return samples


def run_sft(cfg, model_path: str, records: list, out_dir: str, *, target: str, epochs: float, lr: float) -> str:
    """Train and save ``out_dir/hf``; returns that HF model directory."""
    from omegaconf import OmegaConf
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from actors.learner_worker import LearnerGroup

    s = cfg.sft
    records = records[: s.max_records] if s.max_records else records
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    samples = build_sft_samples(records, tokenizer, target=target, style=s.prompt_style.value,
                                reasoning=s.reasoning, seed=cfg.trainer.seed)
    bs = min(s.batch_size, len(samples))
    steps = max(1, math.ceil(len(samples) * epochs / bs))
    learner_cfg = OmegaConf.merge(cfg.learner, {"lr": lr, "lr_scheduler": s.lr_scheduler,
                                                "warmup_ratio": s.warmup_ratio})
    grpo_cfg = OmegaConf.merge(cfg.grpo, {"beta": 0.0, "updates_per_batch": 1, "mini_batches": 1})
    group = LearnerGroup(model_path, learner_cfg, grpo_cfg, total_steps=steps, samples_per_step=bs,
                         learner_kwargs={"dtype": cfg.model.dtype.value, "objective": "sft",
                                         "attn_implementation": cfg.model.attn_implementation,
                                         "seed": cfg.trainer.seed})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.trainer.seed)
    order: list[int] = []
    t0 = time.perf_counter()
    try:
        with (out / "sft_metrics.jsonl").open("a") as f:
            for step in tqdm(range(steps), desc=f"SFT ({target})", unit="step"):
                if len(order) < bs:
                    perm = list(range(len(samples)))
                    rng.shuffle(perm)
                    order.extend(perm)
                batch, order = [samples[i] for i in order[:bs]], order[bs:]
                m = group.train_step(batch)
                f.write(json.dumps({"step": step + 1, **m}, default=float) + "\n")
        group.save_checkpoint(str(out), {"sft_target": target, "steps": steps})
    finally:
        group.shutdown()
    log.info("SFT (%s): %d steps in %.1f min -> %s", target, steps, (time.perf_counter() - t0) / 60, out / "hf")
    return str(out / "hf")
