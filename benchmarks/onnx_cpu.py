#!/usr/bin/env python
"""ONNX Runtime vs eager torch for the diffusion denoiser on the CPU, same weights and shapes (issue 23).

    OMP_NUM_THREADS=1 python benchmarks/onnx_cpu.py [--threads 1] [--rounds 7]
        [--out benchmarks/results/onnx_cpu.json]

For each bundled DDPM (the 64 x 64 demo model and the 2 mm preview) and each shape -- the model's working size
with the engine's CPU batch (``pipeline.synthesis.default_batch_size``) and batch 1 -- the denoiser is called
on the same random inputs by eager torch (``torch.inference_mode``) and by an ONNX Runtime session of the same
weights (``models/onnx_backend.py``: exported with ``torch.onnx.export(dynamo=False)``, CPU execution provider,
graph optimisations on, ``--threads`` intra-op threads like torch). The two are timed **interleaved**, round by
round, after one untimed warm-up call each, so that load from other processes on this shared machine hits both
alike; reported: the minimum and the median over ``--rounds`` of the per-image time, the ratio torch / ONNX
of the minima and of the medians, and the largest absolute difference of the outputs. The 2 mm preview's
working size is its canvas on the clinical-size case (the body's bounding box at 2 mm plus margin: 144 x 192 on
``heldout_eval.py``'s case).

``--end-to-end N`` (default 10; 0 = off) also times whole ``synthesize`` calls (``--backend torch`` against
``onnx``, 8 samples, the sampler default) on the N central slices of that clinical-size case, interleaved over
``--e2e-rounds`` rounds (minimum reported), after one untimed call of each (the ONNX export is cached then).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "MRtoCTSynthesis"))

from _common import RESULTS, command_line, git_commit, machine_info, machine_line, set_threads, write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--end-to-end", type=int, default=10, metavar="N")
    ap.add_argument("--e2e-rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--skip-network", action="store_true", help="only the end-to-end rows")
    ap.add_argument("--out", default=str(RESULTS / "onnx_cpu.json"))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    import onnxruntime
    import torch

    from MRtoCTSynthesisLib.assets import DEFAULT_MODEL, DEMO_MODEL
    from MRtoCTSynthesisLib.models import onnx_backend as ob
    from MRtoCTSynthesisLib.models.methods import load_model
    from MRtoCTSynthesisLib.pipeline.synthesis import default_batch_size

    cpu = torch.device("cpu")
    cases = [("demo_ddpm (64x64 grid)", DEMO_MODEL, (64, 64)),
             ("default_ddpm (2 mm preview)", DEFAULT_MODEL, (144, 192))]
    doc = {"command": command_line(), "commit": git_commit(), "machine": machine_info("cpu"),
           "onnxruntime": onnxruntime.__version__, "rounds": args.rounds, "rows": []}
    print(machine_line(doc["machine"]), f"onnxruntime {onnxruntime.__version__}", flush=True)
    for label, path, (h, w) in (cases if not args.skip_network else []):
        model = load_model(path)
        net = model.networks["denoiser"].eval()
        t0 = time.perf_counter()
        data = ob.export_onnx(net)
        export_s = time.perf_counter() - t0
        session = ob.make_session(data, args.threads)
        onnx_net = ob.OnnxDenoiser(session, net)
        for b in sorted({default_batch_size(cpu, (h, w)), 1}, reverse=True):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(b, 1, h, w, generator=g)
            cond = torch.randn(b, net.config.in_channels - 1, h, w, generator=g)
            t = torch.rand(b, generator=g) * 999.0
            with torch.inference_mode():
                ref = net(x, cond, t)
            diff = float((onnx_net(x, cond, t) - ref).abs().max())
            times = {"torch": [], "onnx": []}
            for _ in range(args.rounds):
                for name in ("torch", "onnx"):
                    t1 = time.perf_counter()
                    if name == "torch":
                        with torch.inference_mode():
                            net(x, cond, t)
                    else:
                        onnx_net(x, cond, t)
                    times[name].append((time.perf_counter() - t1) / b * 1000.0)
            row = {"model": label, "shape": [b, h, w], "export_s": export_s, "onnx_bytes": len(data),
                   "max_abs_diff": diff, "torch_ms_min": min(times["torch"]), "onnx_ms_min": min(times["onnx"]),
                   "torch_ms_median": statistics.median(times["torch"]),
                   "onnx_ms_median": statistics.median(times["onnx"]), "times_ms": times}
            row["ratio_min"] = row["torch_ms_min"] / row["onnx_ms_min"]
            row["ratio_median"] = row["torch_ms_median"] / row["onnx_ms_median"]
            doc["rows"].append(row)
            print(f"{label:30s} batch {b:3d} {h}x{w}: torch {row['torch_ms_min']:.1f} / {row['torch_ms_median']:.1f} "
                  f"ms, onnx {row['onnx_ms_min']:.1f} / {row['onnx_ms_median']:.1f} ms per image (min / median); "
                  f"ratio {row['ratio_min']:.2f}x / {row['ratio_median']:.2f}x; max |diff| {diff:.1e}", flush=True)
    doc["end_to_end"] = end_to_end(args, cases) if args.end_to_end else []
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    lines = ["| model | batch x H x W | torch ms / image (min / median) | ONNX Runtime ms / image (min / median) | "
             "torch / ONNX (min) | torch / ONNX (median) | max abs diff |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        b, h, w = r["shape"]
        lines.append(f"| {r['model']} | {b} x {h} x {w} | {r['torch_ms_min']:.1f} / {r['torch_ms_median']:.1f} | "
                     f"{r['onnx_ms_min']:.1f} / {r['onnx_ms_median']:.1f} | {r['ratio_min']:.2f}x | "
                     f"{r['ratio_median']:.2f}x | {r['max_abs_diff']:.1e} |")
    if doc["end_to_end"]:
        lines += ["", "| model | slices x K | model grid | torch s (min) | ONNX Runtime s (min) | torch / ONNX | "
                  "max abs sCT diff (HU) |", "|---|---|---|---:|---:|---:|---:|"]
        for r in doc["end_to_end"]:
            lines.append(f"| {r['model']} | {r['slices']} x {r['samples']} | {r['grid']} | {r['torch_s']:.1f} | "
                         f"{r['onnx_s']:.1f} | {r['ratio']:.2f}x | {r['max_sct_diff_hu']:.3f} |")
    doc["markdown"] = "\n".join(lines)
    write_json(Path(args.out), doc)
    print(doc["markdown"])
    print(f"wrote {args.out}")
    return 0


def end_to_end(args, cases) -> list[dict]:
    """Whole synthesize calls, torch vs onnx backend, interleaved (see the module docstring)."""
    import heldout_eval
    import numpy as np

    from MRtoCTSynthesisLib.io.volume import read_volume
    from MRtoCTSynthesisLib.models.methods import load_model
    from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

    data = Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct")) / "heldout_families"
    folder = heldout_eval.clinical_case(data)
    mri = heldout_eval.central(read_volume(folder / "mr.nii.gz"), args.end_to_end)
    rows = []
    for label, path, _ in cases:
        model = load_model(path)
        opts = {b: SynthesisOptions(samples=args.samples, device="cpu", backend=b) for b in ("torch", "onnx")}
        out = {b: synthesize(mri, model, o) for b, o in opts.items()}  # untimed: export / cache, warm-up
        times = {"torch": [], "onnx": []}
        for _ in range(args.e2e_rounds):
            for b in ("torch", "onnx"):
                t0 = time.perf_counter()
                synthesize(mri, model, opts[b])
                times[b].append(time.perf_counter() - t0)
        row = {"model": label, "slices": args.end_to_end, "samples": args.samples,
               "grid": "x".join(map(str, out["torch"].info["model_grid"]["shape"])), "times_s": times,
               "torch_s": min(times["torch"]), "onnx_s": min(times["onnx"]),
               "max_sct_diff_hu": float(np.abs(out["torch"].sct.array - out["onnx"].sct.array).max())}
        row["ratio"] = row["torch_s"] / row["onnx_s"]
        print(f"end to end {label}: {args.end_to_end} slices x {args.samples} samples on {row['grid']}: torch "
              f"{row['torch_s']:.1f} s, onnx {row['onnx_s']:.1f} s ({row['ratio']:.2f}x), max sCT diff "
              f"{row['max_sct_diff_hu']:.3f} HU", flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
