"""What the Slicer module needs from the engine, as plain Python functions you can test without Slicer.

The 3D Slicer module (``MRtoCTSynthesis.py``) is kept thin: everything that can run outside Slicer is here,
and ``Testing/test_slicer_bridge.py`` tests it with pytest. Importing this module loads only the standard
library and numpy. It never imports torch, Qt, VTK or Slicer when it is imported; SimpleITK, psutil and the
engine's method registry are imported inside the functions that use them.

Contents

* **Command lines** -- :func:`build_synthesize_command`, :func:`build_register_command`,
  :func:`build_evaluate_command` build the argv of ``python -m MRtoCTSynthesisLib.apps.cli ...``, which is
  the ``mrtoct`` command run as a module so that no console script has to be on ``PATH``.
  :func:`engine_environment` and :func:`python_executable` say how to start it.
* **Output** -- :func:`parse_progress_line` reads ``PROGRESS <fraction> <message>`` lines,
  :func:`progress_text` shortens them for a progress bar, :func:`parse_error` pulls out the engine's
  ``error:`` / ``Fix:`` message and :func:`describe_exit` turns an exit status into a message.
* **Process** -- :class:`EngineProcess` reads a running engine's output on a thread, so a QTimer can
  collect it without blocking the GUI. :func:`kill_process_tree` stops the engine together with any
  launcher around it.
* **Methods, samplers, devices** -- :func:`methods`, :func:`valid_samplers`, :func:`default_sampler` read
  the engine's ``mrtoct info --json`` document (:func:`build_info_command`, :func:`parse_json_output`), and
  fall back to :data:`FALLBACK_METHODS` before torch is installed; :func:`device_choices` reads
  ``mrtoct devices --json``. Nothing here imports torch or the engine's registries, so Slicer's process never
  does. :func:`read_checkpoint_summary` reads a checkpoint's method from its safetensors header.
* **Geometry** -- :func:`ijk_to_ras_from_geometry` and :func:`geometry_from_ijk_to_ras` convert between
  ITK's LPS geometry (spacing, origin, direction) and Slicer's 4x4 IJK->RAS matrix.
  :func:`sitk_image_from_array` and :func:`array_and_ijk_to_ras_from_sitk` do the same for whole images.
  Arrays need no axis change: ``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayFromImage``
  both index ``(k, j, i)``.
* **Results and resources** -- :func:`metrics_table_rows`, :func:`read_input_check`, :func:`input_check_text`,
  :func:`input_check_rows` (the out-of-distribution check of each run, for the panel and the metrics table),
  :func:`compare_layout_xml`, :func:`sample_data_sources`, :func:`load_model_catalog`, :func:`requirements_to_install`.
"""

from __future__ import annotations

import collections
import json
import math
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..assets import ASSETS_DIR, DEFAULT_MODEL, DEMO_CASE, DEMO_MODEL  # noqa: F401 (re-exported for the module)
from ..io.atomic import file_sha256
from ..names import METHOD_INFO
from ..names import SAMPLER_LABELS as SAMPLER_LABEL_NAMES

ENGINE_MODULE = "MRtoCTSynthesisLib.apps.cli"
LIB_DIR = Path(__file__).resolve().parents[1]
MODULE_DIR = LIB_DIR.parent  # holds MRtoCTSynthesis.py and the MRtoCTSynthesisLib package
DEMO_CASE_DIR = DEMO_CASE

#: engine exit statuses (see :mod:`.cli`)
EXIT_OK = 0
EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130

NSMI_CHOICES = ("auto", "noiseless", "noisy")
#: the registration modes the panel offers, its default first (rigid: one subject's MRI and CT; see
#: pipeline.registration for the use of each; the deformable ones are for preparing training data, CLI only)
REGISTRATION_MODES = ("rigid", "affine", "rigid+affine")

#: methods that also embed sparse-view CT measurements of a reference CT (DDMM-Synth)
MEASUREMENT_METHODS = frozenset({"ddmm_synth"})

#: Used by :func:`methods` / :func:`valid_samplers` when the engine's registries cannot be imported
#: (in Slicer, before torch has been installed). ``Testing/test_slicer_bridge.py`` checks that these
#: entries agree with the engine for every method the engine registers. Methods listed here that the
#: engine does not register yet are simply offered early.
FALLBACK_METHODS: dict[str, dict] = {
    name: {"samplers": info["samplers"], "default_sampler": info["default_sampler"], "label": info["label"]}
    for name, info in METHOD_INFO.items()
}

#: checkpoint methods a synthesis method can run with (DDMM-Synth samples with a conditional DDPM prior)
COMPATIBLE_CHECKPOINTS: dict[str, frozenset] = {
    "ddmm_synth": frozenset({"ddpm", "ddmm_synth"}),
}

SAMPLER_LABELS = dict(SAMPLER_LABEL_NAMES)  # the engine's labels (names.py), for the sampler combo box

