"""Reading items for pretraining the tiny base: describe the image, then give the listed term the
description uses and its letter.

A real base (Qwen2-VL-2B) comes able to *read*: to match a phrase in its context to the
listed item that says it. A model pretrained on captions alone never learns that, so it
cannot tie what its ``<think>`` says to the letter of a shuffled option (issue 17's
measurements). These items teach that skill on the caption pool alone: the list holds one
fact the caption names and other phrases of the same kind that the pool's captions use
(other modalities, organs, findings, grades, positions), in a random order, and the
target is the caption, then that fact said again and its letter. Text-only items give the
caption as text and ask only for the term and its letter. The instructions are this file's
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
# Text-only reading: the words to read are given, not the image's own caption. Cheap (no image)
# and the matching on its own, so a few thousand items teach it; the same leads close them.
TEXT_INSTRUCTIONS = (
    "Terms: {terms}. Text: {text} Which listed term does the text use? Give its letter.",
    "Listed terms: {terms}. Read this: {text} Name the term it mentions and its letter.",
    "{text} Of the terms {terms}, which one appears above? Answer with the term and its letter.",
)
# Varied lead-ins before the letter, so the skill is tied to no one surface form. Each says the
# term again just before its letter: the letter is then the token before that term in the list,
# a two-step lookup (the term, then its letter) a small transformer learns far sooner than
# finding the term inside a whole caption and its letter in one step. The letter comes last.
LEADS = ("{T}: {L}", "The listed term is {T}, letter {L}", "It names {T}, so {L}", "Mentioned: {T} = {L}",
         "{T} is listed as {L}")


@dataclass(frozen=True)
class ReadingItem:
    id: str
    image: bytes | None  # PNG; None for a text-only item
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


def _listing(item: Captioned, rng: random.Random, phrases: dict[str, list[str]], leads: tuple[str, ...] = LEADS):
    """A fact ``item``'s caption names, listed among 1-3 others its caption does not name, shuffled:
    (fact type, terms, the fact's letter, the lettered list, the lead-in that closes the target)."""
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
    # {E}: the list read out in order up to the term, each judged ("A)Chest no, B)Head yes"): every step is a
    # copy forward or a yes/no, and the letter to answer is the last one written.
    walk = ", ".join(f"{LETTERS[i]}){t} {'yes' if t == answer else 'no'}"
                     for i, t in enumerate(terms[:terms.index(answer) + 1]))
    return qtype, tuple(terms), letter, listing, rng.choice(leads).format(T=answer, L=letter, E=walk)


def reading_item(item: Captioned, rng: random.Random, phrases: dict[str, list[str]]) -> ReadingItem:
    """One reading item on ``item``'s image: describe it, then the term its caption names and that term's letter."""
    qtype, terms, letter, listing, lead = _listing(item, rng, phrases)
    return ReadingItem(id=item.id + "-read", image=item.image, instruction=rng.choice(READ_INSTRUCTIONS).format(
        terms=listing), target=f"{item.caption} {lead}", letter=letter, terms=terms, fact_type=qtype)


def text_item(item: Captioned, rng: random.Random, phrases: dict[str, list[str]],
              leads: tuple[str, ...] = LEADS) -> ReadingItem:
    """One text-only reading item (no image): ``item``'s caption is given; the target is the term it
    names and that term's letter, closed by one of ``leads``."""
    qtype, terms, letter, listing, lead = _listing(item, rng, phrases, leads)
    return ReadingItem(id=item.id + "-text", image=None, instruction=rng.choice(TEXT_INSTRUCTIONS).format(
        terms=listing, text=item.caption), target=lead, letter=letter, terms=terms, fact_type=qtype)


def reading_items(pool: list[Captioned], seed: int) -> list[ReadingItem]:
    """One reading item per pool image, deterministic by ``seed``."""
    rng = random.Random(seed * 7919 + 17)
    phrases = phrase_pool()
    return [reading_item(it, rng, phrases) for it in pool]
