"""``mrtoct``: the engine's command line (the Slicer module runs the same commands in a subprocess).

Subcommands (one file each in :mod:`.commands`): ``phantom``, ``register``, ``synthesize``, ``evaluate``,
``info``, ``export``, ``train``, ``demo``. User-fixable problems print ``error: <problem>`` and
``Fix: <fix>`` and exit with status 2; nothing is written in that case (outputs are written atomically, so
an existing file is never half-replaced). Progress lines for machine readers (the Slicer module) start
with ``PROGRESS`` and go to stderr.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import CancelledError, InputError
from .args import Parser
from .commands import COMMANDS

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


def run_command(func, args) -> int:
    """Run a command function with the CLI's error convention (exit 2 for an InputError, 130 when cancelled)."""
    try:
        return int(func(args) or 0)
    except InputError as err:
        print(f"error: {err.problem}", file=sys.stderr)
        if err.fix:
            print(f"  Fix: {err.fix}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except CancelledError as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("cancelled by the user; no output was written", file=sys.stderr)
        return EXIT_CANCELLED


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mrtoct",
        description="MRI -> synthetic CT with conditional diffusion models (MRtoCTSynthesis engine).",
        epilog="Run `mrtoct demo` for a complete example on a bundled phantom case.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