#: packages never installed from requirements.txt: Slicer ships numpy and SimpleITK; torch is installed separately
#: (the module's ensureDependencies, with the CPU wheel index for a CPU-only choice)
SLICER_SHIPPED = frozenset({"numpy", "simpleitk", "torch"})

#: CT display presets for the sCT and the reference CT: name -> (window, level) in HU. Soft tissue is the usual
#: abdomen/pelvis window; bone is Slicer's own "CT-Bone" preset (vtkMRMLScalarVolumeDisplayNode).
CT_WINDOW_PRESETS = {"soft tissue": (400.0, 40.0), "bone": (1000.0, 400.0)}
CT_WINDOW_LEVEL = CT_WINDOW_PRESETS["soft tissue"]
#: difference (sCT - CT) display range in HU, symmetric
DIFFERENCE_RANGE_HU = 300.0

COMPARE_LAYOUT_ID = 8631


# ============================================================================================ commands
def _add(argv: list[str], flag: str, value) -> None:
    if value is not None:
        argv += [flag, str(value)]


def build_synthesize_command(python_exe, mri_path, model_path, out_ct, out_std=None, *, method: str | None = None,
                             sampler: str | None = None, steps: int | None = None, samples: int = 1, seed: int = 0,
                             device: str = "auto", batch_size: int | None = None, precision: str | None = None,
                             info_json=None, reference_ct=None, projections: int | None = None,
                             noise_sigma: float | None = None, nsmi: str | None = None,
                             module: str = ENGINE_MODULE) -> list[str]:
    """argv for ``mrtoct synthesize``.

    ``sampler`` None or "" and ``steps`` None or 0 keep the model's defaults. ``method`` only decides
    which extra flags are added, because the checkpoint determines the method. For a DDMM-Synth method
    (:data:`MEASUREMENT_METHODS`), ``reference_ct`` is required and ``--ct``, ``--projections``,
    ``--noise-sigma`` and ``--nsmi`` are added; the last three only when given. For every other method
    ``reference_ct``, ``projections``, ``noise_sigma`` and ``nsmi`` are ignored: the reference CT is then
    only used by :func:`build_evaluate_command`.
    """
    if int(samples) < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if steps is not None and int(steps) < 0:
        raise ValueError(f"steps must be >= 1 (or 0/None for the sampler's default), got {steps}")
    argv = [str(python_exe), "-m", module, "synthesize", "--mri", str(mri_path), "--model", str(model_path),
            "--out-ct", str(out_ct)]
    _add(argv, "--out-std", out_std)
    _add(argv, "--sampler", sampler or None)
    _add(argv, "--steps", int(steps) if steps else None)
    argv += ["--samples", str(int(samples)), "--seed", str(int(seed)), "--device", str(device or "auto")]
    _add(argv, "--batch-size", batch_size)
    _add(argv, "--precision", precision)
    _add(argv, "--info-json", info_json)
    if uses_measurements(method):
        if reference_ct is None:
            raise ValueError(f"method {method!r} embeds CT measurements: a reference CT is required")
        if nsmi is not None and nsmi not in NSMI_CHOICES:
            raise ValueError(f"nsmi must be one of {NSMI_CHOICES}, got {nsmi!r}")
        if projections is not None and int(projections) < 1:
            raise ValueError(f"projections must be >= 1, got {projections}")
        if noise_sigma is not None and not float(noise_sigma) >= 0:
            raise ValueError(f"noise sigma must be >= 0, got {noise_sigma}")
        argv += ["--ct", str(reference_ct)]
        _add(argv, "--projections", int(projections) if projections is not None else None)
        _add(argv, "--noise-sigma", repr(float(noise_sigma)) if noise_sigma is not None else None)
        _add(argv, "--nsmi", nsmi)
    return argv


def build_register_command(python_exe, fixed_ct, moving_mri, out, *, transform=None, mode: str = "rigid",
                           seed: int = 0, json_out=None, module: str = ENGINE_MODULE) -> list[str]:
    """argv for ``mrtoct register``: resample the moving MRI onto the grid of the fixed CT (``json_out`` gets
    the quality numbers and warnings, see :func:`registration_summary`)."""
    if mode not in REGISTRATION_MODES:
        raise ValueError(f"registration mode must be one of {REGISTRATION_MODES}, got {mode!r}")
    argv = [str(python_exe), "-m", module, "register", "--fixed", str(fixed_ct), "--moving", str(moving_mri),
            "--out", str(out), "--mode", mode, "--seed", str(int(seed))]
    _add(argv, "--transform", transform)
    _add(argv, "--json", json_out)
    return argv


