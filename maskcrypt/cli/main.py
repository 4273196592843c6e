"""``maskcrypt`` command line: thin wrappers that parse flags and call the library.

One module per command group (:mod:`.masks`, :mod:`.data`, :mod:`.stages`, :mod:`.capacity`,
:mod:`.serve`, :mod:`.verify`, :mod:`.export`); each adds its subcommands to the parser and
imports its stage only when the command runs, so ``maskcrypt --help`` stays fast.
A :class:`~maskcrypt.core.errors.MaskcryptError` is printed as ``error: ...`` without a
traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from maskcrypt.cli import capacity, data, export, masks, serve, stages, verify
from maskcrypt.core.errors import exit_status

#: The command groups in ``--help`` order.
GROUPS = (masks, data, stages, capacity, serve, verify, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskcrypt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args))


def job_main(command: str, argv: Sequence[str] | None = None) -> int:
    """``jobs/<x>.py``: the ``maskcrypt <command>`` subcommand with the script's arguments."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
