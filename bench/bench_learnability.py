"""How fast can the tiny Qwen2-VL learn to answer from the image? Supervised, letter-only.

    .venv/bin/python bench/bench_learnability.py [--model outputs/tiny-qwen2vl] [--steps 300] [--batch 8]
        [--question-types "modality recognition"] [--option-order shuffled|fixed|canonical]
        [--pretrain-steps 800] [--targets answer,class]

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
Prints held-out accuracy at checkpoints, one column per target, and the final accuracy per
question type.

``--pretrain-steps N`` (issue 17) builds a caption-pretrained copy of the same random base
(``pipelines/models/pretrain.py``, N steps on the separate caption pool) and trains both
side by side: each column is ``target/base``, so the per-question-type table shows what
caption pretraining changes for each type. It also prints how often each base's own
caption of an unseen pool image names the drawn fact (the perception the warm-start's
``<think>`` text carries), per question type.

    .venv/bin/python bench/bench_learnability.py --pretrain-steps 800 --targets class,answer --steps 150

``--pretrain-reading 0.5`` makes half of each pretraining batch a reading item (the caption,
then the letter of the listed pool term it names; ``pipelines/data/caption_reading.py``), and
``--steps 0`` skips the supervised training: then it only prints, per base and question type,
the reading probe (``pipelines/models/reading_probe.py``): given a held-out benchmark image
and its shuffled options, does the base's own description name the answer, is its letter
right, and is its letter the one its own description names.

    .venv/bin/python bench/bench_learnability.py --pretrain-steps 600 --pretrain-reading 0.5 --steps 0
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


def train_one(model_dir: str, train, test, target, steps: int, batch: int, lr: float, every: int, seed: int,
              by_type: dict | None = None):
    """Held-out accuracy curve {step: acc}; ``by_type`` (if given) gets the final accuracy per question type."""
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
            hits = [int(p == target(r)) for i in range(0, len(test), 32)
                    for p, r in zip(logits(test[i:i + 32]).argmax(1).tolist(), test[i:i + 32])]
        model.train()
        if by_type is not None:
            for q in {r.question_type for r in test}:
                got = [h for h, r in zip(hits, test) if r.question_type == q]
                by_type[q] = sum(got) / len(got)
        return sum(hits) / len(test)

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


def build_bases(tmp: str, model: str | None, pretrain_steps: int, pretrain_per_cell: int,
                reading: float = 0.0, text_reading: float = 0.0) -> dict[str, str]:
    """{"random": dir} (or the given --model), plus {"captioned": dir} when ``pretrain_steps`` > 0."""
    from omegaconf import OmegaConf

    from pipelines.config import CaptionPretrainConfig, TinyModelConfig
    from pipelines.models.base_build import build_base

    tiny = OmegaConf.structured(TinyModelConfig)
    bases = {"random": model} if model else {}
    if not model:
        bases["random"] = str(build_base(Path(tmp) / "random", tiny, OmegaConf.structured(CaptionPretrainConfig),
                                         min_pixels=3136, max_pixels=112 * 112))
    if pretrain_steps > 0:
        pre = OmegaConf.structured(CaptionPretrainConfig)
        pre.enabled, pre.steps, pre.per_cell, pre.reading = True, pretrain_steps, pretrain_per_cell, reading
        pre.text_reading = text_reading
        t0 = time.perf_counter()
        bases["captioned"] = str(build_base(Path(tmp) / "captioned", tiny, pre, min_pixels=3136,
                                            max_pixels=112 * 112))
        print(f"caption pretraining: {pretrain_steps} steps in {(time.perf_counter() - t0) / 60:.1f} min")
    return bases


def caption_perception(model_dir: str, n_per_cell: int = 3) -> dict[str, float]:
    """Share of the base's own captions of unseen pool images that name the drawn fact, per question type."""
    from pipelines.data.captions import build_caption_pool
    from pipelines.models.pretrain import describe, perception_by_type

    held = build_caption_pool(seed=424242, per_cell=n_per_cell)  # neither the benchmark nor the training pool
    return perception_by_type(describe(model_dir, [h.image for h in held], progress=False), held)


