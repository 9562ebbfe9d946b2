"""The record every dataset loader produces and every trainer reads.

A ``VQARecord`` is one multiple-choice question about one image. Modality and
question type use the canonical names below; ``"unknown"`` (``UNKNOWN``) is
allowed only for records from the Med-R1 split loader, whose files name either
a modality or a question type but never both (``validate(allow_unknown=True)``).
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

from pipelines.errors import BadRecordError
from rewards.accuracy import CHOICE_LETTERS as LETTERS  # the answer letters A-H, defined once in rewards

log = logging.getLogger(__name__)

MODALITIES = ("CT", "MRI", "X-ray", "ultrasound", "dermoscopy", "fundus photography", "OCT", "microscopy")
QUESTION_TYPES = (
    "modality recognition",
    "anatomy identification",
    "disease diagnosis",
    "lesion grading",
    "other biological attributes",
)
UNKNOWN = "unknown"
MIN_OPTIONS, MAX_OPTIONS = 2, 8
# Far beyond any real question (Med-R1's longest is a few hundred characters) and any model context:
# a record past these is refused, not tokenized.
MAX_QUESTION_CHARS, MAX_OPTION_CHARS = 16_000, 2_000
ON_BAD_RECORD = ("error", "skip")


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", str(name).lower())


_MODALITY_ALIASES = {
    "CT": ["ct", "cts", "ctscan", "computedtomography", "ctcomputedtomography", "computertomography"],
    "MRI": ["mri", "mr", "magneticresonanceimaging", "magneticresonance", "mrmagneticresonanceimaging",
            "mrimagneticresonanceimaging", "mrimaging"],
    "X-ray": ["xray", "xrays", "radiograph", "radiography", "xradiography", "cxr"],
    "ultrasound": ["ultrasound", "us", "ultrasonography", "sonography", "ultrasoundimaging"],
    "dermoscopy": ["dermoscopy", "der", "derm", "dermatoscopy", "derdermoscopy", "dermoscopic"],
    "fundus photography": ["fundusphotography", "fundus", "fundusphoto", "fundusimage", "retinalfundus",
                           "colorfundusphotography"],
    "OCT": ["oct", "opticalcoherencetomography", "octopticalcoherencetomography"],
    "microscopy": ["microscopy", "microscopyimages", "microscopyimage", "microscope", "microscopeimages"],
}
_MODALITY_BY_KEY = {a: canon for canon, aliases in _MODALITY_ALIASES.items() for a in aliases}
_QTYPE_BY_KEY = {_key(q): q for q in QUESTION_TYPES}
_QTYPE_BY_KEY.update({"modality": "modality recognition", "anatomy": "anatomy identification",
                      "diagnosis": "disease diagnosis", "grading": "lesion grading",
                      "otherattributes": "other biological attributes",
                      "biologicalattributes": "other biological attributes"})


def _candidates(name: str) -> list[str]:
    """The whole name, the part before a '(' and the part inside it, as lookup keys:
    'CT(Computed Tomography)' -> ['ctcomputedtomography', 'ct', 'computedtomography']."""
    name = str(name).strip()
    keys = [_key(name)]
    if "(" in name:
        before, _, inside = name.partition("(")
        keys += [_key(before), _key(inside.rstrip(")"))]
    return [k for k in keys if k]


def _lookup(name: str, by_key: dict[str, str]) -> str | None:
    for k in _candidates(name):
        if k in by_key:
            return by_key[k]
    return None


def _normalize(name: str, by_key: dict[str, str], what: str, known: tuple[str, ...]) -> str:
    found = _lookup(name, by_key)
    if found is None:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return found


def try_normalize_modality(name: str) -> str | None:
    return _lookup(name, _MODALITY_BY_KEY)


def normalize_modality(name: str) -> str:
    """Canonical modality name for an alias ('X-Ray', 'MR', 'CT(Computed Tomography)', ...)."""
    return _normalize(name, _MODALITY_BY_KEY, "modality", MODALITIES)


def try_normalize_question_type(name: str) -> str | None:
    return _lookup(name, _QTYPE_BY_KEY)


def normalize_question_type(name: str) -> str:
    """Canonical question type for an alias ('Lesion Grading', 'lesion_grading', ...)."""
    return _normalize(name, _QTYPE_BY_KEY, "question type", QUESTION_TYPES)


@dataclass
class VQARecord:
    id: str
    image: bytes | str  # PNG bytes, or a path; b"" when the image is missing (Med-R1 loader, allow-missing)
    question: str
    options: list[str]  # 2..8, in order A, B, ...
    answer: str  # a letter
    modality: str
    question_type: str
    source: str
    image_path: str = ""  # the original path, kept for traceability
    index: int = field(default=-1, compare=False)  # position in its prepared split file (traces cite it)

    def validate(self, allow_unknown: bool = False) -> "VQARecord":
        """Raise ValueError saying what is wrong; return self when the record is usable."""
        problems = []
        if not self.id:
            problems.append("empty id")
        if not str(self.question).strip():
            problems.append("empty question")
        n = len(self.options)
        if not MIN_OPTIONS <= n <= MAX_OPTIONS:
            problems.append(f"{n} options (need {MIN_OPTIONS} to {MAX_OPTIONS})")
        if any(not isinstance(o, str) or not o.strip() for o in self.options):
            problems.append("an option is empty")
        if len(str(self.question)) > MAX_QUESTION_CHARS:
            problems.append(f"question of {len(str(self.question)):,} characters (limit {MAX_QUESTION_CHARS:,})")
        if any(isinstance(o, str) and len(o) > MAX_OPTION_CHARS for o in self.options):
            problems.append(f"an option of over {MAX_OPTION_CHARS:,} characters")
        if "\x00" in str(self.question) or any(isinstance(o, str) and "\x00" in o for o in self.options):
            problems.append("a NUL byte in the question or an option")
        letters = LETTERS[: min(n, MAX_OPTIONS)]
        if self.answer not in letters or not self.answer:
            problems.append(f"answer {self.answer!r} is not among the option letters {', '.join(letters) or '(none)'}")
        extra = (UNKNOWN,) if allow_unknown else ()
        if self.modality not in MODALITIES + extra:
            problems.append(f"unknown modality {self.modality!r} (known: {', '.join(MODALITIES)})")
        if self.question_type not in QUESTION_TYPES + extra:
            problems.append(f"unknown question type {self.question_type!r} (known: {', '.join(QUESTION_TYPES)})")
        if not isinstance(self.image, (bytes, str)):
            problems.append(f"image must be bytes or a path, not {type(self.image).__name__}")
        if problems:
            raise ValueError(f"record {self.id!r}: " + "; ".join(problems))
        return self

    @property
    def answer_text(self) -> str:
        return self.options[LETTERS.index(self.answer)]

    def to_dict(self) -> dict:
        return asdict(self)


def check_on_bad_record(value: str) -> str:
    if value not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, not {value!r}")
    return value


def handle_bad_record(err: BadRecordError, on_bad_record: str, skipped: list[dict] | None) -> None:
    """Raise ``err`` (on_bad_record='error') or log it and append {file, index, reason} to ``skipped``."""
    if on_bad_record == "error":
        raise err
    log.warning("skipping bad record: %s", err)
    if skipped is not None:
        skipped.append({"file": str(err.source), "index": err.index, "reason": err.reason})