def registration_summary(path) -> list[str]:
    """Lines for the panel from ``mrtoct register --json``'s file: the ground-truth-free quality checks
    (Mattes MI at the start and at the end, lower is better; gradient correlation of the edges before and
    after; the CT's overlap with the MRI) and every warning. An unreadable or missing file gives one line
    saying so (the registered MRI itself was still loaded)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        q = doc["quality"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"Registration quality: not available ({Path(path).name} could not be read)."]

    def num(key, fmt="{:.3f}"):
        v = q.get(key)
        return "n/a" if v is None else fmt.format(v)

    lines = [f"Registration ({doc.get('mode', '?')}): Mattes MI {num('metric_start')} -> {num('metric_final')} "
             f"(lower is better), edge correlation {num('gradient_correlation_before')} -> "
             f"{num('gradient_correlation_after')}, overlap {num('overlap_fraction', '{:.0%}')}."]
    lines += [f"Registration warning: {w}" for w in doc.get("warnings") or []]
    if not doc.get("warnings"):
        lines.append("Check it in the slice views: the reference CT is shown over the registered MRI at 50 % "
                     "opacity (drag the foreground opacity slider to compare).")
    return lines


def build_evaluate_command(python_exe, pred, ref, *, mask=None, json_out=None, per_slice: bool = False,
                           module: str = ENGINE_MODULE) -> list[str]:
    """argv for ``mrtoct evaluate`` (MAE/ME in HU, PSNR, SSIM, MS-SSIM; ``json_out`` gets them all)."""
    argv = [str(python_exe), "-m", module, "evaluate", "--pred", str(pred), "--ref", str(ref)]
    _add(argv, "--mask", mask)
    _add(argv, "--json", json_out)
    if per_slice:
        argv.append("--per-slice")
    return argv


def python_executable(which: Callable[[str], str | None] = shutil.which, executable: str | None = None,
                      platform: str | None = None) -> str:
    """The Python that runs the engine: Slicer's ``PythonSlicer`` when found, else ``executable``.

    ``PythonSlicer`` is Slicer's Python with Slicer's environment (site-packages, library paths). It is
    looked up on ``PATH`` and next to ``executable`` (``sys.executable`` by default).
    """
    executable = executable or sys.executable
    platform = platform or sys.platform
    name = "PythonSlicer.exe" if platform.startswith("win") else "PythonSlicer"
    found = which("PythonSlicer") or which(name)
    if found:
        return found
    beside = Path(executable).with_name(name)
    if beside.is_file():
        return str(beside)
    return executable


def engine_environment(base_env: Mapping[str, str] | None = None, module_dir=MODULE_DIR) -> dict[str, str]:
    """Environment variables to add for the engine process.

    ``module_dir`` goes first on ``PYTHONPATH``, so that ``-m MRtoCTSynthesisLib.apps.cli`` finds the
    package that ships with the module. Output is unbuffered UTF-8, so that progress arrives while it
    happens.
    """
    base_env = os.environ if base_env is None else base_env
    old = base_env.get("PYTHONPATH", "")
    parts = [str(module_dir)] + [p for p in old.split(os.pathsep) if p and p != str(module_dir)]
    return {"PYTHONPATH": os.pathsep.join(parts), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}


# ============================================================================================== output
_PROGRESS = re.compile(r"^\s*PROGRESS\s+(\S+)(?:\s+(.*?))?\s*$")
_SLICES = re.compile(r"slices\s+(\d+)\s*/\s*(\d+)")
_LEFT = re.compile(r"~\s*(\d+(?:\.\d+)?)\s*s\s+left")


def parse_progress_line(line: str) -> tuple[float, str] | None:
    """``"PROGRESS 0.4200 slices 10/24, ..."`` -> ``(0.42, "slices 10/24, ...")``; None for other lines.

    The fraction is clamped to [0, 1]. A line whose fraction is not a finite number is not treated as a
    progress line.
    """
    if not line:
        return None
    m = _PROGRESS.match(line)
    if not m:
        return None
    try:
        fraction = float(m.group(1))
    except ValueError:
        return None
    if not math.isfinite(fraction):
        return None
    return min(1.0, max(0.0, fraction)), (m.group(2) or "")


def format_seconds(seconds: float) -> str:
    """Rounded time for a person: ``"45 s"``, ``"3 min"``, ``"1 h 05 min"``."""
    s = max(0, int(round(seconds)))
    if s < 100:
        return f"{s} s"
    if s < 3600:
        return f"{int(round(s / 60))} min"
    h, rem = divmod(s, 3600)
    return f"{h} h {int(round(rem / 60)):02d} min"


def progress_text(message: str) -> str:
    """Short text for a progress bar: ``"slices 10/24, ~17 s left"`` -> ``"slices 10/24 - 17 s left"``.

    Messages that give neither slices nor time left come back unchanged.
    """
    parts = []
    m = _SLICES.search(message or "")
    if m:
        parts.append(f"slices {m.group(1)}/{m.group(2)}")
    t = _LEFT.search(message or "")
    if t:
        parts.append(f"{format_seconds(float(t.group(1)))} left")
    return " - ".join(parts) if parts else (message or "").strip()


_ERROR = re.compile(r"(?:^|:\s)error:\s*(.*)$")
_FIX = re.compile(r"^\s*Fix:\s*(.*)$")


def parse_error(stderr_text: str, tail: int = 8) -> str:
    """The user-facing message of a failed engine run.

    Returns the engine's ``error: <problem>`` line with any continuation lines, followed by its
    ``Fix: <fix>`` line. argparse's ``mrtoct synthesize: error: ...`` is recognised as well. When neither
    is present (for example after a crash with a traceback), the last ``tail`` lines that are not
    progress lines are returned. Returns "" for empty output.
    """
    lines = [ln.rstrip() for ln in (stderr_text or "").splitlines()]
    lines = [ln for ln in lines if parse_progress_line(ln) is None]
    for i, line in enumerate(lines):
        m = _ERROR.search(line)
        if not m:
            continue
        problem = [m.group(1).strip()]
        fix = None
        for nxt in lines[i + 1:]:
            f = _FIX.match(nxt)
            if f:
                fix = f.group(1).strip()
                break
            if not nxt.strip() or _ERROR.search(nxt) or not nxt.startswith((" ", "\t")):
                break
            problem.append(nxt.strip())
        text = "error: " + "\n".join(problem)
        return text + (f"\nFix: {fix}" if fix else "")
    cancelled = [ln for ln in lines if ln.strip().startswith("cancelled")]
    if cancelled:
        return cancelled[-1].strip()
    meaningful = [ln for ln in lines if ln.strip()]
    return "\n".join(meaningful[-tail:])


def describe_exit(returncode: int | None, output: str, what: str = "the engine") -> tuple[str, str]:
    """``(status, message)`` for a finished engine run.

    status is ``"ok"``, ``"cancelled"``, ``"input_error"`` (exit 2: the engine says what to fix) or
    ``"failed"`` (any other status, for example a crash or a kill).
    """
    if returncode == EXIT_OK:
        return "ok", f"{what} finished."
    if returncode == EXIT_CANCELLED or (returncode is not None and returncode < 0 and
                                        -returncode in (getattr(signal, "SIGTERM", 15), getattr(signal, "SIGKILL", 9))):
        return "cancelled", f"{what} was cancelled; no output was written."
    detail = parse_error(output)
    if returncode == EXIT_INPUT_ERROR:
        return "input_error", detail or f"{what} rejected its input (exit status 2)."
    head = f"{what} stopped with exit status {returncode}."
    return "failed", head + (f"\n{detail}" if detail else "")


# ============================================================================================= process
class EngineProcess:
    """Collects a running engine's output without blocking: a thread reads, :meth:`poll` drains.

    ``popen`` must have been started with ``stdout=PIPE`` and ``stderr=STDOUT``, in text or bytes mode
    (``slicer.util.launchConsoleProcess`` starts it that way). The GUI calls :meth:`poll` from a QTimer
    and stops when :attr:`finished` is True. :meth:`cancel` ends the whole process tree.
    """

    def __init__(self, popen: subprocess.Popen, max_lines: int = 5000):
        self.popen = popen
        self.lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self.cancelled = False
        self.started = time.monotonic()
        self._queue: queue.Queue[str] = queue.Queue()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, name="mrtoct-engine-output", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, argv: Sequence[str], cwd=None, env: Mapping[str, str] | None = None) -> "EngineProcess":
        """Start ``argv`` with plain :mod:`subprocess` (outside Slicer: tests, scripts)."""
        kwargs = {}
        if sys.platform.startswith("win"):
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        popen = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 text=True, encoding="utf-8", errors="replace", bufsize=1, cwd=cwd,
                                 env=None if env is None else dict(env), **kwargs)
        return cls(popen)

    def _read(self) -> None:
        stream = self.popen.stdout
        try:
            while stream is not None:
                try:
                    raw = stream.readline()
                except UnicodeDecodeError:  # a text-mode pipe in a non-UTF-8 locale: drop the line
                    continue
                except (OSError, ValueError):
                    break
                if not raw:
                    break
                if isinstance(raw, bytes):
                    raw = raw.decode("utf-8", "replace")
                self._queue.put(raw.rstrip("\r\n"))
        finally:
            try:
                self.popen.wait()
            finally:
                self._done.set()

    def poll(self) -> list[str]:
        """Lines that arrived since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.lines.extend(out)
        return out

    @property
    def finished(self) -> bool:
        """True when the process has exited and all of its output has been collected by :meth:`poll`."""
        return self._done.is_set() and self._queue.empty()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self._done.is_set() else None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process ends (tests and scripts; the GUI polls instead)."""
        self._done.wait(timeout)
        self.poll()
        return self.returncode

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the engine and everything it started: first politely (SIGTERM: the engine then cleans up
        its temporary files), then by force after ``timeout`` seconds."""
        self.cancelled = True
        if not self._done.is_set():
            kill_process_tree(self.popen.pid, timeout=timeout, popen=self.popen)


