"""The one atomic writer: a failed, interrupted or silently truncated write never replaces a good file.

Every output of the engine (volumes, checkpoints, JSON, PNG figures, tables, transforms, configs) goes through
:func:`atomic_write` (a writer that fills a path) or :func:`write_bytes_atomic` (bytes known in advance):

1. stale temporaries of earlier, killed runs in the target's folder are removed (:func:`remove_stale_temporaries`);
2. a temporary file is created beside the target (same folder, hence same file system), named
   ``.<target>.<pid>-<random>.partial<suffix>`` so that it is hidden, recognisable and keeps the format suffix
   that SimpleITK and matplotlib pick the format from;
3. the data are written, flushed and ``fsync``-ed;
4. the file is **verified**: bytes written here are re-read and compared by SHA-256; files written by a library
   are checked by a ``verify`` callable (volumes: size and a re-read of the header and voxel data, see
   :func:`..volume.write_volume`; PNG: every chunk's CRC, :func:`verify_png`; JSON: it parses). Libraries such as
   ITK do not always report a full disk, so this step is what catches a truncated file;
5. it gets the permissions a normally created file would have (an existing target's mode is kept), is renamed
   over the target in one step (``os.replace``), and the folder is ``fsync``-ed so the rename survives a crash.

On any failure, including Ctrl-C or the SIGTERM the Slicer module sends on Cancel, the temporary file is removed
and an existing target is left byte for byte as it was. A write error of the operating system (disk full
``ENOSPC``, file too large ``EFBIG`` (also a ``RLIMIT_FSIZE`` limit), quota ``EDQUOT``, I/O error ``EIO``,
read-only file system ``EROFS``, permission denied) or a failed verification raises :class:`OutputWriteError`,
an :class:`~..errors.InputError` (the CLI prints it and exits with status 2) that is also an ``OSError``.

Stale temporaries: a process killed with SIGKILL (or a power cut) cannot remove its temporary file. Files that
match the pattern above are removed by the next write into the same folder when the process that made them is
gone and the file is older than :data:`DEAD_WRITER_AGE_S`, or in any case when older than :data:`STALE_AGE_S`
(another machine may be writing into a shared folder). Temporaries of earlier engine versions
(``.<name>.<random>.partial<suffix>`` and ``.<name>.<random>.tmp``) are removed after :data:`STALE_AGE_S`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)

#: a temporary whose writer process is gone is removed once it is this old (seconds)
DEAD_WRITER_AGE_S = 60.0
#: any temporary of ours is removed once it is this old (seconds), whoever wrote it
STALE_AGE_S = 6 * 3600.0
#: the part of the target name kept in a temporary's name (file names are limited to 255 bytes)
_NAME_KEEP = 120
_CHUNK = 64 * 1024 * 1024

_RAND = r"[a-z0-9_]{8}"  # tempfile's random part
_OURS = re.compile(rf"^\.(?P<target>.+)\.(?P<pid>\d+)-{_RAND}\.partial(?P<ext>[^/]*)$")
_LEGACY = (re.compile(rf"^\..+\.{_RAND}\.partial[^/]*$"), re.compile(rf"^\..+\.{_RAND}\.tmp$"))

#: what an operating-system write error means for the user, and what to do about it
WRITE_ERRNOS = {
    errno.ENOSPC: ("the disk is full", "free some disk space or write to another disk, then run again"),
    errno.EFBIG: ("the file is larger than this file system or your file-size limit (ulimit -f) allows",
                  "write to another file system or raise the limit, then run again"),
    errno.EIO: ("an input/output error occurred (a failing disk or a lost network share)",
                "check the disk or the network share (or write to another disk), then run again"),
    errno.EROFS: ("the file system is read-only", "write to a folder on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you can write to (or fix its permissions)"),
    errno.EPERM: ("the operation is not permitted", "choose a folder you can write to (or fix its permissions)"),
}
if hasattr(errno, "EDQUOT"):
    WRITE_ERRNOS[errno.EDQUOT] = ("your disk quota is exhausted", "free some of your space or write elsewhere")


class OutputWriteError(InputError, OSError):
    """Writing an output failed (disk full, read-only, I/O error, incomplete file); the target is unchanged.

    An :class:`~..errors.InputError` (``problem`` and ``fix``) and an ``OSError`` (``errno`` when known)."""

    def __init__(self, problem: str, fix: str | None = None, err: int | None = None):
        InputError.__init__(self, problem, fix)
        self.errno = err


# ------------------------------------------------------------------------------------------------ helpers
def free_space_note(folder: Path) -> str:
    """``"; 12.3 MB free in <folder>"`` (empty when unknown), to tell a full disk from other failures."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return ""
    free = st.f_bavail * st.f_frsize
    return f"; {free / 1e6:.1f} MB free in {folder}"


