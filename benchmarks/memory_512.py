"""Peak host memory of synthesising a 512 x 512 x 300 volume on CPU (run on demand).

    OMP_NUM_THREADS=1 python benchmarks/memory_512.py [--size 512 512 300] [--sampler dpmpp] [--steps 5]
        [--samples 1] [--model CKPT] [--limit-gib 8] [--out benchmarks/results/memory_512_cpu.json]

1. A synthetic MR volume of ``--size`` (nx, ny, nz) is made once and cached as uncompressed NIfTI under
   ``--cache-dir``: a pelvis phantom on a coarse grid (``--size`` / 4, the default phantom's 384 x 384 mm
   field of view) resampled trilinearly to the full grid (the anatomy is blocky at 512^2, which does not
   matter for memory or speed), with its CT and body mask resampled the same way.
2. A fresh worker process reads the MR file and runs the engine's path end to end, as ``mrtoct
   synthesize`` does: :func:`~MRtoCTSynthesisLib.pipeline.synthesis.synthesize` (default model: the bundled
   64 x 64 demo DDPM; ``--sampler``/``--steps``/``--samples``) and writing the sCT and std volumes.
   A thread samples the worker's resident set size every 50 ms and labels it with the phase it is in
   (read, synthesis batches, write); the peak is ``VmHWM`` (``_common.peak_rss_mib``). Only after that are
   the CT and mask read and the PSNR/MAE computed (not counted in the peak).

Pass/fail: peak RSS below ``--limit-gib`` (the issue asks for 8 GiB).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    WorkerFailed,
    command_line,
    demo_paths,
    git_commit,
    machine_info,
    machine_line,
    markdown_table,
    peak_rss_mib,
    rss_mib,
    serve_worker,
    set_threads,
    spawn_worker,
    write_json,
)


def make_volume(size, folder: Path, seed: int = 42) -> Path:
    """Cache ``mr.nii``, ``ct.nii``, ``mask.nii`` of ``size`` (nx, ny, nz) in ``folder``; return the folder."""
    from scipy import ndimage

    from MRtoCTSynthesisLib.data.phantom import generate_case
    from MRtoCTSynthesisLib.io.volume import Volume, make_geometry, write_volume

    nx, ny, nz = (int(v) for v in size)
    out = folder / f"synthetic_{nx}x{ny}x{nz}_seed{seed}"
    if all((out / f"{n}.nii").exists() for n in ("mr", "ct", "mask")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    coarse = (max(8, nx // 4), max(8, ny // 4), max(4, nz // 4))
    fov = (384.0, 384.0, 3.0 * nz / 2)  # 1.5 mm slices at full resolution (450 mm for 300 slices)
    case = generate_case(seed, size=coarse, spacing=tuple(f / c for f, c in zip(fov, coarse)))
    spacing = tuple(f / n for f, n in zip(fov, (nx, ny, nz)))
    c = case.geometry
    # keep the physical centre: origin of the fine grid = coarse origin shifted by half the voxel change
    origin = tuple(o - 0.5 * cs + 0.5 * fs for o, cs, fs in zip(c.origin, c.spacing, spacing))
    geom = make_geometry((nx, ny, nz), spacing, origin, c.direction)
    for name, vol, order in (("mr", case.mr_t2, 1), ("ct", case.ct, 1), ("mask", case.mask, 0)):
        zoom = [t / s for t, s in zip(geom.shape, vol.array.shape)]
        arr = ndimage.zoom(vol.array.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)
        arr = arr.astype(np.uint8 if name == "mask" else np.float32)
        write_volume(Volume(arr, geom), out / f"{name}.nii")
        del arr
    return out


class RSSSampler(threading.Thread):
    """Polls this process's RSS; ``phase`` is set by the main thread."""

    def __init__(self, period: float = 0.05):
        super().__init__(daemon=True)
        self.period, self.phase, self.stop, self.peaks = period, "start", threading.Event(), {}

    def run(self):
        while not self.stop.is_set():
            r = rss_mib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), r)
            time.sleep(self.period)


