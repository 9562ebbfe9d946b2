"""The caption pool a tiny base is pretrained on: synthetic images described in free text.

What a real VLM's pretraining gives it, in miniature: for each image, what it shows
(modality, organ, finding, grade, position / colour / cell count) in varied sentences.
The images are drawn by the benchmark's own drawing code from *other* random streams
(``[seed, modality, question type, POOL_STREAM]`` where the benchmark draws from
``[seed, modality, question type]``), so no benchmark image is seen; no question or
option list is written. The words used for a fact are the category's own labels
("Grade 2", "Upper left", "Hemorrhage"), so a caption can later be matched to option text.
Deterministic by seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learner.image_codec import encode_png
from pipelines.data.schema import MODALITIES, QUESTION_TYPES
from pipelines.data.synthetic import _QUAD_SIGNS, CELL_COUNTS, QUADRANTS, SPECS, _classes, _key, _scene

POOL_STREAM = 7919  # a fourth seed word: the benchmark's streams have three
DESCRIBE_PROMPT = "Describe this medical image."

_MODALITY = ("{mod} image of the {anat}.", "A {mod} scan showing the {anat}.", "{Anat}, imaged with {mod}.",
             "This {mod} picture shows the {anat}.", "Modality: {mod}. Region: {anat}.")
_FINDING = ("It shows {f}.", "Finding: {f}.", "There is {f}.", "The image suggests {f}.", "Diagnosis: {f}.")
_NORMAL = ("No abnormality is seen.", "Finding: No abnormality.", "It looks normal: No abnormality.")
_GRADE = ("The lesion is {g}.", "Severity: {g}.", "It would be graded {g}.", "Grade seen: {g}.")
_PLACE = ("The lesion lies in the {a} part.", "Position: {a}.", "The lesion is at the {a} region.")
_COLOR = ("The lesion is {a}.", "Colour: {a}.", "Its dominant color is {a}.")
_COUNT = ("Cell count: {a}.", "The field has {a}.", "It shows {a}.")


@dataclass(frozen=True)
class Captioned:
    id: str
    image: bytes  # PNG
    caption: str
    modality: str
    question_type: str  # which benchmark category the scene was drawn for
    label: str  # the class drawn for that category (e.g. "Grade 2"), always named in the caption
    facts: tuple[tuple[str, str], ...] = ()  # (question type, label) of every fact the caption names


def _finding_label(spec, finding: str) -> str:
    for label in spec.diseases:
        if _key(label) == finding:
            return label
    return finding.capitalize()


def _grade(spec, scene) -> str | None:
    """The grade the drawn lesion has (its size or count nearest a grade's), for the graded finding."""
    if scene.finding != spec.grade_finding:
        return None
    v = scene.count if spec.grade_by == "count" else scene.size
    return spec.grades[min(range(len(spec.grades)), key=lambda k: abs(spec.grade_values[k] - v))]


def _attribute(spec, scene) -> str | None:
    """Where the lesion is, its colour or the cell count, when the drawing shows it."""
    dx, dy = scene.loc
    if spec.attr == "location" and scene.finding == spec.attr_finding and min(abs(dx), abs(dy)) > 0.08:
        return QUADRANTS[_QUAD_SIGNS.index((1 if dx > 0 else -1, 1 if dy > 0 else -1))]
    if spec.attr == "row" and scene.finding == spec.attr_finding and scene.size > 0:
        return spec.attr_labels[0 if dx < -0.12 else 2 if dx > 0.12 else 1]
    if spec.attr == "color" and scene.finding == spec.attr_finding:
        return scene.color.capitalize()
    if spec.attr == "count" and scene.finding == "normal" and scene.count > 0:
        return next(lab for lab, (lo, hi) in zip(spec.attr_labels, CELL_COUNTS) if lo <= scene.count <= hi)
    return None


def caption_facts(spec, scene) -> dict[str, str]:
    """Every fact a caption of ``scene`` names, by the question type it would answer: its label."""
    anat = next((a for a in spec.anatomy if _key(a) == scene.anatomy), scene.anatomy.capitalize())
    facts = {"modality recognition": spec.label, "anatomy identification": anat}
    # A graded finding at grade 0 (size or count 0) is not drawn at all.
    drawn = scene.finding != spec.grade_finding or (scene.count if spec.grade_by == "count" else scene.size) > 0
    if spec.code == "derm":  # every dermoscopy image shows a lesion; "normal" is not one of its classes
        if scene.finding != "colored":
            facts["disease diagnosis"] = _finding_label(spec, scene.finding)
    elif scene.finding not in ("normal", "colored") and drawn:
        facts["disease diagnosis"] = _finding_label(spec, scene.finding)
    else:
        facts["disease diagnosis"] = "No abnormality"
    if (grade := _grade(spec, scene)) is not None:
        facts["lesion grading"] = grade
    if (attr := _attribute(spec, scene)) is not None:
        facts["other biological attributes"] = attr
    return facts


def caption_for(spec, qtype: str, label: str, scene, rng) -> str:
    """One free-text caption of a drawn ``scene``: every fact the drawing shows, whichever question
    type it was drawn for (so what a caption says depends on the image alone), in varied words."""
    f = caption_facts(spec, scene)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    facts = []
    if "lesion grading" in f:
        facts.append(pick(_GRADE).format(g=f["lesion grading"]))
    if "other biological attributes" in f:
        facts.append(pick({"color": _COLOR, "count": _COUNT}.get(spec.attr, _PLACE))
                     .format(a=f["other biological attributes"]))
    if len(facts) > 1 and rng.uniform() < 0.3:  # free order
        facts.reverse()
    finding = f.get("disease diagnosis", "")
    if spec.code == "derm":
        pick(_NORMAL if finding == "" else _FINDING)  # a draw the pool has always made here: same captions by seed
    finding = pick(_NORMAL) if finding == "No abnormality" else pick(_FINDING).format(f=finding) if finding else ""
    anat = f["anatomy identification"]
    return " ".join(x for x in [pick(_MODALITY).format(mod=spec.label, anat=anat, Anat=anat), finding, *facts] if x)


def build_caption_pool(seed: int = 1000, per_cell: int = 40, image_size: int = 112) -> list[Captioned]:
    """``per_cell`` captioned images per (modality, question type) scene kind, deterministic by seed.
    ``label`` of each item is the fact its scene was drawn for (what a caption must get right)."""
    if per_cell < 1:
        raise ValueError("per_cell must be at least 1")
    out = []
    for mi, modality in enumerate(MODALITIES):
        spec = SPECS[modality]
        for qi, qtype in enumerate(QUESTION_TYPES):
            rng = np.random.default_rng([seed, mi, qi, POOL_STREAM])
            classes = _classes(spec, qtype)
            for i in range(per_cell):
                label = spec.label if qtype == "modality recognition" else classes[i % len(classes)]
                scene = _scene(spec, qtype, label, rng)
                img = spec.draw(rng, image_size, scene)
                out.append(Captioned(id=f"cap-{spec.code}-{qi}-{i:04d}", image=encode_png(img),
                                     caption=caption_for(spec, qtype, label, scene, rng), modality=modality,
                                     question_type=qtype, label=label,
                                     facts=tuple(caption_facts(spec, scene).items())))
    return out
