"""`xtok` / `python -m xtok_core`: one subcommand per module in `xtok_core/commands/`.

Each command module defines `register(subparsers)` and sets `func=run` on its parser; `ORDER` sorts
the --help listing. A failure a user can fix (XtokError) prints one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import XtokError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xtok",
        description="Cross-tokenizer knowledge distillation: build the X-Token projection W between a student "
                    "and a teacher tokenizer, explain its rows, audit critical-token coverage, align spans, "
                    "and distill. Tokenizers are bundled names (see `xtok tokenizers`), tokenizer.json paths, "
                    "local Hugging Face directories or hub ids.",
        epilog="Example: xtok build-w --student llama-3.2 --teacher qwen2.5 --out W.safetensors && "
               "xtok explain --w W.safetensors --token 2024",
    )
    parser.add_argument("--version", action="version", version=f"xtok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = [importlib.import_module(f"{commands.__name__}.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    for mod in sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except XtokError as e:
        print(f"xtok {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xtok {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