def worker(spec: dict) -> dict:
    set_threads(spec["threads"])
    sampler = RSSSampler()
    sampler.start()
    import torch  # noqa: F401

    from MRtoCTSynthesisLib.io.volume import read_volume, write_volume
    from MRtoCTSynthesisLib.models.methods import load_model
    from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

    folder = Path(spec["folder"])
    sampler.phase = "load model"
    model = load_model(spec["model"], "cpu")
    rss_model = rss_mib()
    sampler.phase = "read MR"
    t0 = time.perf_counter()
    mri = read_volume(folder / "mr.nii", "MRI")
    t_read = time.perf_counter() - t0
    rss_after_read = rss_mib()
    sampler.phase = "pre-processing"

    def progress(frac, msg):
        sampler.phase = "synthesis batches (then mapping back to 512^2)"

    opts = SynthesisOptions(sampler=spec["sampler"], steps=spec["steps"], samples=spec["samples"], seed=0,
                            device="cpu", batch_size=spec["batch_size"])
    t0 = time.perf_counter()
    res = synthesize(mri, model, opts, progress=progress)
    t_synth = time.perf_counter() - t0
    sampler.phase = "write sCT + std"
    t0 = time.perf_counter()
    write_volume(res.sct, folder / "sct.nii")
    write_volume(res.std, folder / "std.nii")
    t_write = time.perf_counter() - t0
    time.sleep(0.2)
    peak = peak_rss_mib()
    sampler.stop.set()
    sampler.join()
    phases = dict(sampler.peaks)
    info = dict(res.info)
    info.pop("mr_normalization", None)
    # quality, after the peak was taken (reading the CT would add to it)
    from MRtoCTSynthesisLib.pipeline.metrics import mae, psnr

    sct = res.sct.array
    del res, mri
    ct = read_volume(folder / "ct.nii", "CT").array
    mask = read_volume(folder / "mask.nii", "mask").array > 0
    return {"peak_rss_mib": peak, "rss_after_model_mib": rss_model, "rss_after_read_mib": rss_after_read,
            "phase_peaks_mib": phases, "read_s": t_read, "synthesis_s": t_synth, "write_s": t_write,
            "info": info, "psnr_db_vs_resampled_phantom_ct": psnr(sct, ct, mask),
            "mae_hu_vs_resampled_phantom_ct": mae(sct, ct, mask)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], metavar=("NX", "NY", "NZ"))
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled demo DDPM)")
    ap.add_argument("--sampler", default="dpmpp")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-gib", type=float, default=8.0)
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mrtoct_bench_cache"))
    ap.add_argument("--out", default=str(RESULTS / "memory_512_cpu.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, worker)
    set_threads(args.threads)
    model = args.model or str(demo_paths()[1])
    t0 = time.perf_counter()
    folder = make_volume(args.size, Path(args.cache_dir))
    t_make = time.perf_counter() - t0
    print(f"volume in {folder} ({t_make:.0f} s to make or find)", flush=True)
    spec = {"folder": str(folder), "model": model, "sampler": args.sampler, "steps": args.steps,
            "samples": args.samples, "batch_size": args.batch_size, "threads": args.threads}
    t0 = time.perf_counter()
    try:
        res = spawn_worker(__file__, spec, args.threads)
    except WorkerFailed as e:
        print(e.stderr[-4000:])
        return 1
    res["worker_process_s"] = time.perf_counter() - t0
    nx, ny, nz = args.size
    limit = args.limit_gib * 1024
    doc = {"command": command_line(), "commit": git_commit(), "machine": machine_info("cpu"),
           "size_xyz": [nx, ny, nz], "voxels": nx * ny * nz, "model": Path(model).name, **spec, **res,
           "limit_mib": limit, "passed": res["peak_rss_mib"] < limit}
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    info = res["info"]
    rows = [[f"{nx} x {ny} x {nz} ({nx * ny * nz / 1e6:.1f} M voxels, float32 MR {nx * ny * nz * 4 / 2**20:.0f} MiB)",
             f"{info['method']} / {info['sampler']}:{info['steps']}, K = {info['samples']}, batch {info['batch_size']}",
             f"{res['peak_rss_mib']:.0f}", f"{res['rss_after_read_mib']:.0f}", f"{res['synthesis_s']:.0f}",
             f"{res['synthesis_s'] / nz:.2f}", f"{res['read_s']:.1f} / {res['write_s']:.1f}",
             f"{res['psnr_db_vs_resampled_phantom_ct']:.2f}", "yes" if doc["passed"] else "NO"]]
    table = markdown_table(["volume", "model / sampler", "peak RSS MiB", "RSS after reading MR MiB", "synthesis s",
                            "s / slice", "read / write s", "PSNR dB (vs resampled phantom CT)",
                            f"< {args.limit_gib:g} GiB"], rows,
                           ["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---"])
    phases = ", ".join(f"{k} {v:.0f}" for k, v in res["phase_peaks_mib"].items())
    doc["markdown"] = (f"Machine: {machine_line(doc['machine'])}. Commit at time of measurement: {doc['commit']} "
                       f"(the working tree may contain uncommitted changes).\n\nCommand: "
                       f"`{doc['command']}`\n\n{table}\n\n"
                       f"Peak RSS per phase (MiB, sampled every 50 ms): {phases}.")
    out = Path(args.out)
    write_json(out, doc)
    out.with_suffix(".md").write_text(doc["markdown"] + "\n")
    print(doc["markdown"])
    return 0 if doc["passed"] else 2


if __name__ == "__main__":
    sys.exit(main())
