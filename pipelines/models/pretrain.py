"""Perception pretraining of the tiny base: next-token captioning on the caption pool.

A randomly initialised 4.3M model has no perception to reason from; a real base
(Qwen2-VL-2B) comes pretrained on image-text pairs. This gives ours the same kind of
start, locally: cross-entropy on the caption tokens (``pipelines/data/captions.py``)
after an image and a "describe" turn, every parameter trained (vision tower included).
Plain torch in this process: no Ray, no DeepSpeed, so it starts in seconds.
Deterministic for a seed (fixed step count, seeded order; one thread pool).

``describe`` is the same model's own greedy description of images, used as the
``<think>`` text of the format warm-start and to measure what the base perceives.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from learner.image_codec import decode_image
from pipelines.data.caption_reading import phrase_pool, reading_item, text_item
from pipelines.data.captions import DESCRIBE_PROMPT, build_caption_pool
from rewards.faithfulness import names_option

log = logging.getLogger(__name__)
MARKER = "medr1_pretrain.json"


def describe_prompt(processor, text: str = DESCRIBE_PROMPT, image: bool = True) -> str:
    content = [{"type": "image"}] if image else []
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _load(model_dir: str | Path):
    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"  # the caption is then the last n tokens of every row
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    return proc, model


def caption_loss(model, proc, items, eos: str = "<|im_end|>", letter_weight: float = 1.0):
    """Mean cross-entropy over the target tokens (and the closing eos) of ``items``: a caption pool
    item (describe -> caption) or a reading item (list + instruction -> caption, letter). A reading
    item's letter gets ``letter_weight`` more: one token among ~30, it is the skill being taught."""
    turns = [(getattr(it, "instruction", DESCRIBE_PROMPT), getattr(it, "target", None) or it.caption) for it in items]
    texts = [describe_prompt(proc, text, it.image is not None) + target + eos for it, (text, target) in zip(items, turns)]
    images = [decode_image(it.image) for it in items if it.image is not None]
    enc = proc(text=texts, images=images or None, return_tensors="pt", padding=True)
    labels = torch.full_like(enc["input_ids"], -100)
    letter_rows = []
    for row, (_, target) in enumerate(turns):
        n = len(proc.tokenizer(target + eos, add_special_tokens=False)["input_ids"])
        labels[row, -n:] = enc["input_ids"][row, -n:]
        if getattr(items[row], "letter", None):
            letter_rows.append(row)  # the letter is the token before the closing eos
    logits = model(**enc).logits[:, :-1].float()
    shifted = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                           ignore_index=-100, reduction="none").view(shifted.shape)
    loss = ce.sum() / (shifted != -100).sum()
    if letter_rows and letter_weight:
        loss = loss + letter_weight * ce[letter_rows, -2].mean()
    return loss


def pretrain_captioning(model_dir: str | Path, *, seed: int = 1000, per_cell: int = 40, steps: int = 600,
                        batch_size: int = 16, lr: float = 1e-3, image_size: int = 112,
                        progress: bool = True, max_seconds: float = 0.0, check_per_cell: int = 2,
                        reading: float = 0.0, text_reading: float = 0.0) -> dict:
    """Train ``model_dir``'s weights in place on captions; writes ``medr1_pretrain.json``; returns it.

    ``reading``: the share of each batch that is a reading item (``pipelines/data/caption_reading.py``) on
    the same pool images; the rest is plain captioning. ``text_reading``: that share of ``batch_size`` again,
    as text-only reading items added to each batch (the matching alone, on the pool's captions). ``max_seconds`` > 0 stops early (for exploring; the build itself uses a fixed step count, so a
    seed gives the same weights on any machine)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    pool = build_caption_pool(seed=seed, per_cell=per_cell, image_size=image_size)
    proc, model = _load(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(  # short warm-up, then cosine to 10%
        opt, lambda s: min(1.0, (s + 1) / 30) * (0.55 + 0.45 * torch.cos(torch.tensor(s / steps * 3.14159)).item()))
    rng = random.Random(seed)
    read_rng, phrases = random.Random(seed + 1), phrase_pool()
    n_read, n_text = round(batch_size * reading), round(batch_size * text_reading)
    order: list[int] = []
    losses = []
    bar = tqdm(range(steps), desc="caption pretraining", unit="step", disable=not progress)
    for _ in bar:
        if len(order) < batch_size:
            perm = list(range(len(pool)))
            rng.shuffle(perm)
            order.extend(perm)
        batch, order = [pool[i] for i in order[:batch_size]], order[batch_size:]
        # A fresh list for each reading item, so no list is learned by heart.
        batch = ([reading_item(it, read_rng, phrases) for it in batch[:n_read]] + batch[n_read:]
                 + [text_item(pool[read_rng.randrange(len(pool))], read_rng, phrases) for _ in range(n_text)])
        loss = caption_loss(model, proc, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if max_seconds and time.perf_counter() - t0 > max_seconds:
            break
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    # What it perceives: its own captions of unseen pool images (check_per_cell per cell; 0: skip).
    held = build_caption_pool(seed=seed + 1, per_cell=check_per_cell, image_size=image_size) if check_per_cell else []
    perception = perception_by_type(describe(model_dir, [h.image for h in held], progress=False, model=model,
                                             proc=proc), held) if held else {}
    record = {"seed": seed, "per_cell": per_cell, "steps": len(losses), "batch_size": batch_size, "lr": lr,
              "reading": reading, "text_reading": text_reading,
              "image_size": image_size, "pool_images": len(pool),
              "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
              "seconds": round(time.perf_counter() - t0, 1),
              # share of its own captions of unseen images (8 x check_per_cell per type) naming the drawn fact
              "perception": {q: round(v, 3) for q, v in perception.items()}}
    (Path(model_dir) / MARKER).write_text(json.dumps(record, indent=2))
    log.info("caption pretraining: %d steps in %.1f min, loss %.3f; own captions name the drawn fact: %s",
             len(losses), record["seconds"] / 60, record["final_loss"], record["perception"])
    return record


def pretrained_settings(model_dir: str | Path) -> dict | None:
    p = Path(model_dir) / MARKER
    return json.loads(p.read_text()) if p.is_file() else None


@torch.no_grad()
def describe(model_dir: str | Path, images: list[bytes], *, max_new_tokens: int = 40, batch_size: int = 32,
             progress: bool = True, model=None, proc=None, instructions: list[str] | None = None) -> list[str]:
    """The model's own greedy description of each PNG image (special tokens dropped); ``instructions``:
    the user turn for each image instead of the describe prompt."""
    if model is None:
        proc, model = _load(model_dir)
    model.eval()
    prompts = [describe_prompt(proc, t) for t in instructions] if instructions else [describe_prompt(proc)] * len(images)
    out: list[str] = []
    for i in tqdm(range(0, len(images), batch_size), desc="describing images", unit="batch", disable=not progress):
        chunk = images[i:i + batch_size]
        enc = proc(text=prompts[i:i + batch_size], images=[decode_image(b) for b in chunk], return_tensors="pt",
                   padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        new = gen[:, enc["input_ids"].shape[1]:]
        out.extend(t.strip() for t in proc.tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def perception_by_type(captions: list[str], items) -> dict[str, float]:
    """Share of generated captions naming the fact each image was drawn for, per question type."""
    hits: dict[str, list[int]] = {}
    for cap, it in zip(captions, items):
        hits.setdefault(it.question_type, []).append(int(names_option(cap, it.label)))
    return {q: sum(v) / len(v) for q, v in hits.items()}