def write_error(path: Path, exc: BaseException, what: str | None = None) -> OutputWriteError:
    """An :class:`OutputWriteError` for an ``OSError`` raised while writing ``path``."""
    path = Path(path)
    name = what or str(path)
    code = getattr(exc, "errno", None)
    meaning, fix = WRITE_ERRNOS.get(code, (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__,
                                           "check the disk and the folder, then run again"))
    detail = getattr(exc, "strerror", None)
    detail = f" ({detail})" if detail and detail.lower() not in meaning.lower() else ""
    kept = " the previous file is unchanged." if path.exists() else " nothing was written."
    return OutputWriteError(f"could not write {name}: {meaning}{detail}{free_space_note(path.parent)};{kept}",
                            fix, code)


def _file_size_limit() -> int | None:
    try:
        import resource  # POSIX only

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return None if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, ValueError, OSError, AttributeError):
        return None


def incomplete_error(path: Path, detail: str, what: str | None = None) -> OutputWriteError:
    """The written temporary failed verification (the library did not report the failure itself)."""
    path = Path(path)
    kept = " the previous file is unchanged." if path.exists() else " nothing was written."
    limit = _file_size_limit()
    cause = "the disk is probably full or failing" + (
        f", or the file-size limit (ulimit -f: {limit} bytes) was reached" if limit is not None else "")
    fix = "free some disk space (or write to another disk)" + (" or raise the file-size limit (ulimit -f)"
                                                              if limit is not None else "")
    return OutputWriteError(
        f"could not write {what or path}: the file written is incomplete or damaged ({detail}); {cause}"
        f"{free_space_note(path.parent)};{kept}", f"{fix}, then run again", errno.EIO)


def check_path_encodable(path, what: str) -> None:
    """Refuse a path whose name is not valid UTF-8 (a shell passes such bytes through; SimpleITK and other C
    libraries cannot open the file and may abort the whole process)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(f"{what} {shown} has bytes in its name that are not valid UTF-8.",
                         "rename the file or folder (or choose another name) using UTF-8 characters only.") from None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists (another user's) or unknown: treat as alive
    return True


def is_our_temporary(name: str) -> bool:
    """True for names of temporaries this module (or an earlier engine version) creates."""
    return bool(_OURS.match(name) or any(p.match(name) for p in _LEGACY))


def remove_stale_temporaries(folder, now: float | None = None) -> list[Path]:
    """Remove our temporaries in ``folder`` left by killed writers (see the module docstring); return them."""
    folder = Path(folder)
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or not is_our_temporary(name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        age = now - st.st_mtime
        m = _OURS.match(name)
        stale = age > STALE_AGE_S or (m is not None and age > DEAD_WRITER_AGE_S and not _pid_alive(int(m["pid"])))
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


_CLEANED: set[str] = set()


def _clean_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _CLEANED:
        _CLEANED.add(key)
        remove_stale_temporaries(folder)


def fsync_dir(folder: Path) -> None:
    """``fsync`` a folder so that a rename in it survives a crash (best effort; not possible on Windows)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _suffix_of(name: str) -> str:
    return name[name.index("."):] if "." in name.lstrip(".") else ""


def _final_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)  # overwriting: keep the file's permissions
    except OSError:
        return 0o666 & ~_UMASK  # what open() would give a new file


def file_sha256(path) -> str:
    """SHA-256 (hex) of the file at ``path``, read in 1 MiB blocks: the one file checksum of the engine (model
    catalog, pinned downloads, run records)."""
    return _sha256_of_file(Path(path))[0]


def _sha256_of_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return h.hexdigest(), n
            h.update(block)
            n += len(block)


