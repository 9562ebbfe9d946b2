"""Loader for the Med-R1 split files: JSON lists of {"image", "problem", "solution"}.

The options are inline in ``problem`` (``What ...? A)text, B)text, C)text``; an option
text may itself contain commas, full stops and parentheses) and ``solution`` is
``<answer> C </answer>``. A file names either a modality (``X-Ray_test.json``,
``MR (Mag-netic Resonance Imaging)_test.json``) or a question type
(``Lesion Grading_test.json``), never both: the other field is ``"unknown"``,
as are both for ``unknown_train.json``. ``--modality``/``--question-type`` override.
"""
from __future__ import annotations

import bisect
import json
import logging
import re
from pathlib import Path

from pipelines.data.schema import (
    LETTERS,
    MAX_OPTION_CHARS,
    MAX_QUESTION_CHARS,
    UNKNOWN,
    VQARecord,
    check_on_bad_record,
    handle_bad_record,
    normalize_modality,
    normalize_question_type,
    try_normalize_modality,
    try_normalize_question_type,
)
from pipelines.data.store import image_under, to_png_bytes, write_prepared
from pipelines.errors import BadRecordError, UserError

log = logging.getLogger(__name__)
_MAX_PROBLEM_CHARS = MAX_QUESTION_CHARS + len(LETTERS) * MAX_OPTION_CHARS  # question + every option
MAX_JSON_BYTES = 1 << 30  # a split or QA file past this is refused before it is read

# An option marker: a letter and ')' at the start of the text or after whitespace or a comma.
_MARK = re.compile(r"(?:^|(?<=[\s,]))([A-H])\)")
_BEYOND = re.compile(r"(?:^|(?<=[\s,]))[I-Z]\)")  # a ninth option's marker
_ANSWER = re.compile(r"<answer>\s*([A-Ha-h])\s*</answer>", re.DOTALL)
_SPLIT_SUFFIX = re.compile(r"^(.*?)[_\- ](train|test|val|validation)$", re.IGNORECASE)


def parse_problem(problem: str) -> tuple[str, list[str]]:
    """Split a Med-R1 problem into (question, options). Raises ValueError if there are
    fewer than two options. The markers A), B), ... must appear in order; among several
    chains the longest wins (the latest 'A)' on a tie, so a stray 'A)' in the question is
    not taken for the first option)."""
    marks = [(m.start(), m.end(), m.group(1)) for m in _MARK.finditer(problem)]
    # Per letter, the indices (into marks) of its markers, and of those right after a comma:
    # the next marker of a letter is a bisect away, so a long or hostile text stays O(n log n).
    by_letter: dict[str, list[int]] = {}
    after_comma: dict[str, list[int]] = {}
    for k, (start, _, letter) in enumerate(marks):
        by_letter.setdefault(letter, []).append(k)
        if problem[max(start - 2, 0): start].endswith((",", ", ")):
            after_comma.setdefault(letter, []).append(k)
    best: list[tuple[int, int]] = []
    for i, (start, end, letter) in enumerate(marks):
        if letter != "A":
            continue
        chain = [(start, end)]
        want, j = 1, i + 1
        while want < len(LETTERS):
            k = _first_at_or_after(after_comma.get(LETTERS[want], []), j)  # prefer ", B)" over " B)"
            if k is None:
                k = _first_at_or_after(by_letter.get(LETTERS[want], []), j)
            if k is None:
                break
            chain.append((marks[k][0], marks[k][1]))
            want, j = want + 1, k + 1
        if len(chain) >= len(best):
            best = chain
    if len(best) < 2:
        raise ValueError("no options found (expected inline options 'A)..., B)...')")
    if len(best) == len(LETTERS) and _BEYOND.search(problem, best[-1][1]):
        raise ValueError(f"more than {len(LETTERS)} options (a marker past {LETTERS[-1]}) follows)")
    question = problem[: best[0][0]].strip()
    options = []
    for n, (_, end) in enumerate(best):
        stop = best[n + 1][0] if n + 1 < len(best) else len(problem)
        text = problem[end:stop].strip()
        if n + 1 < len(best):
            text = text.rstrip().removesuffix(",").strip()
        options.append(text)
    if not question:
        raise ValueError("empty question before the options")
    if any(not o for o in options):
        raise ValueError(f"an empty option in {options!r}")
    return question, options


def _first_at_or_after(indices: list[int], j: int) -> int | None:
    n = bisect.bisect_left(indices, j)
    return indices[n] if n < len(indices) else None


def parse_solution(solution: str) -> str:
    m = _ANSWER.search(solution)
    if m:
        return m.group(1).upper()
    bare = solution.strip().strip(".").strip()
    if len(bare) == 1 and bare.upper() in LETTERS:
        return bare.upper()
    raise ValueError(f"no answer letter in solution {solution[:80]!r} (expected '<answer> C </answer>')")


def split_of(path: str | Path) -> str | None:
    """'train' / 'test' from a '_train' / '_test' suffix ('val' counts as test), else None."""
    m = _SPLIT_SUFFIX.match(Path(path).stem)
    if not m:
        return None
    return "train" if m.group(2).lower() == "train" else "test"


def domain_of(path: str | Path) -> tuple[str, str]:
    """(modality, question_type) named by a split file's name; one of them is 'unknown'."""
    stem = Path(path).stem
    m = _SPLIT_SUFFIX.match(stem)
    name = m.group(1) if m else stem
    if name.strip().lower() == UNKNOWN:
        return UNKNOWN, UNKNOWN
    mod = try_normalize_modality(name)
    if mod:
        return mod, UNKNOWN
    qt = try_normalize_question_type(name)
    if qt:
        return UNKNOWN, qt
    raise UserError(f"{path}: cannot tell the modality or question type from the file name {name!r}; "
                    f"pass --modality or --question-type")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "medr1"


