"""How fast can the tiny Qwen2-VL learn to answer from the image? Supervised, letter-only.

    .venv/bin/python bench/bench_learnability.py [--model outputs/tiny-qwen2vl] [--steps 300] [--batch 8]
        [--question-types "modality recognition"] [--option-order shuffled|fixed|canonical]

Three targets, trained side by side from the same weights on the same built-in data
(no-think prompt, cross-entropy on the single letter after ``<answer>``):

- ``answer``:   the real task, the letter of the right option;
- ``class``:    option-free, the index of the answer's class in its category (mod 4);
                needs fine-grained, question-dependent perception but no option matching;
- ``modality``: option-free, the modality index (mod 4); a global look.

Supervised letters are an upper bound on what GRPO can learn from the same number of
prompts, so this says whether the embedded default can learn at all in its budget.
With ``--question-types "modality recognition"`` the ``answer`` column shows option
matching (shuffled: not learned) against ``class`` (the same look, no matching: learned);
with ``--option-order canonical`` the answer letter *is* the class.
Prints held-out accuracy at checkpoints, one column per target.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def targets():
    from pipelines.data.schema import LETTERS, MODALITIES
    from pipelines.data.synthetic import SPECS, _classes

    def cls(r):
        return _classes(SPECS[r.modality], r.question_type).index(r.options[LETTERS.index(r.answer)]) % 4

    return {"answer": lambda r: LETTERS.index(r.answer), "class": cls,
            "modality": lambda r: MODALITIES.index(r.modality) % 4}


def train_one(model_dir: str, train, test, target, steps: int, batch: int, lr: float, every: int, seed: int):
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from learner.image_codec import decode_image
    from pipelines.data.schema import LETTERS
    from pipelines.prompts import chat_prompt

    torch.manual_seed(seed)
    rng = random.Random(seed)
    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    letters = [proc.tokenizer.convert_tokens_to_ids(x) for x in LETTERS[:4]]

    def logits(recs):
        texts = [chat_prompt(proc, r, "nothink") + "<answer>" for r in recs]
        images = [decode_image(r.image) for r in recs]
        enc = proc(text=texts, images=images, return_tensors="pt", padding=True)
        return model(**enc).logits[:, -1, letters]

    def accuracy():
        model.eval()
        with torch.no_grad():
            hits = sum(int(p == target(r)) for i in range(0, len(test), 32)
                       for p, r in zip(logits(test[i:i + 32]).argmax(1).tolist(), test[i:i + 32]))
        model.train()
        return hits / len(test)

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    curve = {0: accuracy()}
    for s in range(1, steps + 1):
        recs = rng.sample(train, batch)
        loss = torch.nn.functional.cross_entropy(logits(recs), torch.tensor([target(r) for r in recs]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s % every == 0 or s == steps:
            curve[s] = accuracy()
    return curve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF Qwen2-VL dir (default: build the tiny model in a temp dir)")
    ap.add_argument("--per-cell", type=int, default=60, help="synthetic images per cell (default 60: 2,400 records)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--test", type=int, default=160, help="held-out records scored at each checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--question-types", default="", help="comma-separated subset (default: all five)")
    ap.add_argument("--option-order", default="shuffled", choices=["shuffled", "fixed", "canonical"])
    args = ap.parse_args()

    from tqdm import tqdm

    from pipelines.data.synthetic import build_synthetic

    splits = build_synthetic(per_cell=args.per_cell, image_size=112, option_order=args.option_order)
    wanted = {q.strip() for q in args.question_types.split(",") if q.strip()}
    train, test = ([r for r in splits[k] if not wanted or r.question_type in wanted] for k in ("train", "test"))
    test = test[:: max(1, len(test) // args.test)][: args.test]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from omegaconf import OmegaConf

            from pipelines.config import TinyModelConfig
            from pipelines.models.tiny import build_tiny_model

            model_dir = str(Path(tmp) / "tiny")
            build_tiny_model(model_dir, OmegaConf.structured(TinyModelConfig), max_pixels=112 * 112)
        curves, seconds = {}, {}
        for name, target in tqdm(list(targets().items()), desc="targets", unit="target"):
            t0 = time.perf_counter()
            curves[name] = train_one(model_dir, train, test, target, args.steps, args.batch, args.lr, args.every,
                                     args.seed)
            seconds[name] = time.perf_counter() - t0

    print(f"\nheld-out accuracy (n={len(test)}), letter-only supervised, batch {args.batch}, lr {args.lr}")
    names = list(curves)
    print(f"{'step':>6}" + "".join(f"{n:>12}" for n in names))
    for s in sorted(curves[names[0]]):
        print(f"{s:>6}" + "".join(f"{curves[n][s]:>12.3f}" for n in names))
    print(f"{'secs':>6}" + "".join(f"{seconds[n]:>12.0f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
