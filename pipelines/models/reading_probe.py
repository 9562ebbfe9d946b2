"""Can a base pick the option its own description names? A cheap probe before any GRPO.

On held-out benchmark records (their images and option lists; nothing is trained here) the
base is asked, in the pretraining reading instruction, to describe the image and give the
letter of the listed term it uses. Per question type: how often the letter is right, how
often the description names the right option, and how often the letter is the one its own
description names (of the answers whose description names exactly one option): the skill
GRPO has to connect ``<think>`` to ``<answer>``.
"""
from __future__ import annotations

import re

import torch

from learner.image_codec import decode_image
from pipelines.data.caption_reading import READ_INSTRUCTIONS
from pipelines.data.schema import LETTERS
from pipelines.models.pretrain import describe_prompt
from pipelines.prompts import format_options
from rewards.faithfulness import names_option

# Tokens a reading answer needs: a 15-40 token description, then the term and its letter.
READ_MAX_NEW_TOKENS = 56


def read_instruction(options: list[str]) -> str:
    """The reading instruction on a benchmark record's option list (the probe's, and own_reading's)."""
    return READ_INSTRUCTIONS[0].format(terms=format_options(list(options)))


_LAST_LETTER = re.compile(r"(?<![A-Za-z])([A-H])(?![A-Za-z])[^A-Za-z]*$")


def last_letter(text: str) -> str | None:
    """The letter a reading answer ends with ("... Letter: B" -> "B"), or None."""
    m = _LAST_LETTER.search(text.strip())
    return m.group(1) if m else None


def score_reading(text: str, options: list[str], answer: str) -> dict:
    """One probe answer: is the letter right, does the text name the right option, and (when the text
    names exactly one option) is the letter that option's."""
    letter = last_letter(text)
    named = [i for i, o in enumerate(options) if names_option(text, o)]
    return {"correct": letter == answer, "names_answer": names_option(text, options[LETTERS.index(answer)]),
            "one_named": len(named) == 1, "reads": len(named) == 1 and letter == LETTERS[named[0]]}


@torch.no_grad()
def reading_probe(model, proc, records, *, max_new_tokens: int = READ_MAX_NEW_TOKENS,
                  batch_size: int = 32) -> dict:
    """{question type: {"n", "accuracy", "names_answer", "reads"}} over ``records`` (greedy)."""
    model.eval()
    rows: dict[str, list[dict]] = {}
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        texts = [describe_prompt(proc, read_instruction(r.options)) for r in chunk]
        enc = proc(text=texts, images=[decode_image(r.image) for r in chunk], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        outs = proc.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, out in zip(chunk, outs):
            rows.setdefault(r.question_type, []).append(score_reading(out, list(r.options), r.answer))
    table = {}
    for q, rs in rows.items():
        one = [x for x in rs if x["one_named"]]
        table[q] = {"n": len(rs), "accuracy": sum(x["correct"] for x in rs) / len(rs),
                    "names_answer": sum(x["names_answer"] for x in rs) / len(rs),
                    "reads": sum(x["reads"] for x in one) / len(one) if one else 0.0}
    return table
