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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # on every (sub)parser, so that `mrtoct --debug CMD ...` and `mrtoct CMD ... --debug` both work
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="on an error, also print the full Python traceback (for bug reports)")

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
    """The output file ``path`` can be written, checked before any compute: its name is valid UTF-8, it is not a
    folder, and its folder exists and accepts a new file (a probe file is created and removed, which also catches
    read-only disks). Stale temporaries of killed runs in that folder are removed (with a note)."""
    check_output_file(path, what)


def check_output_file(path, what: str, inputs: dict | None = None) -> Path:
    """An output file, checked before any compute (see :func:`require_output_folder`); ``inputs`` maps input flags
    to paths (or lists of paths) that the output must not be (the same file, through links too)."""
    from ..io.atomic import check_output_folder, check_path_encodable  # light, but keep --help free of io imports

    p = Path(path)
    check_path_encodable(p, what)
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder.", f"give {what} a file name (inside that folder, for example).")
    check_output_folder(p.parent, what)
    clean_stale_temporaries(p.parent)
    check_not_an_input(p, what, inputs or {})
    return p


def check_output_dir(path, what: str, inputs: dict | None = None) -> Path:
    """An output folder, checked before any compute: valid UTF-8 name, not a file, not one of the ``inputs``, and
    writable: the folder itself, or (when it does not exist yet; nothing is created here) the nearest existing
    folder above it, in which the command will create it."""
    from ..io.atomic import check_output_folder, check_path_encodable

    p = Path(path)
    check_path_encodable(p, what)
    if p.exists() and not p.is_dir():
        raise InputError(f"{what} {p} is a file; a folder is needed here.", f"give {what} a folder path.")
    check_not_an_input(p, what, inputs or {})
    existing = p.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {p} cannot be created: {existing} is a file.", f"give {what} another folder path.")
    check_output_folder(existing, what)
    if existing == p.absolute():
        clean_stale_temporaries(p)
    return p


def same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name the same file (same real path, or the same inode: hard links)."""
    import os

    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(path, what: str, inputs: dict) -> None:
    """Refuse an output that is one of the inputs (``{flag: path or [paths]}``): writing it would destroy it."""
    for flag, value in inputs.items():
        for in_path in value if isinstance(value, (list, tuple)) else [value]:
            if in_path and same_file(in_path, path):
                raise InputError(f"{what} {path} is the input {flag}; writing it would destroy the input.",
                                 f"give {what} another file name.")


def check_distinct_outputs(outputs: dict) -> None:
    """Refuse two outputs (``{flag: path}``) that are the same file: the later write would silently win."""
    seen: list[tuple[str, str]] = []
    for flag, path in outputs.items():
        if not path:
            continue
        for other_flag, other in seen:
            if same_file(other, path):
                raise InputError(f"{other_flag} and {flag} are the same file ({path}); one would overwrite the other.",
                                 f"give {flag} another file name.")
        seen.append((flag, str(path)))


def clean_stale_temporaries(folder) -> None:
    """Remove temporaries that killed runs left in ``folder`` (see :mod:`..io.atomic`), with a note on stderr."""
    from ..io.atomic import remove_stale_temporaries

    removed = remove_stale_temporaries(folder)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (f" and {len(removed) - 3} more" if len(removed) > 3 else "")
        print(f"note: removed {len(removed)} stale temporary file(s) of an interrupted earlier run in {folder}: {names}",
              file=sys.stderr)


def check_volume_output(path, what: str, inputs: dict | None = None) -> Path:
    """An output volume path: a writable format (by suffix) in an existing, writable folder, not an input; checked
    before any compute."""
    from ..io.volume import WRITE_SUFFIXES, volume_suffix  # SimpleITK loads only when a command runs, not for --help

    p = Path(path)
    if volume_suffix(p) not in WRITE_SUFFIXES:
        raise InputError(f"{what} {p} has an unsupported suffix.", f"use one of {', '.join(WRITE_SUFFIXES)}.")
    return check_output_file(p, what, inputs)


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
