"""The `aesemo` command line. Each subcommand parses its flags and calls one function: the ones
on version folders and manifests in model_commands.py, the service's in service_commands.py."""
from __future__ import annotations

import argparse
import logging
import sys

from redis import RedisError

from model.errors import AesemoError

from backend.cli.model_commands import add_model_commands
from backend.cli.service_commands import add_service_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aesemo", description="Aesthetic and emotion suggestions for Label Studio")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_model_commands(sub)
    add_service_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="aesemo: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.INFO)  # its debug lines carry full URLs
    try:
        return args.func(args)
    except (AesemoError, ValueError, OSError, RedisError) as exc:
        print(f"aesemo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aesemo: interrupted", file=sys.stderr)
        return 130
