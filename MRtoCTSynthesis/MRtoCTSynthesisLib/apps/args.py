"""What every ``mrtoct`` subcommand shares: the argument parser with the engine's error format, argument
types that explain their fix, output-path checks, JSON output, progress lines and Ctrl-C/SIGTERM handling.

Nothing here imports torch, so ``mrtoct --help`` and the parser stay fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..errors import InputError

#: separates the problem from its fix inside an argparse error message (see :class:`Parser`)
FIX_SEP = "\n  Fix: "
#: torch generators take 64-bit seeds; derived seeds (seed + offset) must stay in range
SEED_MAX = 2 ** 62


class Parser(argparse.ArgumentParser):
    """argparse with the engine's error format: usage, ``<prog>: error: <problem>``, then a ``Fix:`` line.

    Type checkers put their fix after :data:`FIX_SEP` in the message; other argparse errors (missing or
    unknown arguments, invalid choices) point at ``--help``. Exit status 2, like an :class:`InputError`.
    """

    def error(self, message):
        problem, sep, fix = message.partition(FIX_SEP)
        if not sep:
            fix = f"see `{self.prog} --help` for the arguments and their valid values."
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {problem}{FIX_SEP}{fix}\n")


def positive_int(name):
    """argparse type: a whole number >= 1."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}.{FIX_SEP}"
                                             f"give {name} a whole number >= 1.") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}.{FIX_SEP}give {name} 1 or more "
                                             "(see --help for the default).")
        return v
    return parse


def seed(name="--seed"):
    """argparse type: a seed in [0, 2**62]."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}.{FIX_SEP}"
                                             f"give {name} a whole number, e.g. {name} 0.") from None
        if not 0 <= v <= SEED_MAX:
            raise argparse.ArgumentTypeError(f"{name} must be between 0 and 2**62, got {v}.{FIX_SEP}"
                                             f"use a seed in that range, e.g. {name} 0.")
        return v
    return parse


def non_negative_float(name):
    """argparse type: a finite number >= 0."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}.{FIX_SEP}"
                                             f"give {name} a finite number >= 0.") from None
        if not (v >= 0 and v != float("inf")):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, got {text}.{FIX_SEP}"
                                             f"give {name} a finite number >= 0.")
        return v
    return parse


def non_negative_int(name):
    """argparse type: a whole number >= 0."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = -1
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= 0, got {text!r}.{FIX_SEP}"
                                             f"give {name} 0 or more.")
        return v
    return parse


def require_output_folder(path: Path, what: str) -> None:
    """The folder ``path`` will be written into must exist."""
    if not Path(path).parent.exists():
        raise InputError(f"the folder of {what} ({Path(path).parent}) does not exist.",
                         "create it first or choose another path.")


def check_volume_output(path, what: str) -> Path:
    """An output volume path: a writable format (by suffix) in an existing folder; checked before any compute."""
    from ..io.volume import WRITE_SUFFIXES, volume_suffix  # SimpleITK loads only when a command runs, not for --help

    p = Path(path)
    if volume_suffix(p) not in WRITE_SUFFIXES:
        raise InputError(f"{what} {p} has an unsupported suffix.", f"use one of {', '.join(WRITE_SUFFIXES)}.")
    require_output_folder(p, what)
    return p


def write_json_output(path, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (its folder must exist)."""
    from ..io.atomic import write_json  # here for the same reason as above

    require_output_folder(Path(path), str(path))
    return write_json(Path(path), obj)


def progress_printer(prefix="PROGRESS"):
    """``progress(fraction, message)`` printing ``PROGRESS <fraction> <message>`` lines to stderr (the Slicer
    module parses them)."""
    def progress(fraction, message):
        print(f"{prefix} {fraction:.4f} {message}", file=sys.stderr, flush=True)
    return progress


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (the Slicer module's Cancel) unwind like Ctrl-C, so temporary files are cleaned up."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. called from tests through main()): keep the default
        pass
