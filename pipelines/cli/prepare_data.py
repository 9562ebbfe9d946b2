"""`medr1 prepare-data`: build a prepared dataset (Parquet + manifest) from the
synthetic benchmark, Med-R1 split files or OmniMedVQA."""
from __future__ import annotations

import argparse
import shlex

from pipelines.choices import OnBadRecord, OptionOrder
from pipelines.errors import UserError

ON_BAD = [o.value for o in OnBadRecord]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare-data", help="build a prepared dataset (Parquet + manifest.json)",
        description="Build DIR/train.parquet, DIR/test.parquet and DIR/manifest.json from a data source.")
    sub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")

    s = sub.add_parser("synthetic", help="procedurally drawn benchmark: 8 modalities x 5 question types")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-cell", type=int, default=12, help="images per (modality, question type) cell (default 12)")
    s.add_argument("--option-order", choices=[o.value for o in OptionOrder], default=OptionOrder.shuffled.value,
                   help="shuffled: answer at a balanced random letter (default); fixed: options in category order; "
                        "canonical: every class of the category, in order")
    s.add_argument("--image-size", type=int, default=112, help="image side in pixels (default 112)")
    s.add_argument("--test-fraction", type=float, default=0.2)
    s.add_argument("--preview", action="store_true", help="also write DIR/preview.png (a contact sheet)")
    s.set_defaults(func=run_synthetic)

    m = sub.add_parser("medr1-splits", help="Med-R1 split files (JSON lists of image/problem/solution)")
    m.add_argument("files", nargs="+", metavar="FILE", help="e.g. 'X-Ray_test.json' 'Lesion Grading_train.json'")
    m.add_argument("--image-root", default=None, help="directory the records' image paths are relative to")
    m.add_argument("--out", required=True)
    m.add_argument("--modality", default=None, help="override the modality inferred from the file name")
    m.add_argument("--question-type", default=None, help="override the question type inferred from the file name")
    m.add_argument("--split", default=None, help="put every file in this split (default: from the _train/_test "
                                                 "suffix, else test)")
    m.add_argument("--on-bad-record", choices=ON_BAD, default="error")
    m.add_argument("--allow-missing-images", action="store_true",
                   help="keep records whose image is missing (empty image, path kept; counted in the manifest)")
    m.add_argument("--preview", action="store_true")
    m.set_defaults(func=run_medr1_splits)

    o = sub.add_parser("omnimedvqa", help="OmniMedVQA (QA_information/*/*.json + Images/)")
    o.add_argument("root", metavar="ROOT", help="the OmniMedVQA directory")
    o.add_argument("--out", required=True)
    o.add_argument("--split-by", choices=("modality", "question_type"), default=None,
                   help="stratify the train/test split so each modality (or question type) is split alike")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--test-fraction", type=float, default=0.2)
    o.add_argument("--on-bad-record", choices=ON_BAD, default="error")
    o.add_argument("--preview", action="store_true")
    o.set_defaults(func=run_omnimedvqa)


def _command(args) -> str:
    """The command line that reproduces this build, from the parsed arguments."""
    parts = ["medr1", "prepare-data", args.source]
    for k, v in vars(args).items():
        if k in ("func", "command", "source") or v is None or v is False:
            continue
        if k in ("files", "root"):
            parts += [shlex.quote(str(x)) for x in (v if isinstance(v, list) else [v])]
        else:
            parts += [f"--{k.replace('_', '-')}"] + ([] if v is True else [shlex.quote(str(v))])
    return " ".join(parts)


def _summary(out: str, manifest: dict) -> None:
    parts = ", ".join(f"{k}: {v['total']}" for k, v in manifest["splits"].items())
    print(f"wrote {out}: {manifest['total']} records ({parts}); skipped {manifest['skipped']['count']}"
          + (f"; {manifest['missing_images']} without image" if manifest.get("missing_images") else ""))
    print(f"  by modality: {manifest['by_modality']}")
    print(f"  by question type: {manifest['by_question_type']}")
    print(f"  by answer letter: {manifest['by_answer_letter']}")


def run_synthetic(args: argparse.Namespace) -> int:
    from pipelines.data.synthetic import prepare_synthetic  # data builders load PIL, pyarrow, matplotlib

    try:
        manifest = prepare_synthetic(args.out, seed=args.seed, per_cell=args.per_cell, image_size=args.image_size,
                                     test_fraction=args.test_fraction, preview=args.preview, command=_command(args),
                                     option_order=args.option_order)
    except ValueError as e:
        raise UserError(str(e)) from e
    _summary(args.out, manifest)
    print(f"  built in {manifest['build_seconds']} s" + (f"; preview: {args.out}/preview.png" if args.preview else ""))
    return 0


def run_medr1_splits(args: argparse.Namespace) -> int:
    from pipelines.data.medr1_splits import prepare_medr1_splits

    manifest = prepare_medr1_splits(args.files, args.out, args.image_root, modality=args.modality,
                                    question_type=args.question_type, split=args.split,
                                    on_bad_record=args.on_bad_record, allow_missing_images=args.allow_missing_images,
                                    command=_command(args))
    if args.preview:
        from pipelines.data.preview import write_preview
        from pipelines.data.store import load_prepared

        write_preview([r for s in manifest["splits"] for r in load_prepared(args.out, s)], f"{args.out}/preview.png")
    _summary(args.out, manifest)
    return 0


def run_omnimedvqa(args: argparse.Namespace) -> int:
    from pipelines.data.omnimedvqa import prepare_omnimedvqa

    manifest = prepare_omnimedvqa(args.root, args.out, split_by=args.split_by, seed=args.seed,
                                  test_fraction=args.test_fraction, on_bad_record=args.on_bad_record,
                                  preview=args.preview, command=_command(args))
    _summary(args.out, manifest)
    return 0
