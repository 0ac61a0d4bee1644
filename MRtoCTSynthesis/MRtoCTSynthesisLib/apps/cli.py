"""``mrtoct``: the engine's command line (the Slicer module runs the same commands in a subprocess).

Subcommands (one file each in :mod:`.commands`): ``phantom``, ``register``, ``synthesize``, ``evaluate``,
``info``, ``export``, ``train``, ``demo``. User-fixable problems print ``error: <problem>`` and
``Fix: <fix>`` and exit with status 2; nothing is written in that case (outputs are written atomically and
verified, so an existing file is never half-replaced). Unexpected errors print the same two lines and exit with
status 1; ``--debug`` adds the traceback (see :func:`run_command`). Progress goes to stderr: a bar when stderr is
a terminal, ``PROGRESS <fraction> <message>`` lines otherwise (the Slicer module reads them), chosen with
``--progress`` or ``$MRTOCT_PROGRESS``; ``--quiet`` / ``--verbose`` set how much is printed; ``mrtoct --version``
says which engine, Python, torch and SimpleITK run.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from ..errors import CancelledError, InputError
from .args import FIX_SEP, Parser, VersionAction, add_output_arguments, output_settings
from .commands import COMMANDS

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


EXIT_INTERNAL_ERROR = 1
_BUG_FIX = ("this is a bug in MRtoCTSynthesis: run the same command again with --debug to see the full traceback, "
            "and report it with that traceback.")


def _error(problem: str, fix: str | None, debug: bool, code: int) -> int:
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(f"error: {problem}", file=sys.stderr)
    if fix:
        print(f"  Fix: {fix}", file=sys.stderr)
    return code


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:300]


def run_command(func, args) -> int:
    """Run a command function with the CLI's error convention; no traceback reaches the user unless ``--debug``.

    Exit status: 0 done; 2 for a problem the user can fix (an :class:`InputError`, which includes a failed output
    write (disk full, read-only), or running out of memory), printed as ``error: <problem>`` and ``Fix: <fix>``;
    1 for anything unexpected (a bug), printed the same way with the fix "run again with --debug and report it";
    130 when cancelled. ``--debug`` (or ``MRTOCT_DEBUG=1``) also prints the full traceback.
    """
    debug = bool(getattr(args, "debug", False)) or os.environ.get("MRTOCT_DEBUG", "") not in ("", "0")
    try:
        return int(func(args) or 0)
    except InputError as err:
        return _error(err.problem, err.fix, debug, EXIT_INPUT_ERROR)
    except CancelledError as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("cancelled by the user; no output was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MemoryError:
        return _error("the computer ran out of memory.", "use a smaller --batch-size or --samples (or a smaller volume "
                      "or model), or close other programs.", debug, EXIT_INPUT_ERROR)
    except RecursionError:
        return _error("an input is nested too deeply to process (e.g. a JSON or YAML file with thousands of levels).",
                      "check the input files given to this command.", debug, EXIT_INPUT_ERROR)
    except OSError as err:
        name = f" ({err.filename})" if getattr(err, "filename", None) else ""
        return _error(f"{err.strerror or _first_line(err) or type(err).__name__}{name}.",
                      "check the file or folder named, its permissions and the free disk space, then run again; if "
                      "they are fine, run again with --debug and report the traceback.", debug, EXIT_INTERNAL_ERROR)
    except Exception as err:  # noqa: BLE001 - the last line of defence: a message, not a traceback
        detail = _first_line(err)
        return _error(f"internal error: {type(err).__name__}{': ' + detail if detail else ''}", _BUG_FIX, debug,
                      EXIT_INTERNAL_ERROR)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="mrtoct",
        description="MRI -> synthetic CT with conditional diffusion models (MRtoCTSynthesis engine).",
        epilog="Run `mrtoct demo` for a complete example on a bundled phantom case.",
    )
    p.add_argument("--version", action=VersionAction, help="print the engine's, Python's and the main packages' "
                                                         "versions and exit")
    add_output_arguments(p, top_level=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    for subparser in sub.choices.values():
        add_output_arguments(subparser)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error(f"--quiet and --verbose were both given.{FIX_SEP}use one of them.")
    with output_settings(args.progress, quiet=args.quiet, verbose=args.verbose):
        return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
