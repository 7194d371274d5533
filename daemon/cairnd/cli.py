"""The command line (SPEC section 8). Minimal for now: `serve`."""

from __future__ import annotations

import argparse
import sys

from cairnd.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cairnd")
    parser.add_argument("-c", "--config")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from cairnd.service import serve as run_serve
        try:
            return run_serve(args.config, verbose=args.verbose)
        except ConfigError as exc:
            print(f"cairnd: {exc}", file=sys.stderr)
            return 2
    return 2
