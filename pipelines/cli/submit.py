"""`medr1 submit` / `status` / `logs` / `stop`: training runs as Ray Jobs on a cluster.

``medr1 submit CONFIG [key=value ...]`` checks the address, the upload size,
the config and the output dir, then submits ``python -m pipelines.cli train
CONFIG key=value ...`` with the repository as the job's working dir.
"""
from __future__ import annotations

import argparse
import functools
import sys

from cluster.errors import JobsError
from pipelines.config import REPO_ROOT
from pipelines.errors import UserError


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="the cluster's dashboard / Jobs API URL (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS "
                        "or http://127.0.0.1:8265)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a training run to a Ray cluster as a Ray Job",
                       description="Check, then submit `python -m pipelines.cli train CONFIG overrides...` as a "
                                   "Ray Job with this repository as its working dir.")
    p.add_argument("config", help="config YAML inside the working dir (or a name in configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, passed on to `train`")
    _add_address(p)
    p.add_argument("--working-dir", default=None, help="directory to upload (default: the repository root)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    p.add_argument("--gpu", action="store_true", help="GPU cluster: no vLLM-CPU env vars; --install uses requirements/gpu.txt")
    p.add_argument("--install", action="store_true",
                   help="install the pinned stack in the job's runtime env (uv); off by default: "
                        "the cluster image normally has it")
    p.add_argument("--storage-path", default=None,
                   help="absolute directory on shared storage; the run goes to STORAGE_PATH/<basename of "
                        "trainer.output_dir> (needed when trainer.output_dir is relative)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env var for the job")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="extra gitignore-style pattern kept out of the upload")
    p.add_argument("--allow-secrets", action="store_true",
                   help="upload files that look like secrets (.env, private keys, tokens, credentials) anyway")
    p.add_argument("--max-upload-mib", type=float, default=100.0, help="refuse a bigger working dir (default 100)")
    p.add_argument("--python", default="python", help="interpreter on the cluster for the entrypoint")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks one)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the address to answer")
    p.add_argument("--dry-run", action="store_true", help="run the checks and print the job, submit nothing")
    p.set_defaults(func=run_submit)

    for name, helptext, fn in (("status", "show a Ray Job's status", run_status),
                               ("stop", "stop a Ray Job", run_stop)):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("job_id", metavar="JOB")
        _add_address(q)
        q.set_defaults(func=fn)
    q = sub.add_parser("logs", help="print a Ray Job's logs")
    q.add_argument("job_id", metavar="JOB")
    _add_address(q)
    q.add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    q.set_defaults(func=run_logs)


def _user_errors(fn):
    """JobsError (cluster/) -> UserError, so the CLI prints one clear line instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(args):
        try:
            return fn(args)
        except JobsError as e:
            raise UserError(str(e)) from None
    return wrapper


def _env_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise JobsError(f"--env '{it}' is not KEY=VALUE")
        out[k] = v
    return out


@_user_errors
def run_submit(args: argparse.Namespace) -> int:
    from cluster import jobs  # the Ray Jobs SDK: imported on use, like every handler's work
    from pipelines.submission import prepare_submission

    wd = args.working_dir or str(REPO_ROOT)
    sub = prepare_submission(args.config, args.overrides, working_dir=wd, storage_path=args.storage_path,
                                  gpu=args.gpu, install=args.install, env_vars=_env_pairs(args.env),
                                  extra_excludes=args.exclude, max_upload_mib=args.max_upload_mib,
                                  python=args.python, allow_secrets=args.allow_secrets)
    for w in sub.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"entrypoint: {sub.entrypoint}")
    print(f"working dir: {sub.runtime_env['working_dir']} ({sub.upload.mib:.1f} MiB in {sub.upload.num_files} files "
          f"after excludes)")
    print(f"output dir: {sub.cfg.trainer.output_dir}")
    if args.dry_run:
        return 0
    job_id, url = jobs.submit(sub, args.address, submission_id=args.submission_id, timeout=args.timeout,
                              metadata={"medr1_config": sub.config_path})
    print(f"submitted job: {job_id}")
    print(f"dashboard: {url}/#/jobs/{job_id}")
    if args.no_wait:
        print(f"follow with: medr1 logs {job_id} --follow --address {url}")
        return 0
    jobs.follow_logs(job_id, url, write=lambda s: print(s, end="", flush=True))
    status = jobs.wait_job(job_id, url, timeout=60)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


@_user_errors
def run_status(args: argparse.Namespace) -> int:
    from cluster import jobs  # the Ray Jobs SDK: imported on use, like every handler's work

    info = jobs.job_info(args.job_id, args.address)
    print(f"{args.job_id}: {info.status.value}")
    if info.message:
        print(info.message)
    if info.entrypoint:
        print(f"entrypoint: {info.entrypoint}")
    return 0


@_user_errors
def run_logs(args: argparse.Namespace) -> int:
    from cluster import jobs  # the Ray Jobs SDK: imported on use, like every handler's work

    if args.follow:
        jobs.follow_logs(args.job_id, args.address, write=lambda s: print(s, end="", flush=True))
    else:
        print(jobs.job_logs(args.job_id, args.address), end="")
    return 0


@_user_errors
def run_stop(args: argparse.Namespace) -> int:
    from cluster import jobs  # the Ray Jobs SDK: imported on use, like every handler's work

    stopped = jobs.stop_job(args.job_id, args.address)
    print(f"{args.job_id}: {'stop requested' if stopped else 'was not running'}")
    return 0
