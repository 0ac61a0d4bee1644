"""What `mrtoct` prints: a progress bar on a terminal, `PROGRESS <fraction> <message>` lines otherwise (the Slicer
module parses them), --progress / $MRTOCT_PROGRESS, --quiet, --verbose and --version."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from MRtoCTSynthesisLib import __version__
from MRtoCTSynthesisLib.apps.cli import main
from MRtoCTSynthesisLib.assets import DEMO_MODEL
from MRtoCTSynthesisLib.slicer.bridge import parse_progress_line

pytestmark = pytest.mark.skipif(not DEMO_MODEL.exists(), reason="bundled demo model not present in this checkout")
LINE = re.compile(r"^PROGRESS [01]\.\d{4} slices \d+/4, samples \d+/4, \d+\.\d s elapsed, ~\d+ s left$")


def _synth(folder, out, *extra):
    return ["synthesize", "--mri", str(folder / "mr.nii.gz"), "--model", str(DEMO_MODEL), "--out-ct", str(out),
            "--steps", "1", "--batch-size", "2", *extra]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mrtoct {__version__} (") and re.search(r"^torch \d", out, re.M) and "Python 3." in out


def test_lines_when_not_a_terminal_and_the_slicer_parser_reads_them(demo_four_slices, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MRTOCT_PROGRESS", raising=False)
    assert main(_synth(demo_four_slices, tmp_path / "a.nii.gz")) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("PROGRESS")]
    assert len(lines) == 2 and all(LINE.match(ln) for ln in lines), captured.err
    assert [parse_progress_line(ln)[0] for ln in lines] == [0.5, 1.0]
    assert "synthetic CT:" in captured.out and "sampler config" not in captured.out


def test_quiet_verbose_and_progress_choices(demo_four_slices, tmp_path, capsys, monkeypatch):
    assert main([*_synth(demo_four_slices, tmp_path / "q.nii.gz"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "PROGRESS" not in captured.err and (tmp_path / "q.nii.gz").exists()
    assert main(["-v", *_synth(demo_four_slices, tmp_path / "v.nii.gz")]) == 0  # before the subcommand too
    out = capsys.readouterr().out
    assert "sampler config: {" in out and '"t_spacing": "logsnr"' in out
    monkeypatch.setenv("MRTOCT_PROGRESS", "none")
    assert main(_synth(demo_four_slices, tmp_path / "n.nii.gz")) == 0
    assert "PROGRESS" not in capsys.readouterr().err
    assert main([*_synth(demo_four_slices, tmp_path / "l.nii.gz"), "--progress", "lines"]) == 0  # the flag wins
    assert capsys.readouterr().err.count("PROGRESS ") == 2
    with pytest.raises(SystemExit) as exit_:
        main(["--quiet", *_synth(demo_four_slices, tmp_path / "x.nii.gz"), "--verbose"])
    assert exit_.value.code == 2 and "Fix: use one of them" in capsys.readouterr().err


def _run_on_a_terminal(argv, env_extra, columns=None):
    """Run the engine with stderr on a pseudo-terminal (as in a person's shell) ``columns`` wide (None: a terminal
    that reports no size); return what the terminal got."""
    master, slave = pty.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("MRTOCT_PROGRESS", "COLUMNS")}
    env.update(env_extra)
    root = Path(__file__).resolve().parents[1] / "MRtoCTSynthesis"
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "MRtoCTSynthesisLib.apps.cli", *argv], stdout=subprocess.PIPE,
                            stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=300)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_shows_a_bar(demo_four_slices, tmp_path):
    for columns in (100, None):
        rc, screen = _run_on_a_terminal(_synth(demo_four_slices, tmp_path / "t.nii.gz"), {"OMP_NUM_THREADS": "1"},
                                        columns)
        assert rc == 0, screen
        assert "PROGRESS" not in screen
        bar = re.search(r"synthesis: 100%\|(█+)\| slices 4/4, samples 4/4", screen)
        assert bar, screen
        assert max(len(line) for line in re.split(r"[\r\n]", screen)) <= 100  # fits the terminal
    rc, screen = _run_on_a_terminal(_synth(demo_four_slices, tmp_path / "u.nii.gz"),
                                    {"OMP_NUM_THREADS": "1", "MRTOCT_PROGRESS": "lines"})
    assert rc == 0 and screen.count("PROGRESS ") == 2 and "█" not in screen, screen
