"""The ``mixquant`` command line: the parser, built from one module per command, and the dispatch.
Every command takes ``--json``; bad input exits 2 with one line on stderr."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from mixquant_core.errors import MixQuantError, UntrustedCodeError, first_line

from . import allocate, bench, evaluate, models, qe, reconstruct, report, results, search, sensitivity, sweep
from .output import MAX_MESSAGE, print_error

# In the order `mixquant --help` lists them; each module's register(subparsers) adds its command(s)
# (reconstruct: reconstruct, export and load) and sets their ``run`` function.
COMMAND_MODULES = (models, qe, search, evaluate, sweep, sensitivity, reconstruct, bench, allocate, results, report)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other bad input;
    ``--help`` still shows the usage. Sub-command parsers are of this class too."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]  # "mixquant search" -> "search"
        print_error(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mixquant", description="MixQuant: per-layer bit-width search (QE <= QEM x QE(8 bit)).")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UntrustedCodeError as exc:
        print_error(f"{exc}; pass --trust-code to load it, only if you trust the file")
        return 2
    except MixQuantError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("mixquant: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        print_error("input nested too deeply to read (a JSON file with thousands of nested levels?)")
        return 2
    except MemoryError:
        print_error("out of memory: the input is too large for this machine")
        return 2
    except (OSError, RuntimeError, ValueError) as exc:  # anything else the user's input can trigger
        print_error(f"{type(exc).__name__}: {first_line(exc, MAX_MESSAGE)}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
