"""Can the tiny base learn to read, text only? The matching skill of issue 17 on its own.

A fresh tiny model (the default dims) trains on text-only reading items
(``pipelines/data/caption_reading.py``: a caption given as text, a lettered list of pool
phrases; the target is the term the caption names, then its letter) and is scored greedily
every ``--every`` steps on held-out items (other caption-pool seeds): how often it says the
right term, and how often its letter is that term's. No image, no benchmark record.

    .venv/bin/python bench/bench_text_reading.py --steps 900 --batch 32 --lr 1e-3
    .venv/bin/python bench/bench_text_reading.py --steps 600 --lead "{T}: {L}"   # one lead-in only
    .venv/bin/python bench/bench_text_reading.py --steps 600 --lead "{E}, so {L}"   # read the list out
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from tqdm import tqdm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=150)
    ap.add_argument("--test", type=int, default=64, help="held-out items scored at each checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=16, help="greedy answer length (48 for {E} lead-ins)")
    ap.add_argument("--lead", action="append", default=None,
                    help="a lead-in with {T} (the term), {L} (its letter) and {E} (the list read out up to the term, "
                         "each judged yes/no) instead of the built-in ones; repeatable")
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from pipelines.config import TinyModelConfig
    from pipelines.data.caption_reading import LEADS, phrase_pool, text_item
    from pipelines.data.captions import build_caption_pool
    from pipelines.data.schema import LETTERS
    from pipelines.models.pretrain import _load, caption_loss, describe_prompt
    from pipelines.models.reading_probe import last_letter
    from pipelines.models.tiny import build_tiny_model

    torch.manual_seed(args.seed)
    rng, phrases, leads = random.Random(args.seed), phrase_pool(), tuple(args.lead or LEADS)
    pool = build_caption_pool(seed=1000, per_cell=20)
    held = build_caption_pool(seed=1001, per_cell=max(1, args.test // 40 + 1))
    test = [text_item(c, random.Random(i), phrases, leads) for i, c in enumerate(held)][: args.test]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tmp, OmegaConf.structured(TinyModelConfig), 3136, 112 * 112)
        proc, model = _load(tmp)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

        @torch.no_grad()
        def score() -> tuple[float, float]:
            model.eval()
            enc = proc(text=[describe_prompt(proc, it.instruction, image=False) for it in test], return_tensors="pt",
                       padding=True)
            gen = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
            outs = proc.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            model.train()
            term = sum(it.terms[LETTERS.index(it.letter)] in o for it, o in zip(test, outs)) / len(test)
            letter = sum(last_letter(o) == it.letter for it, o in zip(test, outs)) / len(test)
            return term, letter

        t0 = time.perf_counter()
        rows.append((0, *score(), 0.0))
        model.train()
        for s in tqdm(range(1, args.steps + 1), desc="text reading", unit="step"):
            batch = [text_item(pool[rng.randrange(len(pool))], rng, phrases, leads) for _ in range(args.batch)]
            loss = caption_loss(model, proc, batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if s % args.every == 0 or s == args.steps:
                rows.append((s, *score(), (time.perf_counter() - t0) / 60))
    print(f"\ntext-only reading, fresh tiny base, batch {args.batch}, lr {args.lr} (n={len(test)} held-out items)"
          + (f", lead-ins {args.lead}" if args.lead else ""))
    print(f"{'step':>6} {'term right':>11} {'letter right':>13} {'minutes':>8}")
    for s, term, letter, minutes in rows:
        print(f"{s:>6} {term:>11.3f} {letter:>13.3f} {minutes:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
