"""The `medr1` command. Each subcommand lives in its own module of ``pipelines.cli``
with a ``register(subparsers)`` function; the work each one does is imported inside its
handler (it pulls in Ray, torch and vLLM), so ``medr1 --help`` is instant."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from pipelines.errors import ConfigError, RunStopped, UserError

# Order is the order shown in --help.
SUBCOMMAND_MODULES = [
    "pipelines.cli.init_model",
    "pipelines.cli.prepare_data",
    "pipelines.cli.generate",
    "pipelines.cli.train",
    "pipelines.cli.sft",
    "pipelines.cli.evaluate",
    "pipelines.cli.export",
    "pipelines.cli.protocol",
    "pipelines.cli.trace",
    "pipelines.cli.submit",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medr1", description="Med-R1 GRPO training on Ray, vLLM and DeepSpeed")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError) as e:
        # Errors about the user's input: the message says what and where; no traceback.
        print(f"medr1 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"medr1 {args.command}: stopped: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not type(e).__module__.startswith("ray."):
            raise
        # An actor failed and nothing above handled it: Ray's own message starts with its wrapper
        # line, so say the root exception's type and message last, where the eye lands.
        from cluster.ray_utils import describe_failure  # Ray is loaded by now

        traceback.print_exc()
        print(f"medr1 {args.command}: failed in a Ray actor: {describe_failure(e)}", file=sys.stderr)
        return 1

