"""Loader for OmniMedVQA (``ROOT/QA_information/{Open,Restricted}-access/*.json`` + ``ROOT/Images``).

Records carry ``question_id``, ``dataset``, ``question_type``, ``question``,
``gt_answer``, ``option_A``..``option_D`` (absent options allowed: 2..4, re-lettered
in order), ``image_path`` (relative to ROOT) and ``modality_type`` (one source file
says ``modality``). The answer letter is the option whose text equals ``gt_answer``
after normalizing whitespace, case and a trailing full stop.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np

from pipelines.data.medr1_splits import read_json_list
from pipelines.data.preview import write_preview
from pipelines.data.schema import (
    LETTERS,
    MAX_OPTIONS,
    VQARecord,
    check_on_bad_record,
    handle_bad_record,
    try_normalize_modality,
    try_normalize_question_type,
)
from pipelines.data.store import image_under, to_png_bytes, write_prepared
from pipelines.errors import BadRecordError, UserError

log = logging.getLogger(__name__)
QA_DIRS = ("Open-access", "Restricted-access")
SPLIT_BY = ("modality", "question_type")


def norm_answer(text) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower().rstrip(".").strip()


def qa_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"OmniMedVQA root {root} is not a directory")
    files = [f for d in QA_DIRS for f in sorted((root / "QA_information" / d).glob("*.json"))]
    if not files:
        raise UserError(f"no QA files under {root}/QA_information/{{{','.join(QA_DIRS)}}}/*.json "
                        f"(is {root} the OmniMedVQA root?)")
    return files


def _record(raw, root: Path, file: Path, i: int, images: OrderedDict) -> VQARecord:
    src = str(file)
    if not isinstance(raw, dict):
        raise BadRecordError(src, i, f"expected an object, got {type(raw).__name__}")
    for k in ("question", "gt_answer", "image_path"):
        if raw.get(k) in (None, ""):
            raise BadRecordError(src, i, f"missing field {k!r}")
    options = [str(raw[f"option_{c}"]).strip() for c in LETTERS[:MAX_OPTIONS]
               if raw.get(f"option_{c}") not in (None, "") and str(raw[f"option_{c}"]).strip()]
    beyond = sorted(k for k in raw if isinstance(k, str) and k.startswith("option_")
                    and k[7:] not in LETTERS[:MAX_OPTIONS] and raw[k] not in (None, ""))
    if beyond:
        raise BadRecordError(src, i, f"more than {MAX_OPTIONS} options ({', '.join(beyond[:3])}"
                                     f"{', ...' if len(beyond) > 3 else ''}): at most option_A..option_H")
    if len(options) < 2:
        raise BadRecordError(src, i, f"{len(options)} option(s); need at least 2 (option_A, option_B, ...)")
    target = norm_answer(raw["gt_answer"])
    matches = [j for j, o in enumerate(options) if norm_answer(o) == target]
    if not matches:
        raise BadRecordError(src, i, f"answer {raw['gt_answer']!r} is not among the options {options}")
    mod_raw = raw.get("modality_type", raw.get("modality"))
    modality = try_normalize_modality(mod_raw) if mod_raw else None
    if modality is None:
        raise BadRecordError(src, i, f"unknown modality {mod_raw!r} (field modality_type/modality)")
    qtype = try_normalize_question_type(raw.get("question_type", ""))
    if qtype is None:
        raise BadRecordError(src, i, f"unknown question type {raw.get('question_type')!r}")
    rel = str(raw["image_path"]).lstrip("/")
    if rel not in images:
        images[rel] = to_png_bytes(image_under(root, rel, src, i), src, i)
        while len(images) > 64:  # questions about one image are usually adjacent
            images.popitem(last=False)
    qid = raw.get("question_id")
    rec = VQARecord(id=f"omni-{qid}" if qid not in (None, "") else f"omni-{file.stem}-{i}", image=images[rel],
                    question=str(raw["question"]).strip(), options=options, answer=LETTERS[matches[0]],
                    modality=modality, question_type=qtype, source=str(raw.get("dataset") or file.stem),
                    image_path=rel)
    try:
        return rec.validate()
    except ValueError as e:
        raise BadRecordError(src, i, str(e)) from e


def load_omnimedvqa(root: str | Path, on_bad_record: str = "error", skipped: list | None = None) -> list[VQARecord]:
    """Every usable record under ``root``, images embedded as PNG bytes."""
    check_on_bad_record(on_bad_record)
    root = Path(root)
    out: list[VQARecord] = []
    seen: set[str] = set()
    images: OrderedDict = OrderedDict()
    for f in qa_files(root):
        for i, raw in enumerate(read_json_list(f)):
            try:
                rec = _record(raw, root, f, i, images)
                if rec.id in seen:
                    raise BadRecordError(str(f), i, f"duplicate question_id ({rec.id})")
            except BadRecordError as err:
                handle_bad_record(err, on_bad_record, skipped)
                continue
            seen.add(rec.id)
            out.append(rec)
    return out


def split_records(records: list[VQARecord], seed: int = 0, test_fraction: float = 0.2,
                  split_by: str | None = None) -> tuple[dict[str, list[VQARecord]], dict]:
    """Split by image (all questions about one image land in the same split), and within
    each stratum (modality or question type; an image counts in the stratum of its first
    question) ``round(n_images * test_fraction)`` images go to test. Returns (splits, per-stratum counts)."""
    if split_by not in (None,) + SPLIT_BY:
        raise UserError(f"--split-by must be one of {', '.join(SPLIT_BY)}, not {split_by!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"--test-fraction must be in [0, 1), not {test_fraction}")
    groups: dict[str, list[VQARecord]] = defaultdict(list)
    for r in records:
        groups[r.image_path or r.id].append(r)
    strata: dict[str, list[str]] = defaultdict(list)
    for key, recs in groups.items():
        strata[getattr(recs[0], split_by) if split_by else "all"].append(key)
    rng = np.random.default_rng(seed)
    test_keys: set[str] = set()
    for name in sorted(strata):
        keys = sorted(strata[name])
        n_test = int(round(len(keys) * test_fraction))
        test_keys.update(keys[int(j)] for j in rng.permutation(len(keys))[:n_test])
    splits = {"train": [r for r in records if (r.image_path or r.id) not in test_keys],
              "test": [r for r in records if (r.image_path or r.id) in test_keys]}
    counts = {}
    for split, recs in splits.items():
        for r in recs:
            name = getattr(r, split_by) if split_by else "all"
            counts.setdefault(name, {"train": 0, "test": 0})[split] += 1
    return splits, dict(sorted(counts.items()))


def prepare_omnimedvqa(root: str, out_dir: str, *, split_by: str | None = None, seed: int = 0,
                       test_fraction: float = 0.2, on_bad_record: str = "error", preview: bool = False,
                       command: str = "") -> dict:
    skipped: list[dict] = []
    records = load_omnimedvqa(root, on_bad_record=on_bad_record, skipped=skipped)
    if not records:
        raise UserError(f"no usable records under {root} ({len(skipped)} skipped)")
    splits, strata = split_records(records, seed=seed, test_fraction=test_fraction, split_by=split_by)
    extra = {"builder": "omnimedvqa", "command": command, "root": str(root), "seed": seed,
             "test_fraction": test_fraction, "split_by": split_by, "per_domain": strata, "skipped": skipped}
    manifest = write_prepared(out_dir, splits, extra)
    if preview:
        write_preview(records, str(Path(out_dir) / "preview.png"))
    return manifest
