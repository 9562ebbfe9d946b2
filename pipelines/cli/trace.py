"""`medr1 trace verify|show|report|export|recompute|keygen RUN`: audit a run's trace store;
`medr1 trace ledger CONFIG [key=value ...]`: the run's per-prompt ledger against the data schedule.

RUN is a training run's output_dir, an evaluation's --out, a protocol directory or a
traces/ directory. Nothing here starts Ray or loads a model."""
from __future__ import annotations

import argparse
import sys

from pipelines.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="verify, show, report, export or recompute a run's trace store")
    ts = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")

    v = ts.add_parser("verify", help="check every row, the hash chain, the manifest (exit 0 only if all hold)")
    v.add_argument("run")
    v.add_argument("--head", action="append", default=[], metavar="HEX",
                   help="a head recorded elsewhere (the one a run prints, or KIND:HEX); repeatable")
    v.add_argument("--public-key", default=None, help="hex Ed25519 public key the manifest must be signed by")
    v.set_defaults(func=_verify)

    s = ts.add_parser("show", help="one case in the terminal")
    s.add_argument("run")
    s.add_argument("--prompt-id", required=True)
    s.add_argument("--step", type=int, default=None)
    s.add_argument("--kind", choices=["train", "eval"], default=None)
    s.add_argument("--limit", type=int, default=8, help="show at most N rows (default 8)")
    s.set_defaults(func=_show)

    r = ts.add_parser("report", help="static HTML case viewer (no server, no network)")
    r.add_argument("run")
    r.add_argument("--out", required=True)
    r.set_defaults(func=_report)

    e = ts.add_parser("export", help="every row as JSON lines or CSV")
    e.add_argument("run")
    e.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    e.add_argument("--kind", choices=["train", "eval"], default=None)
    e.add_argument("--out", default=None, help="file (default: stdout)")
    e.set_defaults(func=_export)

    c = ts.add_parser("recompute", help="recompute eval.json / evals.jsonl / matrix.json numbers from the rows")
    c.add_argument("run")
    c.add_argument("--all", action="store_true", help="print every number, not only those that differ")
    c.set_defaults(func=_recompute)

    g = ts.add_parser("ledger", help="was every scheduled prompt trained exactly once, in order (across resumes)?")
    g.add_argument("config", help="the run's YAML config (as given to medr1 train)")
    g.add_argument("overrides", nargs="*", help="the same key=value overrides as the run")
    g.add_argument("--json", default=None, metavar="FILE", help="also write the ledger as JSON")
    g.set_defaults(func=_ledger)

    k = ts.add_parser("keygen", help="write an Ed25519 key for logging.trace_signing_key")
    k.add_argument("path")
    k.set_defaults(func=_keygen)


def _verify(args) -> int:
    from pipelines.audit.cases import find_stores, head_records
    from pipelines.tracing.verify import verify_store

    stores = find_stores(args.run)
    if args.head and len(stores) > 1:
        raise UserError(f"--head names one store; {args.run} holds {len(stores)}: verify one of them")
    bad = 0
    for store in stores:
        v = verify_store(store, tuple(args.head), args.public_key, head_records=tuple(head_records(store)))
        if v.ok:
            counts = ", ".join(f"{k} {c['rows']} rows in {c['parts']} parts" for k, c in sorted(v.chains.items()))
            print(f"{store}: OK ({counts}); head {v.head}")
        else:
            bad += 1
            print(f"{store}: FAILED, first at {v.problems[0]}", file=sys.stderr)
            for p in v.problems[1:10]:
                print(f"  also: {p}", file=sys.stderr)
    return 1 if bad else 0


def _show(args) -> int:
    from pipelines.audit.cases import case_rows, find_store, load_rows, show_case

    store = find_store(args.run)
    rows = case_rows(load_rows(store, args.kind), args.prompt_id, args.step, args.kind)
    if not rows:
        raise UserError(f"no rows for prompt id {args.prompt_id!r} in {store}"
                        + (f" at step {args.step}" if args.step is not None else ""))
    show_case(store, rows[: args.limit])
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more rows (narrow with --step / --kind, or raise --limit)")
    return 0


def _report(args) -> int:
    from pipelines.audit.html_report import build_report

    paths = build_report(args.run, args.out)
    print(f"report: {paths['index.html']} (open it in a browser; no server needed)")
    return 0


def _export(args) -> int:
    from pipelines.audit.cases import export_rows, find_store, load_rows

    n = export_rows(load_rows(find_store(args.run), args.kind), args.format, args.out)
    if args.out:
        print(f"{n} rows -> {args.out}")
    return 0


def _recompute(args) -> int:
    from pipelines.audit.recompute import recompute_run

    lines = recompute_run(args.run)
    if not lines:
        raise UserError(f"{args.run} has no eval.json, evals.jsonl or matrix.json to recompute")
    wrong = [x for x in lines if not x[3]]
    for what, recorded, again, same in lines if args.all else wrong:
        print(f"{'same' if same else 'DIFFERS'}  {what}: recorded {recorded}, from the rows {again}")
    print(f"{len(lines) - len(wrong)} of {len(lines)} numbers recomputed from the trace rows match")
    return 1 if wrong else 0


def _ledger(args) -> int:
    import json

    from pipelines.audit.ledger import run_ledger
    from pipelines.config import load_config

    lg = run_ledger(load_config(args.config, args.overrides))
    print(f"steps {lg.first_step}..{lg.end_step} (history ends at {lg.end or 'no checkpoint'}; {lg.resumes} "
          f"resume(s)): scheduled {lg.scheduled}, trained {lg.trained}, duplicated {lg.duplicated}, missing "
          f"{lg.missing}, order {'ok' if lg.order_ok else 'WRONG'}; abandoned {lg.abandoned}, uncommitted "
          f"{lg.uncommitted}")
    for pid, p in sorted(lg.prompts.items()):
        if p["scheduled"] != p["trained"]:
            print(f"  {pid}: scheduled at steps {p['scheduled']}, trained at {p['trained']}")
    for problem in lg.problems[:10]:
        print(f"  problem: {problem}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(lg.to_dict(), f, indent=1)
    return 0 if lg.ok else 1


def _keygen(args) -> int:
    from pipelines.tracing.chain import generate_key

    try:
        pub = generate_key(args.path)
    except FileExistsError:
        raise UserError(f"{args.path} exists; not overwriting a key") from None
    print(f"private key: {args.path} (set logging.trace_signing_key={args.path})\npublic key: {pub}")
    return 0
