"""The model manager's file side: where models live, downloading with progress, cancel and resume, SHA-256 check.

Pure Python (``urllib``, ``hashlib``, ``threading``); no torch, Qt or Slicer, so ``Testing/test_model_downloads.py``
runs it against a local ``http.server``. The Slicer module shows the progress with a QTimer that reads a
:class:`ModelDownload` running on a thread.

* :func:`model_cache_dir` -- the user's cache folder (``$MRTOCT_MODEL_CACHE``, else the platform's cache folder
  plus ``MRtoCTSynthesis/models``).
* :func:`model_file` -- the local file of a catalog entry: the bundled file, or the cached download (or None).
* :func:`download_model` -- fetch an entry's ``url`` into the cache: data go to ``<file>.part``; a later call
  resumes it with an HTTP ``Range`` request (a server that ignores it sends the whole file, which then replaces
  the part); the finished file must have the catalog's size and SHA-256 and only then is renamed onto its final
  name (``os.replace``, then the folder is synced). A wrong checksum deletes the part; a truncated or cancelled
  transfer keeps it for the next try.
* :func:`add_local_model` -- a file the user already has (e.g. downloaded in a browser): when its SHA-256 is
  that of a catalog entry, it is copied into the cache as that model (verified, atomic); otherwise it is used
  where it is.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

from ..io.atomic import atomic_write, file_sha256, fsync_dir

USER_AGENT = "MRtoCTSynthesis-model-manager"
CHUNK = 1 << 16


class DownloadError(Exception):
    """A download that did not give a verified model; the message says what happened and what to do."""


class DownloadCancelled(DownloadError):
    pass


def model_cache_dir(env: Mapping[str, str] | None = None, platform: str | None = None,
                    home: Path | None = None) -> Path:
    """``$MRTOCT_MODEL_CACHE``, or ``<user cache>/MRtoCTSynthesis/models`` (Linux: ``$XDG_CACHE_HOME`` or
    ``~/.cache``; macOS: ``~/Library/Caches``; Windows: ``%LOCALAPPDATA%``)."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    home = home or Path.home()
    if env.get("MRTOCT_MODEL_CACHE"):
        return Path(env["MRTOCT_MODEL_CACHE"])
    if platform.startswith("win"):
        base = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        base = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "MRtoCTSynthesis" / "models"


def cached_model_path(entry: Mapping, cache_dir) -> Path:
    """Where a downloaded entry lives: ``<cache>/<name>-<first 12 hex digits of sha256>.safetensors``."""
    return Path(cache_dir) / f"{entry['name']}-{entry['sha256'][:12]}.safetensors"


def model_file(entry: Mapping, module_dir, cache_dir) -> Path | None:
    """The local file of a catalog entry: the bundled file, or the verified download, or None (not here yet)."""
    if entry.get("bundled"):
        path = Path(module_dir) / entry["path"]
        return path if path.is_file() else None
    path = cached_model_path(entry, cache_dir)
    return path if path.is_file() else None


def _offline(url: str, reason) -> DownloadError:
    return DownloadError(
        f"could not reach {urllib.parse.urlsplit(url).netloc or url} ({reason}). This computer seems to be offline, "
        "or a proxy or firewall blocks the download.\nFix: connect to the internet and press Download again (it "
        "resumes), or download the file in a browser from that address and choose it with 'Add local file'.")


