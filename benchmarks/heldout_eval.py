#!/usr/bin/env python
"""Quality of the bundled DDPMs on the demo case and on held-out phantom families (issues 22/23).

    OMP_NUM_THREADS=1 python benchmarks/heldout_eval.py --models OLD.safetensors NEW.safetensors \\
        --cases 2 --samples 8 --out benchmarks/results/heldout_eval.json

Cases: (``--clinical``) a 256 x 256 x 90 case at 1.5 mm of the original generator (seed 43), the bundled demo
case (seed 42 of the original generator, 64 x 64 x 36 at 6 x 6 x 4 mm; its tissue labels are regenerated from
the same seed, bit-identical to the bundled volumes) and ``--cases`` cases of each
held-out family of ``MRtoCTSynthesisLib/data/phantom/families.py`` (seeds from 9000 / 9100, never used in
training; generated once into ``--data``). Every model runs the same way: the engine's default sampler (DPM-Solver++,
5 steps for one sample, 20 for several; ``--steps`` to force a count), ``--samples`` Monte-Carlo samples, seed 0, on
this CPU. Per row: MAE / ME (HU), PSNR, SSIM inside the
body mask (pipeline.metrics.evaluate, SynthRAD conventions), the mean sCT over cortical-bone voxels (label 6)
with the reference CT's mean there, the mean MC std in the body, and the 95 % coverage: the fraction of body
voxels with |sCT - CT| <= 1.96 std, std with ddof 1 (the engine's std; result files written before issue 22's
change of the engine to ddof 1 multiplied its population std by sqrt(K / (K - 1)) here), plus the wall time and
seconds per slice.
``python benchmarks/heldout_eval.py --table A.json B.json ...`` prints the rows of result files as one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MRtoCTSynthesis"))

from MRtoCTSynthesisLib.assets import DEMO_CASE  # noqa: E402
from MRtoCTSynthesisLib.data.phantom import CORTICAL, generate_case, write_case  # noqa: E402
from MRtoCTSynthesisLib.data.phantom.families import generate_family_dataset  # noqa: E402
from MRtoCTSynthesisLib.io.volume import Volume, make_geometry, read_volume  # noqa: E402
from MRtoCTSynthesisLib.models.methods import load_model  # noqa: E402
from MRtoCTSynthesisLib.pipeline.metrics import evaluate  # noqa: E402
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize  # noqa: E402

HELDOUT = {"heldout_large_t2": 9000, "heldout_small_bssfp": 9100}


def clinical_case(data_dir: Path) -> Path:
    """The clinical-size case of issue 23: 256 x 256 x 90 at 1.5 mm (the original generator, seed 43, T2)."""
    folder = data_dir / "clinical_256x256x90_1.5mm_seed43"
    if not (folder / "meta.json").exists():
        write_case(generate_case(43, size=(256, 256, 90), spacing=(1.5, 1.5, 1.5)), folder)
    return folder


def cases(data_dir: Path, n: int, clinical: bool = False):
    demo_labels = generate_case(42, size=(64, 64, 36), spacing=(6, 6, 4)).labels
    yield "demo (seed 42, 6x6x4 mm, legacy T2)", DEMO_CASE, demo_labels
    if clinical:
        folder = clinical_case(data_dir)
        yield "clinical 256x256x90 1.5 mm (seed 43, legacy T2)", folder, read_volume(folder / "labels.nii.gz")
    for fam, first in HELDOUT.items():
        for folder in generate_family_dataset(data_dir, fam, n, first):
            yield f"{fam} {folder.name.rsplit('_', 1)[-1]}", folder, read_volume(folder / "labels.nii.gz")


def central(vol, n):
    """The ``n`` central slices (last array axis = z) of ``vol`` as a volume with its own geometry."""
    if not n or vol.array.shape[0] <= n:
        return vol
    z0 = (vol.array.shape[0] - n) // 2
    g = vol.geometry
    origin = np.asarray(g.origin) + np.asarray(g.direction).reshape(3, 3) @ np.array([0.0, 0.0, z0 * g.spacing[2]])
    geom = make_geometry((g.size[0], g.size[1], n), g.spacing, tuple(origin), g.direction)
    return Volume(np.ascontiguousarray(vol.array[z0:z0 + n]), geom)


def run(model_path: str, name: str, folder: Path, labels, samples: int, seed: int, n_slices: int = 0,
        steps: int | None = None, precision: str = "auto") -> dict:
    mri, ref = central(read_volume(folder / "mr.nii.gz"), n_slices), central(read_volume(folder / "ct.nii.gz"),
                                                                             n_slices)
    mask = central(read_volume(folder / "mask.nii.gz"), n_slices)
    labels = central(labels, n_slices)
    model = load_model(model_path)
    t0 = time.perf_counter()
    res = synthesize(mri, model, SynthesisOptions(samples=samples, seed=seed, device="cpu", steps=steps,
                                                  precision=precision))
    wall = time.perf_counter() - t0
    m = evaluate(res.sct, ref, mask)
    body = mask.array > 0
    err = res.sct.array[body].astype(np.float64) - ref.array[body]
    std1 = res.std.array[body].astype(np.float64) if samples > 1 else None  # the engine's std is ddof 1
    cort = (labels.array == CORTICAL) & body
    return {"model": Path(model_path).name, "case": name, "mae_hu": m["mae_hu"], "me_hu": m["me_hu"],
            "psnr_db": m["psnr_db"], "ssim": m["ssim"],
            "cortical_sct_hu": float(res.sct.array[cort].mean()) if cort.any() else None,
            "cortical_ref_hu": float(ref.array[cort].mean()) if cort.any() else None,
            "mean_std_ddof1_hu": float(std1.mean()) if std1 is not None else None,
            "coverage95": float((np.abs(err) <= 1.96 * std1).mean()) if std1 is not None else None,
            "wall_s": wall, "s_per_slice": res.info["seconds_per_slice"], "slices": res.info["slices"],
            "model_grid": res.info.get("model_grid"), "shape": list(mri.array.shape),
            "spacing": list(mri.geometry.spacing), "sampler": f"{res.info['sampler']} {res.info['steps']} steps",
            "precision": precision}


def table(paths) -> str:
    """A Markdown table of the rows of several result files (one line per model and case)."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    out = ["| case | model | MAE (HU) | ME (HU) | PSNR (dB) | SSIM | cortical bone sCT / CT (HU) | mean std (HU) | "
           "95 % coverage | s / slice |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["case"], r["model"])):
        out.append(f"| {r['case']} | {r['model']} | {r['mae_hu']:.1f} | {r['me_hu']:+.1f} | {r['psnr_db']:.2f} | "
                   f"{r['ssim']:.3f} | {fmt(r['cortical_sct_hu'], '.0f')} / {fmt(r['cortical_ref_hu'], '.0f')} | "
                   f"{fmt(r['mean_std_ddof1_hu'], '.1f')} | {fmt(r['coverage95'], '.3f')} | {r['s_per_slice']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--table":
        print(table(sys.argv[2:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--data", default=str(Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct"))
                                          / "heldout_families"))
    ap.add_argument("--cases", type=int, default=2, help="cases per held-out family (default 2)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the engine's for --samples)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="the engine's --precision (auto = fp32 on the CPU; bf16 = bf16 autocast)")
    ap.add_argument("--only", nargs="*", help="substrings of case names to run (default: all)")
    ap.add_argument("--slices", type=int, default=0,
                    help="run only the N central slices of each case (timing on a shared machine; 0 = all)")
    ap.add_argument("--clinical", action="store_true",
                    help="also the clinical-size case (256 x 256 x 90 at 1.5 mm, issue 23), timed end to end")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heldout_eval.json"))
    args = ap.parse_args(argv)
    rows = []
    for name, folder, labels in cases(Path(args.data), args.cases, args.clinical):
        if args.only and not any(s in name for s in args.only):
            continue
        for mp in args.models:
            r = run(mp, name, Path(folder), labels, args.samples, args.seed, args.slices, args.steps,
                    args.precision)
            rows.append(r)
            print(f"{r['model']:28s} {name:40s} MAE {r['mae_hu']:6.1f} PSNR {r['psnr_db']:5.2f} SSIM {r['ssim']:.3f} "
                  f"cort {r['cortical_sct_hu'] or float('nan'):7.1f} (ref {r['cortical_ref_hu'] or float('nan'):6.1f}) "
                  f"cov95 {r['coverage95'] or float('nan'):.3f} std {r['mean_std_ddof1_hu'] or float('nan'):5.1f} "
                  f"{r['s_per_slice']:.2f} s/slice", flush=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    doc = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} thread(s)", "commit": commit, "command": " ".join(sys.argv),
           "sampler": rows[0]["sampler"] if rows else None, "samples": args.samples, "seed": args.seed, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