def _descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` on POSIX, from ``ps`` (Linux and macOS) or ``/proc``."""
    table: list[tuple[int, int]] = []
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True,
                             timeout=10, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                table.append((int(parts[0]), int(parts[1])))
    except (OSError, subprocess.SubprocessError):
        pass
    if not table and os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    table.append((int(entry), ppid))
                except (OSError, ValueError, IndexError):
                    continue
    children = collections.defaultdict(list)
    for child, parent in table:
        children[parent].append(child)
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child != pid:
                found.append(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a zombie has exited; only its parent has not collected it yet
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def kill_process_tree(pid: int, timeout: float = 5.0, popen: subprocess.Popen | None = None,
                      use_psutil: bool | None = None) -> None:
    """End process ``pid`` and all of its descendants.

    Slicer's ``PythonSlicer`` is a launcher that runs the real interpreter as a child, so killing the
    launcher alone would leave the engine running. On POSIX every process first gets SIGTERM, which the
    engine turns into a clean cancel, and whatever is still alive after ``timeout`` seconds gets SIGKILL.
    On Windows ``taskkill /T /F`` ends the tree. psutil is used when it is installed, unless
    ``use_psutil`` is False.
    """
    if use_psutil is not False:
        try:
            import psutil
        except ImportError:
            if use_psutil:
                raise
        else:
            try:
                root = psutil.Process(pid)
                children = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for p in children + [root]:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            # The root is waited for through its Popen when there is one: if psutil reaped it, Popen would
            # report exit status 0 instead of the real one.
            waited = children if popen is not None else children + [root]
            _, alive = psutil.wait_procs(waited, timeout=timeout)
            if popen is not None:
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    alive.append(root)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            if popen is not None:
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            return

    if sys.platform.startswith("win"):
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        if popen is not None:
            popen.wait(timeout=timeout)
        return

    tree = _descendants(pid) + [pid]  # collect first: once the parent is gone, its children are re-parented
    for p in tree:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None:
            popen.poll()
        if not any(_alive(p) for p in tree if not (popen is not None and p == pid and popen.returncode is not None)):
            break
        time.sleep(0.05)
    for p in tree:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    if popen is not None:
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


# ================================================================================ methods and samplers
# The lists come from the engine process (``mrtoct info --json``, read by :func:`parse_json_output`); Slicer's
# own process never imports the engine's registries, which need torch. ``info`` below is that document, or
# None before the engine could be asked (torch not installed yet): then :data:`FALLBACK_METHODS` (the
# torch-free names of :mod:`..names`, which ``Testing/test_names.py`` keeps equal to the registries) is used.
def _method_entries(info: Mapping | None) -> dict[str, dict]:
    if info and isinstance(info.get("methods"), list):
        return {m["name"]: {"samplers": list(m.get("samplers") or ()), "default_sampler": m.get("default_sampler"),
                            "label": m.get("label") or m["name"]} for m in info["methods"] if m.get("name")}
    return FALLBACK_METHODS


def methods(info: Mapping | None = None) -> list[str]:
    """Names of the synthesis methods: from the engine's ``info`` document, or :data:`FALLBACK_METHODS`."""
    return list(_method_entries(info))


def method_label(method: str, info: Mapping | None = None) -> str:
    return _method_entries(info).get(method, FALLBACK_METHODS.get(method, {})).get("label", method)


def valid_samplers(method: str, info: Mapping | None = None) -> list[str]:
    """Samplers that work with ``method``, in the engine's order; [] for an unknown method.

    DDMM-Synth needs samplers that expose the x0 prediction at each step (ddpm, ddim, dpmpp).
    """
    return list(_method_entries(info).get(method, {}).get("samplers", ()))


def default_sampler(method: str, info: Mapping | None = None) -> str | None:
    """The sampler ``method`` uses when none is chosen."""
    entry = _method_entries(info).get(method, {})
    if entry.get("default_sampler"):
        return entry["default_sampler"]
    samplers = valid_samplers(method, info)
    return samplers[0] if samplers else None


def build_info_command(python_exe, module: str = ENGINE_MODULE) -> list[str]:
    """argv for ``mrtoct info --json`` (methods, samplers, model catalog, versions)."""
    return [str(python_exe), "-m", module, "info", "--json"]


def build_devices_command(python_exe, module: str = ENGINE_MODULE) -> list[str]:
    """argv for ``mrtoct devices --json`` (CUDA GPUs with name and memory, MPS, CPU; what ``auto`` picks)."""
    return [str(python_exe), "-m", module, "devices", "--json"]


def parse_json_output(text: str, expected_format: str | None = None) -> dict | None:
    """The last line of ``text`` that is a JSON object (of ``expected_format`` when given), or None.

    The engine prints its ``--json`` document on one line of stdout. Slicer merges stderr into the same pipe,
    so warnings may come before or after it; they are skipped.
    """
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and (expected_format is None or doc.get("format") == expected_format):
            return doc
    return None


def device_choices(devices_doc: Mapping | None) -> list[tuple[str, str]]:
    """``[(value for --device, label)]`` for the device combo box: ``auto`` first, then what the engine reports.

    Without a report (torch not installed yet) the list is ``auto``, ``cpu`` and ``cuda``.
    """
    if not devices_doc or not isinstance(devices_doc.get("devices"), list):
        return [("auto", "auto (CUDA GPU when available, else CPU)"), ("cpu", "cpu"), ("cuda", "cuda")]
    auto = devices_doc.get("auto") or "cpu"
    out = [("auto", f"auto ({auto})")]
    for d in devices_doc["devices"]:
        if not isinstance(d, Mapping) or not d.get("id"):
            continue
        memory = d.get("memory_bytes")
        text = f"{d['id']}: {d.get('name') or d['id']}" + (f", {memory / 2**30:.0f} GiB" if memory else "")
        out.append((str(d["id"]), text))
    return out


#: samplers whose number of steps is fixed by the model (SynDiff's T/k) or that have none (one-call CNN/GANs)
FIXED_STEP_SAMPLERS = frozenset({"syndiff", "direct"})


def sampler_takes_steps(sampler: str | None) -> bool:
    """False for samplers that refuse ``--steps`` (:data:`FIXED_STEP_SAMPLERS`)."""
    return sampler not in FIXED_STEP_SAMPLERS


def uses_measurements(method: str | None) -> bool:
    """True for methods that embed sparse-view CT measurements (``--ct/--projections/--noise-sigma/--nsmi``)."""
    return bool(method) and method in MEASUREMENT_METHODS


def checkpoint_matches_method(method: str, checkpoint_method: str | None) -> bool:
    """Whether a checkpoint of ``checkpoint_method`` can run as ``method`` (unknown -> True)."""
    if not checkpoint_method or not method:
        return True
    return checkpoint_method in COMPATIBLE_CHECKPOINTS.get(method, frozenset({method}))


def method_run_matches(chosen: str, ran: str | None) -> bool:
    """Whether the run record's method (``info['method']``) is the chosen one; DDMM-Synth reports its block
    (``ddmm_synth`` noiseless, ``ddmm_synth_noise`` noisy)."""
    if not ran or not chosen:
        return False
    return ran == chosen or (uses_measurements(chosen) and ran.startswith(chosen))


def read_checkpoint_summary(path) -> dict | None:
    """The ``mrtoct`` metadata of a ``.safetensors`` checkpoint, read from its header without torch.

    Returns a dict with at least ``method`` (plus ``image_size``, ``context_slices`` and ``created``
    where present), or None when the file is missing, is not a safetensors file or has no ``mrtoct``
    metadata.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > 100_000_000:
                return None
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or "mrtoct" not in meta:
        return None
    try:
        doc = json.loads(meta["mrtoct"])
    except (TypeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    cond = doc.get("conditioning") or {}
    return {"method": doc.get("method"), "image_size": cond.get("image_size"),
            "context_slices": cond.get("context_slices"), "created": doc.get("created"),
            "engine_version": doc.get("engine_version")}


# ============================================================================================ geometry
def lps_to_ras_matrix() -> np.ndarray:
    """4x4 matrix taking LPS points to RAS (and back: it is its own inverse): ``diag(-1, -1, 1, 1)``."""
    return np.diag([-1.0, -1.0, 1.0, 1.0])


def ijk_to_ras_from_geometry(spacing: Sequence[float], origin: Sequence[float],
                             direction: Sequence[float]) -> np.ndarray:
    """Slicer's IJK->RAS matrix of an ITK image with ``spacing``, ``origin`` (LPS) and ``direction``.

    ``direction`` is ITK's row-major 3x3 matrix whose column c is the LPS direction of index axis c. The
    IJK->LPS matrix is ``[D diag(spacing) | origin]``. RAS negates the first two physical axes, so the
    first two rows change sign.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag(np.asarray(spacing, dtype=np.float64))
    m[:3, 3] = np.asarray(origin, dtype=np.float64)
    return lps_to_ras_matrix() @ m


def geometry_from_ijk_to_ras(matrix) -> tuple[tuple[float, float, float], tuple[float, float, float],
                                              tuple[float, ...]]:
    """The inverse of :func:`ijk_to_ras_from_geometry`: ``(spacing, origin, direction)`` in ITK/LPS terms.

    Spacing is the length of each column of the 3x3 part, and direction is each column divided by its
    spacing. A zero spacing or a non-affine last row raises ValueError.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"IJK->RAS must be 4x4, got shape {m.shape}")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"IJK->RAS must be affine (last row 0 0 0 1), got {m[3].tolist()}")
    lps = lps_to_ras_matrix() @ m
    a = lps[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"IJK->RAS has a zero-length axis (spacing {spacing.tolist()})")
    direction = a / spacing
    return (tuple(float(s) for s in spacing), tuple(float(o) for o in lps[:3, 3]),
            tuple(float(x) for x in direction.ravel()))


def sitk_image_from_array(array, ijk_to_ras):
    """A SimpleITK image holding ``array`` (k, j, i) with the geometry of ``ijk_to_ras`` (the export path)."""
    import SimpleITK as sitk

    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"a 3D array (k, j, i) is needed, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    spacing, origin, direction = geometry_from_ijk_to_ras(ijk_to_ras)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def array_and_ijk_to_ras_from_sitk(image) -> tuple[np.ndarray, np.ndarray]:
    """``(array (k, j, i), IJK->RAS 4x4)`` of a 3D SimpleITK image (the import path)."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise ValueError(f"a 3D image is needed, got {image.GetDimension()}D")
    return (sitk.GetArrayFromImage(image),
            ijk_to_ras_from_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection()))


def same_grid(shape_a: Sequence[int], ijk_to_ras_a, shape_b: Sequence[int], ijk_to_ras_b, tol_mm: float = 1e-3) -> bool:
    """True when two volumes lie on the same voxel grid: same array shape, and voxel corners within ``tol_mm``."""
    if tuple(int(s) for s in shape_a) != tuple(int(s) for s in shape_b):
        return False
    a = np.asarray(ijk_to_ras_a, dtype=np.float64)
    b = np.asarray(ijk_to_ras_b, dtype=np.float64)
    nk, nj, ni = (int(s) for s in shape_a)
    corners = np.array([[i, j, k, 1.0] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)]).T
    return bool(np.max(np.abs(a @ corners - b @ corners)) <= tol_mm)


# ======================================================================================== results, UI
_METRIC_ROWS = (
    ("mae_hu", "MAE (HU)", "{:.1f}"),
    ("me_hu", "ME (HU)", "{:+.1f}"),
    ("psnr_db", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("ms_ssim", "MS-SSIM", "{:.4f}"),
    ("mean_std_hu", "Mean MC std (HU)", "{:.1f}"),
    ("voxels", "Voxels evaluated", "{:d}"),
    ("slices", "Slices evaluated", "{:d}"),
    ("ssim_mode", "SSIM mode", "{}"),
)


def _format_value(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    try:
        if fmt == "{:d}":
            return fmt.format(int(value))
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def metrics_table_rows(metrics_json, input_check: Mapping | None = None) -> list[tuple[str, str]]:
    """``[(metric, value text), ...]`` for the metrics table node.

    Accepts what ``mrtoct evaluate --json`` writes (a dict or its JSON text), or the demo's
    ``{"metrics": {...}}`` wrapper. Keys that are missing are left out, NaN is shown as ``n/a``, and the
    per-slice list is not included. ``input_check`` (the run record's, :func:`read_input_check`; by default the
    demo wrapper's ``run.input_check``) adds the rows of :func:`input_check_rows` at the end.
    """
    data = json.loads(metrics_json) if isinstance(metrics_json, (str, bytes)) else dict(metrics_json or {})
    if input_check is None and isinstance(data.get("run"), dict):  # the demo's metrics.json carries its run's info
        input_check = data["run"].get("input_check")
    if isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    rows = [(label, _format_value(data[key], fmt)) for key, label, fmt in _METRIC_ROWS if key in data]
    return rows + input_check_rows(input_check)


def read_input_check(run_json) -> dict | None:
    """The ``input_check`` of a run record (``mrtoct synthesize --info-json``; a path, JSON text or dict), or None
    when the file is missing or has none (an older engine)."""
    try:
        if isinstance(run_json, Mapping):
            data = dict(run_json)
        elif isinstance(run_json, (str, bytes)) and str(run_json).lstrip().startswith("{"):
            data = json.loads(run_json)
        else:
            data = json.loads(Path(run_json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    check = data.get("input_check") if isinstance(data, dict) else None
    return dict(check) if isinstance(check, dict) else None


def input_check_text(check: Mapping | None) -> str:
    """What the panel shows about the input check: a warning naming the reasons when the MRI is out of the model's
    training distribution, a short confirmation when it is inside, or why it was not checked ("" without a check).
    The same words as the CLI (:func:`..pipeline.input_check.describe`, which this module may not import)."""
    if not check:
        return ""
    if check.get("in_distribution") is None:
        return "Input check: " + "; ".join(check.get("reasons") or ["not checked"])
    score = check.get("score")
    score_text = f"{float(score):.2f}" if isinstance(score, (int, float)) else "?"
    if check.get("in_distribution"):
        return f"Input check: like the training images (score {score_text} <= 1)."
    return (f"WARNING: this MRI is OUT OF the model's training distribution (score {score_text} > 1): "
            + "; ".join(check.get("reasons") or []) + ". The synthetic CT may be wrong without looking wrong; "
            "do not use it clinically.")


def input_check_rows(check: Mapping | None) -> list[tuple[str, str]]:
    """Rows for the metrics table: ``Input check`` (in / OUT OF distribution, or not checked), its score and the
    reasons."""
    if not check:
        return []
    flag = check.get("in_distribution")
    rows = [("Input check", "not checked" if flag is None else ("in distribution" if flag else
                                                               "OUT OF DISTRIBUTION"))]
    if check.get("score") is not None:
        rows.append(("Input check score (<= 1: in)", _format_value(float(check["score"]), "{:.2f}")))
    if check.get("reasons"):
        rows.append(("Input check reasons", "; ".join(str(r) for r in check["reasons"])))
    return rows


def compare_layout_xml(views: Sequence[tuple[str, str, str]]) -> str:
    """Slicer layout XML with one row of axial slice views; ``views`` = ``[(singleton tag, label, #colour)]``."""
    from xml.sax.saxutils import escape

    items = []
    for tag, label, color in views:
        items.append(
            ' <item>\n'
            f'  <view class="vtkMRMLSliceNode" singletontag="{escape(tag)}">\n'
            '   <property name="orientation" action="default">Axial</property>\n'
            f'   <property name="viewlabel" action="default">{escape(label)}</property>\n'
            f'   <property name="viewcolor" action="default">{escape(color)}</property>\n'
            '  </view>\n'
            ' </item>\n')
    return '<layout type="horizontal" split="true">\n' + "".join(items) + "</layout>\n"


COMPARE_VIEWS = (
    ("MRtoCTMRI", "MR", "#E8A33D"),
    ("MRtoCTsCT", "sCT", "#4F9DDE"),
    ("MRtoCTCT", "CT", "#6BBF59"),
    ("MRtoCTStd", "std", "#C04FD0"),
)


# ============================================================================ resources, dependencies
DEMO_CASE_FILES = (("mr.nii.gz", "MRtoCT phantom MRI"), ("ct.nii.gz", "MRtoCT phantom CT"),
                   ("mask.nii.gz", "MRtoCT phantom body mask"))


def sample_data_sources(case_dir=DEMO_CASE_DIR, thumbnail=None) -> list[dict]:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``.

    Returns one entry for the bundled phantom case, with local ``file://`` URIs and SHA-256 checksums so
    that a stale cached copy is replaced, or [] when the case files are missing.
    """
    case_dir = Path(case_dir)
    paths = [case_dir / name for name, _ in DEMO_CASE_FILES]
    if not all(p.is_file() for p in paths):
        return []
    return [{
        "category": "MRtoCTSynthesis",
        "sampleName": "MRtoCTPhantom",
        "uris": [p.resolve().as_uri() for p in paths],
        "fileNames": [f"MRtoCTSynthesis-phantom-{name}" for name, _ in DEMO_CASE_FILES],
        "nodeNames": [node for _, node in DEMO_CASE_FILES],
        "checksums": [f"SHA256:{file_sha256(p)}" for p in paths],
        "loadFileTypes": ["VolumeFile"] * len(paths),
        "thumbnailFileName": None if thumbnail is None else str(thumbnail),
    }]


def load_model_catalog(path) -> list[dict]:
    """The checked entries of ``Resources/models.json`` (see :mod:`..assets.catalog`; raises InputError)."""
    from ..assets.catalog import load_catalog

    return load_catalog(path)


def parse_requirements(text: str) -> list[str]:
    """Requirement lines of a requirements.txt (comments, blank lines and pip options removed)."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement (PEP 503: lower case, runs of -_. -> -)."""
    m = _REQ_NAME.match(requirement)
    if not m:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def requirements_to_install(requirements: Iterable[str], installed: Callable[[str], str | None] = _installed_version,
                            skip: Iterable[str] = SLICER_SHIPPED) -> list[str]:
    """The requirements that are missing or too old, leaving out what Slicer ships (``skip``).

    Version specifiers are checked with ``packaging`` when it is available. Without it, a requirement
    counts as satisfied once any version is installed.
    """
    skip = {requirement_name(s) for s in skip}
    todo = []
    for req in requirements:
        name = requirement_name(req)
        if name in skip:
            continue
        version = installed(name)
        if version is None:
            todo.append(req)
            continue
        try:
            from packaging.requirements import Requirement

            spec = Requirement(req).specifier
            if spec and not spec.contains(version, prereleases=True):
                todo.append(req)
        except ImportError:
            pass
        except Exception:  # an unparsable line: let pip judge it
            todo.append(req)
    return todo


def torch_backend(device: str) -> str | None:
    """``forceComputationBackend`` for PyTorchUtils: ``"cpu"`` for a CPU-only choice, None (automatic) otherwise."""
    return "cpu" if (device or "auto").lower() == "cpu" else None