def download_model(entry: Mapping, cache_dir, progress: Callable[[int, int], None] | None = None,
                   cancelled: Callable[[], bool] | None = None, timeout: float = 30.0,
                   opener: Callable = urllib.request.urlopen) -> Path:
    """Download ``entry['url']`` into ``cache_dir``; returns the verified file (see the module docstring).

    ``progress(bytes done, bytes expected)`` is called after each chunk; ``cancelled()`` returning True stops the
    transfer with :class:`DownloadCancelled` (the part is kept for resuming). Raises :class:`DownloadError`.
    """
    url, size, digest = entry.get("url"), int(entry["size"]), str(entry["sha256"])
    if not url:
        why = entry.get("availability") or "not published yet"
        raise DownloadError(f"the model {entry['name']!r} has no download address ({why}).\nFix: choose another "
                            "model, or a local file with 'Add local file'.")
    final = cached_model_path(entry, cache_dir)
    if final.is_file() and final.stat().st_size == size and file_sha256(final) == digest:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if offset > size:
        part.unlink()
        offset = 0
    if offset < size:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                                       **({"Range": f"bytes={offset}-"} if offset else {})})
        try:
            response = opener(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # nothing left to send: the part may already be whole
                response = None
            else:
                raise DownloadError(f"the server answered HTTP {exc.code} ({exc.reason}) for {url}.\nFix: the model "
                                    "may have moved; update the extension (its catalog has the current address) or "
                                    "choose a local file with 'Add local file'.") from None
        except (urllib.error.URLError, OSError) as exc:
            raise _offline(url, getattr(exc, "reason", exc)) from None
        if response is not None:
            with response:
                status = getattr(response, "status", 200)
                mode = "ab" if (offset and status == 206) else "wb"
                done = offset if mode == "ab" else 0
                try:
                    with open(part, mode) as out:
                        while True:
                            if cancelled is not None and cancelled():
                                raise DownloadCancelled(f"download of {entry['name']} cancelled at {done} of {size} "
                                                        "bytes; press Download again to resume.")
                            block = response.read(CHUNK)
                            if not block:
                                break
                            done += len(block)
                            if done > size:
                                raise DownloadError(f"the server sent more than the catalog's {size} bytes for "
                                                    f"{entry['name']}.\nFix: update the extension; the model file "
                                                    "at that address is not the one the catalog describes.")
                            out.write(block)
                            if progress is not None:
                                progress(done, size)
                        out.flush()
                        os.fsync(out.fileno())
                except DownloadError:
                    if part.is_file() and part.stat().st_size > size:
                        part.unlink()
                    raise
                except (OSError, urllib.error.URLError) as exc:  # connection dropped mid-way: keep what arrived
                    raise DownloadError(f"the download of {entry['name']} broke off at {done} of {size} bytes "
                                        f"({exc}).\nFix: press Download again; it resumes where it stopped.") from None
    got = part.stat().st_size if part.is_file() else 0
    if got < size:
        raise DownloadError(f"the download of {entry['name']} is incomplete: {got} of {size} bytes arrived.\n"
                            "Fix: press Download again; it resumes where it stopped.")
    actual = file_sha256(part)
    if actual != digest:
        part.unlink()
        raise DownloadError(f"the downloaded {entry['name']} does not have the catalog's SHA-256 (got "
                            f"{actual[:16]}..., expected {digest[:16]}...); it was deleted.\nFix: press Download "
                            "again; if it happens again the file at that address has changed: update the extension.")
    os.replace(part, final)
    fsync_dir(final.parent)
    return final


def add_local_model(path, catalog: list[Mapping], cache_dir) -> tuple[Path, Mapping | None]:
    """``(file to use, catalog entry or None)`` for a model file the user chose.

    A file whose SHA-256 is a downloadable catalog entry's is copied (verified, atomically) into the cache as
    that entry, so the model manager shows it as downloaded; any other file is used where it is.
    """
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{path} is not a file.\nFix: choose a .safetensors model file.")
    digest = file_sha256(path)
    for entry in catalog:
        if entry.get("sha256") == digest and not entry.get("bundled"):
            target = cached_model_path(entry, cache_dir)
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)

                def verify(tmp, digest=digest):
                    if file_sha256(tmp) != digest:
                        raise DownloadError(f"copying {path} into the model cache gave a different file")

                with atomic_write(target, verify=verify, what=f"model {entry['name']}") as tmp:
                    shutil.copyfile(path, tmp)
            return target, entry
    return path, None


class ModelDownload:
    """One download on a background thread; the GUI polls :attr:`done`, :attr:`total`, :attr:`finished`,
    :attr:`path` and :attr:`error` from a QTimer and may call :meth:`cancel`."""

    def __init__(self, entry: Mapping, cache_dir, opener: Callable = urllib.request.urlopen, timeout: float = 30.0):
        self.entry = dict(entry)
        self.cache_dir = Path(cache_dir)
        self.done, self.total = 0, int(entry["size"])
        self.path: Path | None = None
        self.error: str | None = None
        self.cancelled = False
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._opener, self._timeout = opener, timeout
        self._thread = threading.Thread(target=self._run, name=f"mrtoct-download-{entry['name']}", daemon=True)

    def start(self) -> "ModelDownload":
        self._thread.start()
        return self

    def _progress(self, done, total):
        self.done, self.total = done, total

    def _run(self):
        try:
            self.path = download_model(self.entry, self.cache_dir, progress=self._progress,
                                       cancelled=self._cancel.is_set, timeout=self._timeout, opener=self._opener)
        except DownloadCancelled as exc:
            self.cancelled, self.error = True, str(exc)
        except DownloadError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the panel, never a traceback in the GUI
            self.error = f"the download failed: {type(exc).__name__}: {exc}"
        finally:
            self._finished.set()

    def cancel(self):
        self._cancel.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)
