"""Reading items for pretraining the tiny base: describe the image, then give the letter of the
listed term the description uses.

A real base (Qwen2-VL-2B) comes able to *read*: to match a phrase in its context to the
listed item that says it. A model pretrained on captions alone never learns that, so it
cannot tie what its ``<think>`` says to the letter of a shuffled option (issue 17's
measurements). These items teach that skill on the caption pool alone: the list holds one
fact the caption names and other phrases of the same kind that the pool's captions use
(other modalities, organs, findings, grades, positions), in a random order, and the
target is the caption followed by that fact's letter. The instructions are this file's
own, none of the benchmark's questions; no benchmark image is used (the pool's images
come from other random streams). Deterministic by seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from pipelines.data.captions import Captioned
from pipelines.data.schema import LETTERS, QUESTION_TYPES
from pipelines.data.synthetic import SPECS
from rewards.faithfulness import names_option

READ_INSTRUCTIONS = (
    "Terms: {terms}. Describe the image, then give the letter of the term your description uses.",
    "Describe this medical image. Then name the letter of the listed term it mentions: {terms}.",
    "Listed terms: {terms}. Write a description of the image and end with the letter of the term in it.",
    "Caption the image, then pick the term from this list that the caption contains: {terms}.",
)
# Varied lead-ins before the letter, so the skill is tied to no one surface form.
LEADS = ("Letter: {L}", "Term {L}.", "The listed term is {L}.", "So: {L}", "Mentioned: {L}")


@dataclass(frozen=True)
class ReadingItem:
    id: str
    image: bytes  # PNG
    instruction: str  # the user turn's text (after the image)
    target: str  # the caption, then the lead-in and the letter
    letter: str
    terms: tuple[str, ...]
    fact_type: str  # which kind of fact the listed term is


def phrase_pool() -> dict[str, list[str]]:
    """The phrases the pool's captions use, by question type (a list's other entries come from here)."""
    pool: dict[str, set[str]] = {q: set() for q in QUESTION_TYPES}
    for spec in SPECS.values():
        pool["modality recognition"].add(spec.label)
        pool["anatomy identification"].update(spec.anatomy)
        pool["disease diagnosis"].update(spec.diseases)
        pool["lesion grading"].update(spec.grades)
        pool["other biological attributes"].update(spec.attr_labels)
    return {q: sorted(v) for q, v in pool.items()}


def _others(item: Captioned, qtype: str, rng: random.Random, phrases: dict[str, list[str]]) -> list[str]:
    """Candidate other entries: mostly the same modality's own classes (the hard, fine-grained
    case), sometimes any phrase of the same kind."""
    spec = SPECS[item.modality]
    own = {"modality recognition": [s.label for s in SPECS.values()], "anatomy identification": list(spec.anatomy),
           "disease diagnosis": list(spec.diseases), "lesion grading": list(spec.grades),
           "other biological attributes": list(spec.attr_labels)}[qtype]
    return own if rng.random() < 0.75 else phrases[qtype]


def reading_item(item: Captioned, rng: random.Random, phrases: dict[str, list[str]]) -> ReadingItem:
    """One reading item on ``item``: a fact its caption names, listed among 1-3 others its caption
    does not name, shuffled."""
    facts = dict(item.facts)
    qtype = rng.choice(sorted(facts))
    answer = facts[qtype]
    # Nothing else on the list may be in the caption ("Left" is, inside "Upper left").
    others = sorted({o for o in _others(item, qtype, rng, phrases) if not names_option(item.caption, o)})
    rng.shuffle(others)
    terms = [answer] + others[: rng.choice((1, 2, 3, 3, 3))]
    rng.shuffle(terms)
    letter = LETTERS[terms.index(answer)]
    listing = ", ".join(f"{LETTERS[i]}){t}" for i, t in enumerate(terms))
    return ReadingItem(id=item.id + "-read", image=item.image, instruction=rng.choice(READ_INSTRUCTIONS).format(
        terms=listing), target=f"{item.caption} {rng.choice(LEADS).format(L=letter)}", letter=letter,
        terms=tuple(terms), fact_type=qtype)


def reading_items(pool: list[Captioned], seed: int) -> list[ReadingItem]:
    """One reading item per pool image, deterministic by ``seed``."""
    rng = random.Random(seed * 7919 + 17)
    phrases = phrase_pool()
    return [reading_item(it, rng, phrases) for it in pool]
