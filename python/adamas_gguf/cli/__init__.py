"""Command line: `python -m adamas_gguf COMMAND ...` (also installed as `adamas-gguf`).

One module per command: run.py, eval.py, bench.py, serve.py, rpc_server.py (`rpc-server`), each with
`add_parser(subparsers)` and `main(args, parser) -> exit code`, all over base.py (errors, flag types, the
model and Adamas flags, model loading, output); eval and bench also share measure.py. No module uses another's
private names. This file builds the parser and turns what a command raises into one line on stderr and an
exit code.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import base, bench, eval as eval_command, rpc_server, run, serve
from .base import PROG, UserError

COMMANDS = {"run": run, "eval": eval_command, "bench": bench, "serve": serve, "rpc-server": rpc_server}

__all__ = ["main", "build_parser", "COMMANDS"]


def build_parser() -> base.Parser:
    from .._version import __version__

    top = base.Parser(
        prog=PROG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adamas sparse attention inside llama.cpp, for GGUF models: generate text with a "
                    "GGUF model through this package's llama.cpp build.",
        epilog="example:\n  python -m adamas_gguf run -p \"The capital of France is\" -n 32 --temp 0\n\n"
               + base.env_help())
    top.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=base.Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("no command given; use `run` (see --help)")
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the reports
        return COMMANDS[args.command].main(args, parser)
    except UserError as e:
        base.print_error(e)
        return base.EXIT_ERROR
    except KeyboardInterrupt:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            base.quiet_stdout()
        return base.EXIT_INTERRUPTED
    except BrokenPipeError:
        base.quiet_stdout()
        return base.EXIT_BROKEN_PIPE
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (base.EXIT_OK if e.code is None else base.EXIT_ERROR)
    except MemoryError:
        base.print_error("out of memory (try a smaller -c)")
        return base.EXIT_ERROR
    except Exception as e:  # a bug or a llama.cpp failure: still one line, and say what it was
        base.print_error(f"{type(e).__name__}: {base.one_line(e)}")
        return base.EXIT_ERROR
