"""Atomic file output: a half-written file never replaces a good one.

:func:`atomic_write` yields a temporary path in the target's folder; when the block finishes without an
exception the file is flushed to disk, given the permissions a normally created file would have
(0666 minus the process umask; ``mkstemp`` alone would leave it private, 0600), and renamed over the
target in one step. On any exception (including Ctrl-C or the SIGTERM the Slicer module sends on
Cancel) the temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_write(path, suffix: str | None = None):
    """Context manager yielding a temporary :class:`Path` to write; renamed to ``path`` on success.

    ``suffix`` is the temporary file's extension (default: the target's, e.g. ``.nii.gz``), so writers that
    pick the format from the extension (SimpleITK, matplotlib) write the right format.
    """
    path = Path(path)
    if suffix is None:
        name = path.name
        suffix = name[name.index("."):] if "." in name.lstrip(".") else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj, **dump_kwargs) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (non-JSON numbers such as numpy floats via float())."""
    path = Path(path)
    with atomic_write(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=float, **dump_kwargs))
    return path
