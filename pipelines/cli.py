"""The `medr1` command. Each subcommand lives in its own module with a
``register(subparsers)`` function; heavy imports stay inside the handlers so
``medr1 --help`` is instant."""
from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in --help.
SUBCOMMAND_MODULES = [
    "pipelines.init_model",
    "pipelines.prepare_data",
    "pipelines.generate",
    "pipelines.train",
    "pipelines.sft",
    "pipelines.evaluate",
    "pipelines.protocol",
    "pipelines.submit",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medr1", description="Med-R1 GRPO training on Ray, vLLM and DeepSpeed")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.config import ConfigError
    from pipelines.errors import RunStopped, UserError

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


if __name__ == "__main__":
    sys.exit(main())
