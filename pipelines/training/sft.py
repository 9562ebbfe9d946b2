"""Supervised fine-tuning on the GRPO learner (``medr1 sft``).

The same DeepSpeed learner group, with the token-mean negative log-likelihood
of a target completion in place of the GRPO objective. Two targets:
``answer`` (the paper's SFT baseline: the ground-truth letter) and ``format``
(a random option letter: the format warm-start for a randomly initialised model).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path

from tqdm import tqdm
from transformers import AutoTokenizer

from actors.learner import LearnerGroup
from learner.image_codec import read_image_bytes
from learner.samples import TrainSample
from pipelines.data.schema import LETTERS
from pipelines.prompts import chat_prompt, completion_template

log = logging.getLogger(__name__)


def sft_target_text(record, *, target: str, style: str, reasoning: str, rng: random.Random) -> str:
    letter = record.answer
    if target == "format":
        letter = LETTERS[rng.randrange(len(record.options))]
    return completion_template(dataclasses.replace(record, answer=letter), style, reasoning)


def build_sft_samples(records, tokenizer, *, target: str, style: str, reasoning: str, seed: int = 0,
                      reasonings: dict[str, str] | None = None) -> list:
    """``reasonings``: a ``<think>`` text per record id (else ``reasoning`` for every record)."""
    rng = random.Random(seed)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    samples = []
    for r in records:
        prompt = chat_prompt(tokenizer, r, style)
        text = sft_target_text(r, target=target, style=style, rng=rng,
                               reasoning=reasonings[r.id] if reasonings else reasoning)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        image = read_image_bytes(r.image)
        samples.append(TrainSample(sample_id=f"{r.id}#sft", prompt_text=prompt, image=image, completion_ids=ids,
                                   old_logprobs=[0.0] * len(ids), advantage=0.0))
    return samples


def limit_records(records: list, n: int | None) -> list:
    """At most ``n`` records, spread evenly over the list (records come grouped by modality and
    question type, so the first ``n`` would cover only a few of them)."""
    if not n or n >= len(records):
        return list(records)
    return [records[i * len(records) // n] for i in range(n)]


def own_reasonings(cfg, model_path: str, records: list) -> dict[str, str] | None:
    """The base model's own greedy words for each record, by record id, or None (``sft.warmstart_reasoning=fixed``).
    ``own_caption``: its description of the image (no label, question or option goes in). ``own_reading``: its
    answer to the pretraining reading instruction on the record's option list (the description, then the listed
    term it names and that term's letter; no label goes in)."""
    mode = str(cfg.sft.warmstart_reasoning)
    if mode not in ("own_caption", "own_reading"):
        return None
    from pipelines.models.pretrain import describe  # torch generation in this process

    records = limit_records(records, cfg.sft.max_records)
    images = [read_image_bytes(r.image) for r in records]
    if mode == "own_reading":
        from pipelines.models.reading_probe import READ_MAX_NEW_TOKENS, read_instruction

        texts = describe(model_path, images, progress=cfg.logging.progress, max_new_tokens=READ_MAX_NEW_TOKENS,
                         instructions=[read_instruction(r.options) for r in records])
    else:
        texts = describe(model_path, images, progress=cfg.logging.progress)
    return {r.id: t for r, t in zip(records, texts)}


def run_sft(cfg, model_path: str, records: list, out_dir: str, *, target: str, epochs: float, lr: float,
            reasonings: dict[str, str] | None = None) -> str:
    """Train and save ``out_dir/hf``; returns that HF model directory. ``reasonings``: per-record think text."""
    s = cfg.sft
    records = limit_records(records, s.max_records)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    samples = build_sft_samples(records, tokenizer, target=target, style=s.prompt_style,
                                reasoning=s.reasoning, seed=cfg.trainer.seed, reasonings=reasonings)
    bs = min(s.batch_size, len(samples))
    steps = max(1, math.ceil(len(samples) * epochs / bs))
    learner_cfg = dataclasses.replace(cfg.learner, lr=lr, lr_scheduler=s.lr_scheduler, warmup_ratio=s.warmup_ratio)
    grpo_cfg = dataclasses.replace(cfg.grpo, beta=0.0, updates_per_batch=1, mini_batches=1)
    group = LearnerGroup(model_path, learner_cfg, grpo_cfg, total_steps=steps, samples_per_step=bs,
                         learner_kwargs={"dtype": cfg.model.dtype, "objective": "sft",
                                         "attn_implementation": cfg.model.attn_implementation,
                                         "seed": cfg.trainer.seed})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if reasonings:  # what the warm-start was taught to write, kept for the audit
        with (out / "reasonings.jsonl").open("w") as f:
            f.writelines(json.dumps({"id": k, "reasoning": v}) + "\n" for k, v in reasonings.items())
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
        # export_hf: the SFT model is a plain HF model (merged under LoRA): a run or `medr1 evaluate` starts from it.
        group.call_all("save_checkpoint", str(out), {"sft_target": target, "steps": steps}, None, True)
    finally:
        group.shutdown()
    log.info("SFT (%s): %d steps in %.1f min -> %s", target, steps, (time.perf_counter() - t0) / 60, out / "hf")
    return str(out / "hf")
