"""What every ``mrtoct`` subcommand shares: the argument parser with the engine's error format, argument
types that explain their fix, output-path checks, JSON output, the output settings (``--quiet``,
``--verbose``, ``--progress``: a bar on a terminal, ``PROGRESS`` lines for the Slicer module) and Ctrl-C/SIGTERM
handling.

Nothing here imports torch, so ``mrtoct --help`` and the parser stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
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
        print(f"note: removed {len(removed)} stale temporary file(s) of an interrupted earlier run in {folder}: "
              f"{names}",
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


def version_text() -> str:
    """``mrtoct --version``: the engine's version and where it is installed, Python's, and the versions of the main
    packages (read from their metadata: nothing is imported)."""
    import platform
    from importlib import metadata

    from .. import __version__

    lines = [f"mrtoct {__version__} ({Path(__file__).resolve().parents[1]})",
             f"Python {platform.python_version()} ({sys.executable})"]
    for dist in ("torch", "numpy", "SimpleITK", "pydicom", "tqdm"):
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist}: not installed")
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` and exit 0 (like argparse's, but the text is built only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


#: values of ``--progress`` and of the environment variable :data:`PROGRESS_ENV`
PROGRESS_MODES = ("auto", "bar", "lines", "none")
#: the environment variable that chooses the progress display when ``--progress`` is not given
PROGRESS_ENV = "MRTOCT_PROGRESS"


@dataclass
class OutputSettings:
    """How a command talks to the person or program that runs it (set by ``mrtoct``'s global flags)."""

    progress: str = "auto"  # one of PROGRESS_MODES, as requested (auto: see progress_mode)
    verbosity: int = 0      # -1 --quiet, 0 normal, 1 --verbose


#: the settings of the command that is running (:func:`output_settings` sets and restores them)
OUTPUT = OutputSettings()
_open_bars: list = []


def add_output_arguments(p: argparse.ArgumentParser, top_level: bool = False) -> None:
    """``--quiet``, ``--verbose`` and ``--progress``, accepted before the subcommand (``top_level``) and after it.

    Defaults are suppressed on the subcommands, so a flag given before the subcommand is not reset after it.
    """
    default = None if top_level else argparse.SUPPRESS
    g = p.add_argument_group("output") if not top_level else p
    g.add_argument("-q", "--quiet", action="store_true", default=False if top_level else argparse.SUPPRESS,
                   help="print only warnings and errors (no progress, no summary)")
    g.add_argument("-v", "--verbose", action="store_true", default=False if top_level else argparse.SUPPRESS,
                   help="also print the run's details (resolved sampler options, inputs, record)")
    g.add_argument("--progress", choices=PROGRESS_MODES, default=default,
                   help=f"progress display: bar (a progress bar on the terminal), lines (`PROGRESS <fraction> "
                        f"<message>` lines on stderr, what the Slicer module reads), none, or auto (default; also "
                        f"from ${PROGRESS_ENV}): a bar when stderr is a terminal, lines otherwise")


@contextlib.contextmanager
def output_settings(progress: str | None = None, quiet: bool = False, verbose: bool = False):
    """Run a command with these output settings: ``--quiet`` silences stdout (warnings and errors go to stderr
    as always); progress bars still open at the end are closed; the previous settings come back afterwards."""
    if quiet and verbose:
        raise InputError("--quiet and --verbose were both given.", "use one of them.")
    before = (OUTPUT.progress, OUTPUT.verbosity)
    OUTPUT.progress = progress or "auto"
    OUTPUT.verbosity = -1 if quiet else (1 if verbose else 0)
    try:
        if quiet:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                yield OUTPUT
        else:
            yield OUTPUT
    finally:
        close_progress_bars()
        OUTPUT.progress, OUTPUT.verbosity = before


def progress_mode() -> str:
    """The progress display in force: ``bar``, ``lines`` or ``none``.

    ``--progress`` wins, then :data:`PROGRESS_ENV`; ``auto`` means ``none`` under ``--quiet``, else a bar when
    stderr is a terminal and tqdm is installed, else ``lines`` (a pipe, a log file, the Slicer module).
    """
    mode = OUTPUT.progress
    if mode == "auto":
        mode = os.environ.get(PROGRESS_ENV, "auto").strip().lower() or "auto"
        if mode not in PROGRESS_MODES:
            print(f"warning: {PROGRESS_ENV}={os.environ.get(PROGRESS_ENV)!r} is not one of "
                  f"{', '.join(PROGRESS_MODES)}; using auto", file=sys.stderr)
            mode = "auto"
    if mode == "auto":
        if OUTPUT.verbosity < 0:
            return "none"
        isatty = getattr(sys.stderr, "isatty", None)
        mode = "bar" if isatty is not None and isatty() and _have_tqdm() else "lines"
    if mode == "bar" and not _have_tqdm():
        return "lines"
    return mode


def _have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401 - optional in principle (a dependency of the engine): the bar needs it
    except ImportError:
        return False
    return True


def progress_printer(prefix="PROGRESS", digits: int = 4, desc: str | None = None):
    """``progress(fraction, message)`` for the display :func:`progress_mode` chooses.

    ``lines``: prints ``PROGRESS <fraction> <message>`` to stderr (``digits`` decimals; the Slicer module
    parses these lines, keep the format). ``bar``: a tqdm bar on stderr labelled ``desc``, with the message
    after it, closed when the fraction reaches 1. ``none``: prints nothing.
    """
    mode = progress_mode()
    if mode == "none":
        return lambda fraction, message: None
    if mode == "bar":
        return _ProgressBar(desc)

    def progress(fraction, message):
        print(f"{prefix} {fraction:.{digits}f} {message}", file=sys.stderr, flush=True)
    return progress


class _ProgressBar:
    """A tqdm bar driven by ``(fraction, message)`` calls (1000 ticks; the message shows after the bar)."""

    TICKS = 1000

    def __init__(self, desc: str | None):
        self.desc = desc
        self.bar = None

    def __call__(self, fraction, message):
        if self.bar is None:
            from tqdm import tqdm  # only when a bar is shown (the parser stays light)

            class _MessageBar(tqdm):
                message = ""

                @property
                def format_dict(self):  # lets bar_format show {message} as it is (tqdm's postfix adds ", ")
                    return {**super().format_dict, "message": self.message}

            try:  # a terminal that reports no width (some emulators, a bare pty) would get tqdm's bar-less format
                sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
            except (OSError, ValueError, AttributeError):
                sized = False
            self.bar = _MessageBar(total=self.TICKS, desc=self.desc, file=sys.stderr, leave=True,
                                   dynamic_ncols=sized, ncols=None if sized else 100,
                                   bar_format=("{desc}: " if self.desc else "") + "{percentage:3.0f}%|{bar}| {message}")
            _open_bars.append(self.bar)
        n = int(round(min(max(float(fraction), 0.0), 1.0) * self.TICKS))
        self.bar.message = str(message)
        self.bar.update(n - self.bar.n)
        self.bar.refresh()
        if n >= self.TICKS:
            self.bar.close()
            if self.bar in _open_bars:
                _open_bars.remove(self.bar)


def close_progress_bars() -> None:
    """Close the progress bars still open (a finished, failed or cancelled run ends its bar's line)."""
    while _open_bars:
        _open_bars.pop().close()


def detail(message: str) -> None:
    """Print ``message`` to stdout only under ``--verbose``."""
    if OUTPUT.verbosity > 0:
        print(message, flush=True)


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (the Slicer module's Cancel) unwind like Ctrl-C, so temporary files are cleaned up."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. called from tests through main()): keep the default
        pass