def _source_of(image: str, fallback: str) -> str:
    parts = Path(image).parts
    return parts[1] if len(parts) > 2 and parts[0].lower() == "images" else fallback


def read_json_list(path: Path) -> list:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {size / 2**20:,.0f} MiB, over the limit of {MAX_JSON_BYTES >> 20} MiB "
                            "for a JSON file of records")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: not UTF-8 at byte {e.start} (line {line}): {raw[e.start:e.start + 4]!r}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}") from e
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply (a list of flat records is expected)") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def load_medr1_file(path: str | Path, image_root: str | Path | None = None, *, modality: str | None = None,
                    question_type: str | None = None, on_bad_record: str = "error",
                    allow_missing_images: bool = False, skipped: list | None = None,
                    missing: list | None = None) -> list[VQARecord]:
    """Records of one Med-R1 split file. Images are read from ``image_root/<image>`` and
    embedded as PNG bytes; with ``allow_missing_images`` a missing image leaves
    ``image=b""`` (path kept) and its id is appended to ``missing``."""
    path = Path(path)
    check_on_bad_record(on_bad_record)
    try:
        mod = normalize_modality(modality) if modality else None
        qt = normalize_question_type(question_type) if question_type else None
    except ValueError as e:
        raise UserError(str(e)) from e
    if mod is None or qt is None:
        if mod is None and qt is None:
            guess_mod, guess_qt = domain_of(path)
        else:  # one given explicitly: the name may still tell the other, else unknown
            try:
                guess_mod, guess_qt = domain_of(path)
            except UserError:
                guess_mod, guess_qt = UNKNOWN, UNKNOWN
        mod, qt = mod or guess_mod, qt or guess_qt
    data = read_json_list(path)
    prefix = _slug(path.stem)
    root = Path(image_root) if image_root is not None else None
    out: list[VQARecord] = []
    for i, raw in enumerate(data):
        try:
            if not isinstance(raw, dict):
                raise BadRecordError(str(path), i, f"expected an object, got {type(raw).__name__}")
            absent = [k for k in ("image", "problem", "solution") if not isinstance(raw.get(k), str)]
            if absent:
                raise BadRecordError(str(path), i, f"missing or non-string field(s): {', '.join(absent)}")
            if len(raw["problem"]) > _MAX_PROBLEM_CHARS or len(raw["solution"]) > MAX_OPTION_CHARS:
                raise BadRecordError(str(path), i, f"problem of {len(raw['problem']):,} / solution of "
                                     f"{len(raw['solution']):,} characters: over the limits "
                                     f"({_MAX_PROBLEM_CHARS:,} / {MAX_OPTION_CHARS:,})")
            try:
                question, options = parse_problem(raw["problem"])
                answer = parse_solution(raw["solution"])
            except ValueError as e:
                raise BadRecordError(str(path), i, str(e)) from e
            if answer not in LETTERS[: len(options)]:
                raise BadRecordError(str(path), i, f"answer {answer!r} is not among the options "
                                                   f"{LETTERS[0]}-{LETTERS[len(options) - 1]} ({options})")
            image_file = image_under(root, raw["image"], str(path), i) if root is not None else None
            if image_file is not None and image_file.is_file():
                image = to_png_bytes(image_file, str(path), i)
            elif allow_missing_images:
                image = b""
            else:
                raise BadRecordError(str(path), i, f"image file not found: {image_file or raw['image']}"
                                     + ("" if root is not None else " (no --image-root given)"))
            rec = VQARecord(id=f"{prefix}-{i:05d}", image=image, question=question, options=options,
                            answer=answer, modality=mod, question_type=qt,
                            source=_source_of(raw["image"], path.stem), image_path=raw["image"])
            try:
                rec.validate(allow_unknown=True)
            except ValueError as e:
                raise BadRecordError(str(path), i, str(e)) from e
        except BadRecordError as err:
            handle_bad_record(err, on_bad_record, skipped)
            continue
        if not image and missing is not None:
            missing.append(rec.id)
        out.append(rec)
    return out


def prepare_medr1_splits(files: list[str], out_dir: str, image_root: str | None = None, *,
                         modality: str | None = None, question_type: str | None = None,
                         split: str | None = None, on_bad_record: str = "error",
                         allow_missing_images: bool = False, command: str = "") -> dict:
    """Load each file into its split (explicit ``split``, else the file's _train/_test
    suffix, else 'test') and write the prepared dataset. Returns the manifest."""
    if image_root is None and not allow_missing_images:
        raise UserError("give --image-root (where the images are) or --allow-missing-images")
    if image_root is not None and not Path(image_root).is_dir():
        raise UserError(f"--image-root {image_root}: not a directory")
    splits: dict[str, list[VQARecord]] = {}
    skipped: list[dict] = []
    missing: list[str] = []
    per_file = {}
    for f in files:
        target = split or split_of(f) or "test"
        recs = load_medr1_file(f, image_root, modality=modality, question_type=question_type,
                               on_bad_record=on_bad_record, allow_missing_images=allow_missing_images,
                               skipped=skipped, missing=missing)
        splits.setdefault(target, []).extend(recs)
        per_file[str(f)] = {"split": target, "records": len(recs),
                            "modality": recs[0].modality if recs else None,
                            "question_type": recs[0].question_type if recs else None}
    if missing:
        log.warning("%d records have no image (kept with their path: --allow-missing-images)", len(missing))
    extra = {"builder": "medr1-splits", "command": command, "files": per_file,
             "image_root": str(image_root) if image_root else None,
             "missing_image_ids": missing[:100], "skipped": skipped}
    return write_prepared(out_dir, splits, extra)
