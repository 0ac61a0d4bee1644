#!/usr/bin/env python
"""Whole-volume synthesis of a clinical-size case per bundled model (issue 23), run on demand.

    OMP_NUM_THREADS=1 python benchmarks/clinical_volume.py [--slices N] [--threads 1] [--backend torch|onnx]
        [--precision auto|bf16] [--models A.safetensors ...] [--samples 8]
        [--out benchmarks/results/clinical_volume_cpu.json]

The case is the clinical-size phantom of ``heldout_eval.py`` (the original generator, seed 43, T2 MRI,
256 x 256 x 90 voxels at 1.5 x 1.5 x 1.5 mm; generated once under ``$MRTOCT_CACHE/heldout_families``). Every
bundled model (``assets/*.safetensors``: the 64 x 64 demo DDPM, the 2 mm DDPM, the demo SynDiff) runs
with its sampler default (DPM-Solver++ for the DDPMs: 5 steps for one sample, 20 for several; SynDiff's 4 steps)
and ``--samples`` Monte-Carlo
samples (default 8), each row in a fresh worker process of ``run.py`` (so the peak RSS is that row's own).
Per row: wall seconds of the ``synthesize`` call, seconds per slice (all K samples), seconds per volume, peak RSS,
and PSNR / MAE of the sCT (mean of the K samples) against the phantom's CT inside the body mask.

``--slices N`` runs only the N central slices and **extrapolates** the volume time linearly (the table marks it
"(extrap.)"); central slices hold the widest anatomy, so for models that synthesise the body's bounding box at
their own pixel size (the 2 mm DDPM) the extrapolation over-estimates. ``--backend onnx`` runs the DDPM
denoisers through ONNX Runtime (``models/onnx_backend.py``; SynDiff stays on torch); ``--precision bf16`` runs
the networks under CPU bf16 autocast (``devices.autocast``).
Writes the JSON and Markdown of ``run.py`` (``--out``, ``.md`` beside it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "MRtoCTSynthesis"))


def bundled_models() -> list[str]:
    from MRtoCTSynthesisLib.assets import DEMO_MODEL

    folder = DEMO_MODEL.parent
    names = ("demo_ddpm.safetensors", "default_ddpm.safetensors", "demo_syndiff.safetensors")
    return [str(folder / n) for n in names if (folder / n).exists()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help="checkpoints (default: every bundled model)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--slices", type=int, default=None, help="central slices to run (default: all 90)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--data", default=str(Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct"))
                                          / "heldout_families"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import heldout_eval
    import run

    case = heldout_eval.clinical_case(Path(args.data))
    out = args.out or str(HERE / "results" / f"clinical_volume_cpu_{args.backend}.json")
    argv_run = ["--model", *(args.models or bundled_models()), "--case", str(case), "--samplers", "dpmpp",
                "--samples", str(args.samples), "--threads", str(args.threads), "--backend", args.backend,
                "--out", out]
    if args.slices:
        argv_run += ["--slices", str(args.slices)]
    if args.precision != "auto":
        argv_run += ["--precision", args.precision]
    if args.batch_size:
        argv_run += ["--batch-size", str(args.batch_size)]
    return run.main(argv_run)


if __name__ == "__main__":
    sys.exit(main())
