"""Sampler benchmark: NFE, seconds per slice and per volume, peak memory, for every sampler.

Run on demand (not a test):

    python benchmarks/samplers.py [--model CKPT] [--device cpu|cuda] [--out benchmarks/results/samplers_cpu.json]

Two measurements are combined, each taken in this run:

1. **NFE and quality per sampler** with a trained model (default: the bundled demo DDPM, 64x64) on the
   bundled demo case: each sampler at its default step count synthesises the central slices with
   ``--samples`` Monte-Carlo samples; we record the actual network evaluations and PSNR/MAE of the MC mean
   against the phantom's CT (body mask), and the wall time.
2. **Cost of one network evaluation** at 256x256 for the tiny (CPU) and full (GPU) UNet presets, at batch 1
   and at a device-filling batch (weights do not change the cost, so an untrained network is used).

Seconds per 256^2 slice = NFE x (seconds per evaluation at the batch) / batch; per volume = x 90 slices
(a pelvis), x 10 for the Monte-Carlo uncertainty. The naive baseline (batch 1, fp32) is in the same
table. The papers' reference points: DDPM 1000 steps 85.8 s per 256^2 slice, SynDiff 0.182 s, RTX 3090
(SynDiff Table V).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from MRtoCTSynthesisLib.assets import DEMO_CASE, DEMO_MODEL
from MRtoCTSynthesisLib.io.volume import Volume, read_volume
from MRtoCTSynthesisLib.models.methods import create_model, load_model
from MRtoCTSynthesisLib.models.methods.conditional_diffusion import DEFAULT_STEPS
from MRtoCTSynthesisLib.pipeline.metrics import mae, psnr
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, resolve_device, synthesize

PAPER = {"ddpm_1000_rtx3090_s_per_slice": 85.8, "syndiff_rtx3090_s_per_slice": 0.182}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_network_eval(preset: str, batch: int, size: int, device, reps: int) -> float:
    model = create_model("ddpm", size, unet=preset).to(device)
    x = torch.randn(batch, 1, size, size, device=device)
    cond = torch.randn(batch, 1, size, size, device=device)
    t = torch.full((batch,), 500.0, device=device)
    with torch.no_grad():
        model.network(x, cond, t)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            model.network(x, cond, t)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def sampler_runs(model_path: Path, device, samples: int, n_slices: int, samplers):
    mri = read_volume(DEMO_CASE / "mr.nii.gz")
    ct = read_volume(DEMO_CASE / "ct.nii.gz")
    mask = read_volume(DEMO_CASE / "mask.nii.gz")
    mid = mri.array.shape[0] // 2
    sl = slice(mid - n_slices // 2, mid - n_slices // 2 + n_slices)

    def crop(v):  # a thinner volume: the central slices, same in-plane geometry
        from MRtoCTSynthesisLib.io.volume import make_geometry
        g = v.geometry
        return Volume(np.ascontiguousarray(v.array[sl]), make_geometry((g.size[0], g.size[1], n_slices), g.spacing,
                                                                         g.origin, g.direction))

    mri, ct, mask = crop(mri), crop(ct), crop(mask)
    model = load_model(model_path, device)
    rows = []
    for name, steps in samplers:
        t0 = time.perf_counter()
        res = synthesize(mri, model, SynthesisOptions(sampler=name, steps=steps, samples=samples, seed=0,
                                                             device=str(device)))
        wall = time.perf_counter() - t0
        body = mask.array > 0
        rows.append({"sampler": name, "steps": res.info["steps"], "nfe": res.info["nfe_per_sample"],
                     "psnr_db": psnr(res.sct.array, ct.array, body), "mae_hu": mae(res.sct.array, ct.array, body),
                     "wall_s": wall, "slices": n_slices, "samples": samples,
                     "s_per_slice_sample_64": wall / (n_slices * samples)})
        print(f"  {name:6s} steps {rows[-1]['steps']:5d}  NFE {rows[-1]['nfe']:7.1f}  PSNR {rows[-1]['psnr_db']:6.2f} "
              f"dB  "
              f"MAE {rows[-1]['mae_hu']:6.1f} HU  {wall:7.1f} s", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEMO_MODEL))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samples", type=int, default=2, help="MC samples per slice in the sampler runs")
    ap.add_argument("--slices", type=int, default=4, help="central slices of the demo case per sampler run")
    ap.add_argument("--skip-slow", action="store_true", help="run ddpm/em/pc at 1/10 of their default steps")
    ap.add_argument("--out", default="benchmarks/results/samplers.json")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    machine = (torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"machine: {machine}; torch {torch.__version__}; commit {commit}")

    div = 10 if args.skip_slow else 1
    samplers = [("ddpm", DEFAULT_STEPS["ddpm"] // div), ("ddim", DEFAULT_STEPS["ddim"]),
                ("em", DEFAULT_STEPS["em"] // div),
                ("pc", DEFAULT_STEPS["pc"] // div), ("ode", None), ("dpmpp", DEFAULT_STEPS["dpmpp"])]
    print("1) samplers on the trained demo model (64x64):")
    rows = sampler_runs(Path(args.model), device, args.samples, args.slices, samplers)

    print("2) one network evaluation at 256x256:")
    evals = {}
    big_batch = 32 if device.type == "cuda" else 4
    for preset in ("tiny", "full"):
        for batch in (1, big_batch):
            reps = 1 if device.type == "cpu" else 20
            s = time_network_eval(preset, batch, 256, device, reps)
            evals[f"{preset}_b{batch}"] = s
            print(f"  {preset:4s} batch {batch:3d}: {s * 1000:9.1f} ms per call, {s / batch * 1000:8.1f} ms per image",
                  flush=True)

    table = []
    for r in rows:
        for preset in ("tiny", "full"):
            for batch in (1, big_batch):
                per_img = evals[f"{preset}_b{batch}"] / batch
                s_slice = r["nfe"] * per_img
                table.append({"sampler": r["sampler"], "steps": r["steps"], "nfe": r["nfe"], "unet": preset,
                              "batch": batch, "s_per_slice_256": s_slice, "s_per_volume_90": 90 * s_slice,
                              "s_per_volume_90_x10mc": 900 * s_slice})
    out = {"machine": machine, "device": str(device), "torch": torch.__version__, "commit": commit,
           "command": " ".join([sys.executable] + sys.argv), "sampler_runs": rows, "network_eval_s": evals,
           "derived": table, "peak_rss_mib": peak_rss_mib(),
           "peak_cuda_mib": (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
           "paper_reference": PAPER}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("\n| sampler | steps | NFE | PSNR 64² demo (dB) | s/slice 256² tiny b1 | s/slice 256² full b1 | "
          f"s/slice 256² full b{big_batch} | 90 slices x 10 MC, full b{big_batch} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d = {(x["unet"], x["batch"]): x for x in table if x["sampler"] == r["sampler"]}
        print(f"| {r['sampler']} | {r['steps']} | {r['nfe']:.0f} | {r['psnr_db']:.2f} | "
              f"{d[('tiny', 1)]['s_per_slice_256']:.2f} | "
              f"{d[('full', 1)]['s_per_slice_256']:.1f} | {d[('full', big_batch)]['s_per_slice_256']:.1f} | "
              f"{d[('full', big_batch)]['s_per_volume_90_x10mc'] / 3600:.2f} h |")
    print(f"\npeak host memory {out['peak_rss_mib']:.0f} MiB; results in {args.out}")


if __name__ == "__main__":
    main()
