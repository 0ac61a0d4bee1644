"""Shared helpers of the benchmark scripts: cases, central-slice subsets, machine/commit records, tables.

Not a test and not part of the engine; imported by ``run.py``, ``step_sweep.py`` and ``memory_512.py``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


def set_threads(n: int) -> None:
    """One torch (and OpenMP) thread per process unless told otherwise: on the shared 2-core machine two
    OpenMP threads waiting on each other make every operation several times slower."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)


@dataclass
class Case:
    mr: object          # Volume
    ct: object | None   # Volume (HU) or None
    mask: object | None  # Volume or None
    name: str
    n_slices_full: int   # axial slices of the whole volume (before any subset)


def axial_axis(geometry) -> int:
    """The numpy axis of a volume on ``geometry`` that runs along the canonical slice direction (S)."""
    from MRtoCTSynthesisLib.io.slicing import canonical_layout

    order, _, _ = canonical_layout(geometry)
    return int(order[0])


def central_slices(volume, n: int | None, axis: int | None = None):
    """The ``n`` central axial slices of ``volume`` as a thinner Volume on the matching sub-grid
    (same spacing and direction, origin moved to the first kept slice); ``n`` None or >= all: unchanged."""
    from MRtoCTSynthesisLib.io.volume import Volume, make_geometry

    g = volume.geometry
    ax = axial_axis(g) if axis is None else axis
    total = volume.array.shape[ax]
    if n is None or n >= total:
        return volume
    start = (total - n) // 2
    arr = np.ascontiguousarray(np.take(volume.array, np.arange(start, start + n), axis=ax))
    itk_axis = 2 - ax  # numpy axis -> ITK index axis
    d = np.asarray(g.direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(g.origin) + d[:, itk_axis] * g.spacing[itk_axis] * start
    size = list(g.size)
    size[itk_axis] = n
    return Volume(arr, make_geometry(size, g.spacing, tuple(origin), g.direction))


def demo_paths():
    from MRtoCTSynthesisLib.assets import DEMO_CASE, DEMO_MODEL

    return DEMO_CASE, DEMO_MODEL


def load_case(case_dir: str | os.PathLike | None, slices: int | None = None) -> Case:
    """A case folder with ``mr`` and optionally ``ct``/``mask`` volumes (nii.gz, nii, nrrd or mha);
    default: the bundled demo case. ``slices``: keep only that many central axial slices."""
    from MRtoCTSynthesisLib.data.cases import find_volume
    from MRtoCTSynthesisLib.io.volume import read_volume

    folder = Path(case_dir) if case_dir else demo_paths()[0]
    mr_path, ct_path, mask_path = (find_volume(folder, stem) for stem in ("mr", "ct", "mask"))
    if mr_path is None:
        raise SystemExit(f"no mr.nii.gz/.nii/.nrrd/.mha in {folder}")
    mr = read_volume(mr_path, "MRI")
    ct = read_volume(ct_path, "CT") if ct_path else None
    mask = read_volume(mask_path, "mask") if mask_path else None
    ax = axial_axis(mr.geometry)
    full = mr.array.shape[ax]
    mr = central_slices(mr, slices, ax)
    ct = central_slices(ct, slices, ax) if ct is not None else None
    mask = central_slices(mask, slices, ax) if mask is not None else None
    return Case(mr, ct, mask, folder.name, full)


def make_phantom_case(size, seed: int, folder: Path, spacing=None) -> Path:
    """Generate a pelvis phantom of ``size`` (nx, ny, nz) into ``folder`` (uncompressed .nii, cached by
    size and seed) and return the folder. The field of view is the default phantom's 384 x 384 x 144 mm
    unless ``spacing`` is given."""
    from MRtoCTSynthesisLib.data.phantom import generate_case
    from MRtoCTSynthesisLib.io.volume import write_volume

    size = tuple(int(v) for v in size)
    if spacing is None:
        spacing = (384.0 / size[0], 384.0 / size[1], 144.0 / size[2])
    folder = Path(folder) / f"phantom_{size[0]}x{size[1]}x{size[2]}_seed{seed}"
    if (folder / "mr.nii").exists() and (folder / "ct.nii").exists() and (folder / "mask.nii").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    case = generate_case(seed, size=size, spacing=spacing)
    write_volume(case.mr_t2, folder / "mr.nii")
    write_volume(case.ct, folder / "ct.nii")
    write_volume(case.mask, folder / "mask.nii")
    return folder


class WorkerFailed(RuntimeError):
    """A benchmark worker process exited with a non-zero status (``returncode``, ``stderr`` kept)."""

    def __init__(self, returncode: int, stderr: str):
        why = f"worker exited with status {returncode}" + (
            f" (killed by signal {-returncode})" if returncode < 0 else "")
        super().__init__(f"{why}: {stderr.strip()[-2000:]}")
        self.returncode, self.stderr = returncode, stderr


def spawn_worker(script: str, spec: dict, threads: int, timeout: float | None = None) -> dict:
    """Run ``script --worker <spec JSON>`` in a fresh process (so peak RSS is per row) with ``threads`` OpenMP
    threads; returns the JSON dict the worker prints last, or raises :class:`WorkerFailed`."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
    if proc.returncode:
        raise WorkerFailed(proc.returncode, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serve_worker(spec_json: str, worker) -> int:
    """The ``--worker`` side: run ``worker(spec)`` and print its result as one JSON line."""
    print(json.dumps(worker(json.loads(spec_json))))
    return 0


def git_commit() -> str:
    """``git rev-parse HEAD`` (read only); "unknown" outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    import torch

    info = {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average": list(os.getloadavg()),
        "cuda_available": torch.cuda.is_available(), "gpu": None,
    }
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if torch.cuda.is_available():
        idx = torch.device(device).index or 0 if str(device).startswith("cuda") else 0
        p = torch.cuda.get_device_properties(idx)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def machine_line(m: dict) -> str:
    gpu = f"GPU {m['gpu']} ({m.get('gpu_memory_gib')} GiB)" if m.get("gpu") else "no GPU"
    return (f"{m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} thread(s), "
            f"{gpu}, load average {m['load_average'][0]:.1f} at the start")


def command_line() -> str:
    """The command that was run, relative to the repository root when possible."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(REPO))
    except ValueError:
        pass
    return "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS",
                                               "1") + " python " + " ".join(shlex.quote(a) for a in argv)


def write_json(path: Path, doc: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def markdown_table(header: list[str], rows: list[list], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in r) + " |")
    return "\n".join(lines)


def peak_rss_mib() -> float:
    """This process's peak resident set size since it started its program: ``VmHWM`` of ``/proc/self/status``
    on Linux. Not ``ru_maxrss``: Linux carries the parent's high-water mark over ``fork`` + ``exec``, so a worker
    started by a parent holding 1.2 GiB reported 1.2 GiB whatever it used itself (found in issue 23's clinical
    benchmark, where the parent had generated the 256 x 256 x 90 phantom). Falls back to ``ru_maxrss`` (KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
