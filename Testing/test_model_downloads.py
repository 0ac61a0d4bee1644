"""The model manager's downloader (MRtoCTSynthesisLib.slicer.downloads) against a local http.server.

The server serves one model file at several addresses: whole (with HTTP Range support), with different bytes
(a wrong SHA-256), cut short (the connection closes after half), not at all (404), and nothing listens on a
closed port (offline). Checksums are checked with hashlib here, independently of the code under test.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest

from MRtoCTSynthesisLib.slicer import downloads as dl

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        body = PAYLOAD
        if self.path == "/missing.safetensors":
            self.send_error(404, "Not Found")
            return
        if self.path == "/changed.safetensors":
            body = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF])
        start = 0
        rng = self.headers.get("Range")
        _Handler.ranges.append(rng)
        if rng and self.path != "/norange.safetensors":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path == "/truncated.safetensors":
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _entry(url, name="m1"):
    # the catalog insists on https; the downloader itself takes any URL, so the local server can be plain http
    return {"name": name, "method": "ddpm", "bundled": False, "url": url, "size": len(PAYLOAD), "sha256": SHA}


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_good_download_is_verified_and_renamed(server, tmp_path):
    seen = []
    path = dl.download_model(_entry(f"{server}/good.safetensors"), tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert path == dl.cached_model_path(_entry(""), tmp_path) and path.name == f"m1-{SHA[:12]}.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert not list(tmp_path.glob("*.part"))
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    assert dl.model_file(_entry(""), tmp_path / "module", tmp_path) == path
    # a second call finds the verified file and does not download again
    before = len(_Handler.ranges)
    assert dl.download_model(_entry(f"{server}/good.safetensors"), tmp_path) == path
    assert len(_Handler.ranges) == before


def test_wrong_sha256_deletes_the_file_and_says_so(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="SHA-256") as err:
        dl.download_model(_entry(f"{server}/changed.safetensors"), tmp_path)
    assert "Fix:" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the model nor a part is left


def test_truncated_download_keeps_the_part_and_resumes_with_range(server, tmp_path):
    entry = _entry(f"{server}/truncated.safetensors")
    with pytest.raises(dl.DownloadError, match="resumes|incomplete|broke off"):
        dl.download_model(entry, tmp_path)
    part = dl.cached_model_path(entry, tmp_path).with_name(dl.cached_model_path(entry, tmp_path).name + ".part")
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert PAYLOAD.startswith(part.read_bytes())
    assert not dl.cached_model_path(entry, tmp_path).exists()
    # resume from the good address: the request asks for the rest only (Range) and the result verifies
    got = part.stat().st_size
    _Handler.ranges.clear()
    path = dl.download_model(dict(entry, url=f"{server}/good.safetensors"), tmp_path)
    assert _Handler.ranges == [f"bytes={got}-"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA and not part.exists()


def test_cancel_then_resume(server, tmp_path):
    entry = _entry(f"{server}/good.safetensors")
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 2  # stop after two chunks

    with pytest.raises(dl.DownloadCancelled):
        dl.download_model(entry, tmp_path, cancelled=cancelled)
    part = Path(str(dl.cached_model_path(entry, tmp_path)) + ".part")
    got = part.stat().st_size
    assert got == 2 * dl.CHUNK
    _Handler.ranges.clear()
    path = dl.download_model(entry, tmp_path)
    assert _Handler.ranges == [f"bytes={got}-"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA


def test_server_that_ignores_range_sends_everything_again(server, tmp_path):
    entry = _entry(f"{server}/norange.safetensors")
    part = Path(str(dl.cached_model_path(entry, tmp_path)) + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"garbage-" * 10)  # not the file's first bytes: a 200 answer must replace it, not extend it
    path = dl.download_model(entry, tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA


def test_404_names_the_status_and_the_fix(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404") as err:
        dl.download_model(_entry(f"{server}/missing.safetensors"), tmp_path)
    assert "Add local file" in str(err.value)


def test_offline_gives_a_clear_message(tmp_path):
    with pytest.raises(dl.DownloadError, match="offline") as err:
        dl.download_model(_entry(f"http://127.0.0.1:{_closed_port()}/good.safetensors"), tmp_path, timeout=5)
    assert "Add local file" in str(err.value) and "Fix:" in str(err.value)


def test_not_published_model_cannot_be_downloaded(tmp_path):
    entry = dict(_entry(None), availability="not published yet")
    with pytest.raises(dl.DownloadError, match="not published yet"):
        dl.download_model(entry, tmp_path)


def test_background_download_reports_progress_and_cancel(server, tmp_path):
    job = dl.ModelDownload(_entry(f"{server}/good.safetensors", name="bg"), tmp_path).start()
    assert job.wait(30) and job.error is None
    assert job.done == job.total == len(PAYLOAD) and hashlib.sha256(job.path.read_bytes()).hexdigest() == SHA
    job = dl.ModelDownload(_entry(f"http://127.0.0.1:{_closed_port()}/x", name="bg2"), tmp_path, timeout=5).start()
    assert job.wait(30) and job.path is None and "offline" in job.error


def test_add_local_file(tmp_path):
    catalog = [_entry("https://models.invalid/m1.safetensors")]
    mine = tmp_path / "downloads" / "m1.safetensors"
    mine.parent.mkdir()
    mine.write_bytes(PAYLOAD)
    path, entry = dl.add_local_model(mine, catalog, tmp_path / "cache")
    assert entry is catalog[0] and path == dl.cached_model_path(catalog[0], tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"something else")
    assert dl.add_local_model(other, catalog, tmp_path / "cache") == (other, None)
    with pytest.raises(dl.DownloadError, match="not a file"):
        dl.add_local_model(tmp_path / "nope.safetensors", catalog, tmp_path / "cache")


def test_cache_folder_per_platform(tmp_path):
    home = tmp_path
    assert dl.model_cache_dir({"MRTOCT_MODEL_CACHE": "/x/y"}, "linux", home) == Path("/x/y")
    assert dl.model_cache_dir({}, "linux", home) == home / ".cache" / "MRtoCTSynthesis" / "models"
    assert dl.model_cache_dir({"XDG_CACHE_HOME": "/c"}, "linux", home) == Path("/c/MRtoCTSynthesis/models")
    assert dl.model_cache_dir({}, "darwin", home) == home / "Library" / "Caches" / "MRtoCTSynthesis" / "models"
    assert dl.model_cache_dir({"LOCALAPPDATA": "C:/L"}, "win32", home) == Path("C:/L/MRtoCTSynthesis/models")
