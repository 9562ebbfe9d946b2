"""A synthetic medical VQA benchmark whose answers are determined by what is drawn.

Eight modalities, each with its own look (see ``synthetic_draw*``), and questions
of all five Med-R1 question types: modality recognition, anatomy identification
(drawn anatomy variants), disease diagnosis (lesion kinds drawn distinctly),
lesion grading (lesion size or count) and other biological attributes (lesion
position, lesion colour or cell count). One question per image; the train/test
split is by image. Deterministic by seed: the same seed gives byte-identical
images and records.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from learner.image_codec import encode_png
from pipelines.choices import OptionOrder
from pipelines.data.preview import write_preview
from pipelines.data.schema import LETTERS, MODALITIES, QUESTION_TYPES, VQARecord
from pipelines.data.store import write_prepared
from pipelines.data.synthetic_draw import Scene, draw_ct, draw_mri, draw_oct, draw_ultrasound, draw_xray
from pipelines.data.synthetic_draw_color import draw_dermoscopy, draw_fundus, draw_microscopy

QUADRANTS = ("Upper left", "Upper right", "Lower left", "Lower right")
_QUAD_SIGNS = ((-1, -1), (1, -1), (-1, 1), (1, 1))
GRADES4 = ("Grade 0", "Grade 1", "Grade 2", "Grade 3")


@dataclass(frozen=True)
class ModalitySpec:
    code: str  # id part: syn-<code>-<qcode>-NNNN
    label: str  # as an answer option
    word: str  # inside question text
    draw: Callable
    anatomy: tuple[str, ...]  # option labels; the drawing key is label.lower(); first = default
    diseases: tuple[str, ...]  # option labels; "No abnormality" draws "normal"
    disease_size: float
    grades: tuple[str, ...]
    grade_finding: str
    grade_values: tuple  # lesion radius (fraction) or count, per grade
    grade_by: str  # "size" or "count"
    attr: str  # "location", "row", "color" or "count"
    attr_labels: tuple[str, ...]
    loc_offset: tuple[float, float] = (0.17, 0.17)
    attr_finding: str = ""
    attr_size: float = 0.1


SPECS: dict[str, ModalitySpec] = {
    "CT": ModalitySpec("ct", "CT", "CT", draw_ct, ("Head", "Chest", "Abdomen"),
                       ("No abnormality", "Hemorrhage", "Cyst", "Skull fracture"), 0.13,
                       GRADES4, "hemorrhage", (0, 0.06, 0.12, 0.2), "size", "location", QUADRANTS,
                       attr_finding="hemorrhage"),
    "MRI": ModalitySpec("mri", "MRI", "MRI", draw_mri, ("Brain", "Knee", "Spine"),
                        ("No abnormality", "Tumor", "Stroke", "Hydrocephalus"), 0.11,
                        GRADES4, "tumor", (0, 0.06, 0.11, 0.17), "size", "location", QUADRANTS,
                        loc_offset=(0.15, 0.18), attr_finding="tumor", attr_size=0.09),
    "X-ray": ModalitySpec("xray", "X-ray", "X-ray", draw_xray, ("Chest", "Hand", "Knee"),
                          ("No abnormality", "Pneumonia", "Nodule", "Cardiomegaly"), 0.07,
                          GRADES4, "nodule", (0, 0.045, 0.08, 0.12), "size", "location", QUADRANTS,
                          loc_offset=(0.19, 0.13), attr_finding="nodule", attr_size=0.07),
    "ultrasound": ModalitySpec("us", "Ultrasound", "ultrasound", draw_ultrasound, ("Liver", "Heart", "Fetus"),
                               ("No abnormality", "Cyst", "Stone", "Mass"), 0.11,
                               GRADES4, "cyst", (0, 0.05, 0.09, 0.14), "size", "location", QUADRANTS,
                               loc_offset=(0.14, 0.15), attr_finding="cyst", attr_size=0.08),
    "dermoscopy": ModalitySpec("derm", "Dermoscopy", "dermoscopy", draw_dermoscopy, ("Trunk", "Palm or sole", "Nail"),
                               ("Nevus", "Melanoma", "Vascular lesion", "Seborrheic keratosis"), 0.16,
                               ("Grade 1", "Grade 2", "Grade 3"), "nevus", (0.08, 0.16, 0.26), "size",
                               "color", ("Brown", "Black", "Red", "Blue"), attr_finding="colored", attr_size=0.17),
    "fundus photography": ModalitySpec(
        "fundus", "Fundus photography", "fundus", draw_fundus, ("Macula", "Optic disc", "Peripheral retina"),
        ("No abnormality", "Diabetic retinopathy", "Glaucoma", "Retinal vein occlusion"), 0.0,
        ("No DR", "Mild DR", "Moderate DR", "Severe DR"), "diabetic retinopathy", (0, 3, 7, 14), "count",
        "location", QUADRANTS, loc_offset=(0.18, 0.18), attr_finding="hemorrhage", attr_size=0.09),
    "OCT": ModalitySpec("oct", "OCT", "OCT", draw_oct, ("Macula", "Optic nerve head", "Cornea"),
                        ("No abnormality", "Macular edema", "Drusen", "Macular hole"), 0.07,
                        GRADES4, "macular edema", (0, 0.035, 0.06, 0.085), "size", "row",
                        ("Left", "Centre", "Right"), loc_offset=(0.25, 0.0), attr_finding="macular edema",
                        attr_size=0.065),
    "microscopy": ModalitySpec("micro", "Microscopy", "microscopy", draw_microscopy,
                               ("Blood", "Epithelial tissue", "Muscle tissue"),
                               ("No abnormality", "Sickle cell anemia", "Leukemia"), 0.0,
                               GRADES4, "leukemia", (0, 2, 5, 10), "count", "count",
                               ("Few cells", "Moderate number of cells", "Many cells"), attr_finding="normal"),
}
assert tuple(SPECS) == MODALITIES
CELL_COUNTS = ((3, 6), (12, 18), (34, 44))  # red cells for few / moderate / many

QCODES = dict(zip(QUESTION_TYPES, ("mr", "ai", "dd", "lg", "oba")))
TEMPLATES = {
    "modality recognition": ("What imaging modality was used to acquire this image?",
                             "Which imaging technique produced this picture?",
                             "What type of medical imaging is shown here?",
                             "This image was captured with which modality?"),
    "anatomy identification": ("Which anatomical region is shown in this {mod} image?",
                               "What part of the body does this {mod} image show?",
                               "Which structure is depicted in this image?"),
    "disease diagnosis": ("What abnormality, if any, is visible in this {mod} image?",
                          "Which diagnosis best matches this {mod} image?",
                          "What finding does this image show?",
                          "Based on this {mod} image, what is the most likely diagnosis?"),
    "lesion grading": ("What is the grade of the lesion in this {mod} image?",
                       "How severe is the lesion shown in this image?",
                       "Which grade best describes the findings in this {mod} image?"),
    "location": ("In which part of the image is the lesion located?",
                 "Where is the lesion in this {mod} image?",
                 "Which region of the image contains the lesion?"),
    "row": ("In which part of the scan is the fluid pocket located?",
            "Where is the lesion in this {mod} image?",
            "Which region of the image contains the lesion?"),
    "color": ("What color is the lesion in this dermoscopy image?",
              "Which color best describes the lesion?",
              "What is the dominant color of the skin lesion?"),
    "count": ("How many cells are visible in this microscopy image?",
              "What is the cell density in this field?",
              "How would you describe the number of cells in this image?"),
}
OPTION_COUNTS, OPTION_COUNT_P = (4, 3, 2), (0.7, 0.15, 0.15)
# Distractor-only options (never drawn, never the answer) for categories with three drawn
# classes, so those questions can have four options too and answer letters stay balanced.
EXTRA_DISTRACTORS = {
    ("CT", "anatomy identification"): ("Pelvis", "Neck"),
    ("MRI", "anatomy identification"): ("Shoulder", "Abdomen"),
    ("X-ray", "anatomy identification"): ("Skull", "Pelvis"),
    ("ultrasound", "anatomy identification"): ("Kidney", "Thyroid"),
    ("dermoscopy", "anatomy identification"): ("Face", "Scalp"),
    ("fundus photography", "anatomy identification"): ("Iris", "Lens"),
    ("OCT", "anatomy identification"): ("Lens", "Choroid"),
    ("microscopy", "anatomy identification"): ("Bone tissue", "Nerve tissue"),
    ("dermoscopy", "lesion grading"): ("Grade 4",),
    ("OCT", "other biological attributes"): ("Top edge", "Bottom edge"),
    ("microscopy", "other biological attributes"): ("No cells",),
    ("microscopy", "disease diagnosis"): ("Malaria", "Spherocytosis"),
}


def _key(label: str) -> str:
    return "normal" if label == "No abnormality" else label.lower()


def _scene(spec: ModalitySpec, qtype: str, label: str, rng) -> Scene:
    """What to draw so that ``label`` is the right answer to a ``qtype`` question."""
    default = _key(spec.anatomy[0])
    small = (rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06))
    if qtype == "modality recognition":
        if rng.uniform() < 0.6:
            return Scene(anatomy=_key(spec.anatomy[int(rng.integers(len(spec.anatomy)))]),
                         finding="nevus" if spec.code == "derm" else "normal", size=0.14)
        qtype, label = "disease diagnosis", spec.diseases[int(rng.integers(len(spec.diseases)))]
    if qtype == "anatomy identification":
        return Scene(anatomy=_key(label), finding="nevus" if spec.code == "derm" else "normal", size=0.12)
    if qtype == "disease diagnosis":
        sc = Scene(anatomy=default, finding=_key(label), size=spec.disease_size, loc=small)
        if spec.code == "xray":
            sc.loc = (rng.choice([-1, 1]) * 0.19, 0.12 if label == "Pneumonia" else rng.uniform(-0.12, 0.12))
        if spec.code == "fundus":
            sc.count = 12
        if spec.code == "micro":  # blasts for leukemia; red cells keep their usual number
            sc.count = 6 if label == "Leukemia" else 0
        if spec.code == "oct":
            sc.loc = (0.0, 0.0)
        return sc
    if qtype == "lesion grading":
        v = spec.grade_values[spec.grades.index(label)]
        sc = Scene(anatomy=default, finding=spec.grade_finding, loc=small)
        if spec.grade_by == "size":
            sc.size = v
        else:
            sc.count = v
        if spec.code == "xray":
            sc.loc = (rng.choice([-1, 1]) * 0.19, rng.uniform(-0.05, 0.05))
        if spec.code == "oct":
            sc.loc = (0.0, 0.0)
        return sc
    # other biological attributes
    i = spec.attr_labels.index(label)
    sc = Scene(anatomy=default, finding=spec.attr_finding, size=spec.attr_size)
    dx, dy = spec.loc_offset
    if spec.attr == "location":
        sx, sy = _QUAD_SIGNS[i]
        sc.loc = (sx * dx + rng.uniform(-0.02, 0.02), sy * dy + rng.uniform(-0.02, 0.02))
    elif spec.attr == "row":
        sc.loc = ((i - 1) * dx + rng.uniform(-0.02, 0.02), 0.0)
    elif spec.attr == "color":
        sc.color = label.lower()
    else:
        sc.count = int(rng.integers(CELL_COUNTS[i][0], CELL_COUNTS[i][1] + 1))
    return sc


def _classes(spec: ModalitySpec, qtype: str) -> tuple[str, ...]:
    return {"modality recognition": tuple(s.label for s in SPECS.values()),
            "anatomy identification": spec.anatomy, "disease diagnosis": spec.diseases,
            "lesion grading": spec.grades, "other biological attributes": spec.attr_labels}[qtype]


OPTION_ORDERS = tuple(o.value for o in OptionOrder)


def build_cell(modality: str, qtype: str, n: int, seed: int, image_size: int,
               option_order: str = "shuffled") -> list[VQARecord]:
    """``n`` records of one (modality, question type) cell.

    ``option_order``: "shuffled" puts the answer at a balanced random letter (as in Med-R1's
    data); "fixed" lists the options in the category's own order (e.g. Grade 0..3), so a
    class keeps the same letter whenever the same options are offered; "canonical" offers
    every class of the category, in that order, so a class always has the same letter and
    answering needs no reading of the options (a from-scratch model cannot learn option
    matching in a short run: see bench/bench_learnability.py).
    """
    mi, qi = MODALITIES.index(modality), QUESTION_TYPES.index(qtype)
    rng = np.random.default_rng([seed, mi, qi])
    spec = SPECS[modality]
    classes = _classes(spec, qtype)
    if qtype == "modality recognition":
        labels = [spec.label] * n
    else:  # every class equally often, in a seeded order
        labels = [classes[int(k)] for k in rng.permutation(np.arange(n) % len(classes))]
    templates = TEMPLATES[spec.attr if qtype == "other biological attributes" else qtype]
    positions: dict[int, list[int]] = {}
    out = []
    for i, label in enumerate(labels):
        pool = list(classes) + list(EXTRA_DISTRACTORS.get((modality, qtype), ()))
        k = min(len(pool), int(rng.choice(OPTION_COUNTS, p=OPTION_COUNT_P)))  # drawn in every mode: same images
        if not positions.get(k):  # answer positions cycle through balanced, shuffled blocks
            positions[k] = [int(p) for p in rng.permutation(k)]
        pos = positions[k].pop()
        others = [c for c in pool if c != label]
        distractors = [others[int(j)] for j in rng.choice(len(others), size=k - 1, replace=False)]
        options = distractors[:pos] + [label] + distractors[pos:]
        if option_order == "fixed":
            options = sorted(options, key=pool.index)
        elif option_order == "canonical":
            options = list(classes)
        pos = options.index(label)
        question = templates[int(rng.integers(len(templates)))].format(mod=spec.word)
        img = spec.draw(rng, image_size, _scene(spec, qtype, label, rng))
        rec = VQARecord(id=f"syn-{spec.code}-{QCODES[qtype]}-{i:04d}", image=encode_png(img), question=question,
                        options=options, answer=LETTERS[pos], modality=modality, question_type=qtype,
                        source="synthetic", image_path=f"synthetic/{spec.code}/{QCODES[qtype]}/{i:04d}.png")
        out.append(rec.validate())
    return out


def build_synthetic(seed: int = 0, per_cell: int = 12, image_size: int = 112,
                    test_fraction: float = 0.2, option_order: str = "shuffled") -> dict[str, list[VQARecord]]:
    """{"train": [...], "test": [...]}: ``per_cell`` images per (modality, question type),
    one question each; ``round(per_cell * test_fraction)`` of each cell's images go to test."""
    if per_cell < 1:
        raise ValueError("per_cell must be at least 1")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    if image_size < 28:
        raise ValueError("image_size must be at least 28 px")
    if option_order not in OPTION_ORDERS:
        raise ValueError(f"option_order must be one of {', '.join(OPTION_ORDERS)} (got '{option_order}')")
    splits: dict[str, list[VQARecord]] = {"train": [], "test": []}
    for mi, modality in enumerate(MODALITIES):
        for qi, qtype in enumerate(QUESTION_TYPES):
            recs = build_cell(modality, qtype, per_cell, seed, image_size, option_order)
            n_test = int(round(per_cell * test_fraction))
            test_idx = set(np.random.default_rng([seed, mi, qi, 1]).choice(per_cell, n_test, replace=False).tolist())
            for i, rec in enumerate(recs):
                splits["test" if i in test_idx else "train"].append(rec)
    return splits


def prepare_synthetic(out_dir: str, seed: int = 0, per_cell: int = 12, image_size: int = 112,
                      test_fraction: float = 0.2, preview: bool = False, command: str = "",
                      option_order: str = "shuffled") -> dict:
    t0 = time.perf_counter()
    splits = build_synthetic(seed=seed, per_cell=per_cell, image_size=image_size, test_fraction=test_fraction,
                             option_order=option_order)
    extra = {"builder": "synthetic", "command": command, "seed": seed, "per_cell": per_cell,
             "option_order": option_order,
             "image_size": image_size, "test_fraction": test_fraction,
             "build_seconds": round(time.perf_counter() - t0, 2)}
    manifest = write_prepared(out_dir, splits, extra)
    if preview:
        write_preview(splits["train"] + splits["test"], f"{out_dir}/preview.png")
    return manifest