def probe(model_dir: str, test) -> dict:
    from pipelines.models.pretrain import _load
    from pipelines.models.reading_probe import reading_probe

    proc, model = _load(model_dir)
    return reading_probe(model, proc, test)


def print_reading(reading: dict, n: int) -> None:
    print(f"\nreading probe (n={n}): own description names the answer / letter right / letter is the one "
          "its description names")
    for base, table in reading.items():
        print(f"  {base}")
        for q in sorted(table):
            t = table[q]
            print(f"    {q:<30} {t['names_answer']:.3f}  {t['accuracy']:.3f}  {t['reads']:.3f}  (n={t['n']})")


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
    ap.add_argument("--targets", default="answer,class,modality", help="comma-separated subset of the targets")
    ap.add_argument("--pretrain-steps", type=int, default=0,
                    help="> 0: also caption-pretrain a copy of the base this many steps and train both side by side")
    ap.add_argument("--pretrain-per-cell", type=int, default=40, help="caption pool images per cell")
    ap.add_argument("--pretrain-reading", type=float, default=0.0, help="share of reading items in pretraining")
    ap.add_argument("--pretrain-text-reading", type=float, default=0.0,
                    help="text-only reading items added to each pretraining batch, as a share of its size")
    args = ap.parse_args()

    from tqdm import tqdm

    from pipelines.data.synthetic import build_synthetic

    splits = build_synthetic(per_cell=args.per_cell, image_size=112, option_order=args.option_order)
    wanted = {q.strip() for q in args.question_types.split(",") if q.strip()}
    train, test = ([r for r in splits[k] if not wanted or r.question_type in wanted] for k in ("train", "test"))
    test = test[:: max(1, len(test) // args.test)][: args.test]
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    curves, seconds, by_type, perception = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        bases = build_bases(tmp, args.model, args.pretrain_steps, args.pretrain_per_cell, args.pretrain_reading,
                            args.pretrain_text_reading)
        reading = {b: probe(d, test) for b, d in bases.items()}
        runs = [(b, t) for b in bases for t in chosen] if args.steps > 0 else []
        for base, name in tqdm(runs, desc="targets", unit="target"):
            col = name if len(bases) == 1 else f"{name}/{base}"
            t0 = time.perf_counter()
            by_type[col] = {}
            curves[col] = train_one(bases[base], train, test, targets()[name], args.steps, args.batch, args.lr,
                                    args.every, args.seed, by_type=by_type[col])
            seconds[col] = time.perf_counter() - t0
        if "captioned" in bases:
            perception = {b: caption_perception(d) for b, d in bases.items()}

    print_reading(reading, len(test))
    if not curves:
        return 0
    print(f"\nheld-out accuracy (n={len(test)}), letter-only supervised, batch {args.batch}, lr {args.lr}")
    names = list(curves)
    w = max(12, max(len(n) for n in names) + 2)
    print(f"{'step':>6}" + "".join(f"{n:>{w}}" for n in names))
    for s in sorted(curves[names[0]]):
        print(f"{s:>6}" + "".join(f"{curves[n][s]:>{w}.3f}" for n in names))
    print(f"{'secs':>6}" + "".join(f"{seconds[n]:>{w}.0f}" for n in names))
    print(f"\nafter {args.steps} steps, by question type (n per type in parentheses)")
    qtypes = sorted({r.question_type for r in test})
    counts = {q: sum(r.question_type == q for r in test) for q in qtypes}
    print(f"{'question type':<34}" + "".join(f"{n:>{w}}" for n in names))
    for q in qtypes:
        print(f"{q + f' ({counts[q]})':<34}" + "".join(f"{by_type[n].get(q, 0):>{w}.3f}" for n in names))
    if perception:
        print("\nthe base's own caption names the drawn fact (unseen pool images, 24 per type)")
        print(f"{'question type':<34}" + "".join(f"{b:>{w}}" for b in perception))
        for q in qtypes:
            print(f"{q:<34}" + "".join(f"{perception[b].get(q, 0):>{w}.3f}" for b in perception))
    return 0


if __name__ == "__main__":
    sys.exit(main())