# ------------------------------------------------------------------------------------------------ writers
@contextmanager
def atomic_write(path, suffix: str | None = None, verify: Optional[Callable[[Path], None]] = None,
                 what: str | None = None) -> Iterator[Path]:
    """Context manager yielding a temporary :class:`Path` to write; verified and renamed to ``path`` on success.

    ``suffix`` is the temporary file's extension (default: the target's, e.g. ``.nii.gz``), so writers that pick
    the format from the extension (SimpleITK, matplotlib) write the right format. ``verify(tmp)`` checks the
    written file and raises (an :class:`OutputWriteError` from :func:`incomplete_error`, or any exception) when
    it is incomplete; without one, ``.png`` files get :func:`verify_png` and ``.json`` files must parse.
    ``what`` names the output in error messages (default: the path).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    check_path_encodable(path, what or "output")
    if path.is_dir():
        raise InputError(f"{what or 'output'} {path} is a folder.", "give a file name inside it.")
    if suffix is None:
        suffix = _suffix_of(path.name)
    if verify is None:
        verify = _DEFAULT_VERIFY.get(suffix.lower())
    _clean_once(folder)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[:_NAME_KEEP]}.{os.getpid()}-", suffix=f".partial{suffix}",
                                        dir=folder)
    except OSError as exc:
        raise write_error(path, exc, what) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if verify is not None:
                try:
                    verify(tmp)
                except (OutputWriteError, OSError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a reader refusing the file: it is incomplete
                    first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
                    raise incomplete_error(path, f"it cannot be read back: {first}", what) from None
            os.chmod(tmp, _final_mode(path))
            os.replace(tmp, path)
        except OutputWriteError:
            raise
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS or exc.errno in (errno.ENOSPC, errno.EFBIG):
                raise write_error(path, exc, what) from exc
            raise
        fsync_dir(folder)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            pass


def _write_all(f, data) -> None:
    view = memoryview(data).cast("B")
    for i in range(0, len(view), _CHUNK):
        f.write(view[i:i + _CHUNK])


def write_bytes_atomic(path, data, *, writer: Optional[Callable] = None, what: str | None = None) -> Path:
    """Write ``data`` (bytes-like) to ``path`` atomically and verify it: the file is re-read and its SHA-256
    compared with that of ``data``. ``writer(f, data)`` writes into the open temporary file (default: in 64 MiB
    chunks; tests replace it to simulate failures)."""
    path = Path(path)
    want = hashlib.sha256(memoryview(data).cast("B")).hexdigest()
    size = memoryview(data).nbytes

    def verify(tmp: Path) -> None:
        got, n = _sha256_of_file(tmp)
        if n != size:
            raise incomplete_error(path, f"{n} of {size} bytes on disk", what)
        if got != want:
            raise incomplete_error(path, "its SHA-256 differs from the data written", what)

    with atomic_write(path, verify=verify, what=what) as tmp:
        with open(tmp, "wb") as f:
            (writer or _write_all)(f, data)
            f.flush()
    return path


def write_text_atomic(path, text: str, *, what: str | None = None) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (verified by SHA-256)."""
    return write_bytes_atomic(path, text.encode("utf-8"), what=what)


def write_json(path, obj, **dump_kwargs) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (non-JSON numbers such as numpy floats via float()),
    verified by SHA-256 of the bytes read back."""
    return write_text_atomic(Path(path), json.dumps(obj, indent=2, default=float, **dump_kwargs))


# ------------------------------------------------------------------------------------------------ verifiers
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def verify_png(tmp: Path) -> None:
    """A complete PNG: the signature, every chunk's CRC-32 and a final IEND chunk."""
    data = Path(tmp).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise incomplete_error(Path(tmp), "not a PNG file")
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + n
        if end > len(data):
            break
        crc = int.from_bytes(data[end - 4:end], "big")
        if zlib.crc32(data[pos + 4:pos + 8 + n]) & 0xFFFFFFFF != crc:
            raise incomplete_error(Path(tmp), f"PNG chunk {kind!r} fails its CRC")
        if kind == b"IEND":
            return
        pos = end
    raise incomplete_error(Path(tmp), "the PNG ends before its IEND chunk")


def _verify_json(tmp: Path) -> None:
    try:
        json.loads(Path(tmp).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise incomplete_error(Path(tmp), f"the JSON does not parse ({exc})") from None


_DEFAULT_VERIFY: dict[str, Callable[[Path], None]] = {".png": verify_png, ".json": _verify_json}


# ------------------------------------------------------------------------------------------------ checks
def check_output_folder(folder, what: str) -> Path:
    """The folder an output goes into: it must exist, be a folder, and accept a new file (probed by creating and
    removing one of our temporaries, which also catches read-only mounts that permission bits do not show)."""
    folder = Path(folder) if str(folder) else Path(".")
    if not folder.exists():
        raise InputError(f"the folder of {what} ({folder}) does not exist.", "create it first or choose another path.")
    if not folder.is_dir():
        raise InputError(f"the folder of {what} ({folder}) is a file, not a folder.", "choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".mrtoct-probe.{os.getpid()}-", suffix=".partial", dir=folder)
    except OSError as exc:
        meaning, fix = WRITE_ERRNOS.get(exc.errno, (exc.strerror or str(exc), "choose a folder you can write to"))
        raise OutputWriteError(f"cannot write {what} into {folder}: {meaning}.", fix, exc.errno) from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return folder
