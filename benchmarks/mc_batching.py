#!/usr/bin/env python
"""Monte-Carlo samples batched with the slices vs one synthesis pass per sample (issue 23), run on demand.

    OMP_NUM_THREADS=1 python benchmarks/mc_batching.py [--slices 10] [--samples 8] [--rounds 2]

``pipeline.synthesis`` enumerates (slice, sample) items slice-major and cuts them into batches, so one call
with K samples fills each network call with slices x samples, resamples each slice's MR condition once for its
K samples, and maps mean/std back once. The alternative a caller would otherwise write -- K calls with one
sample each and different seeds, then the mean and std of the K sCTs -- is timed against it on the same
slices, with the same batch size (the engine's CPU default for the model's grid), interleaved round by round.
Case: the ``--slices`` central slices of the clinical-size phantom of ``heldout_eval.py`` (256 x 256 x 90 at
1.5 mm). Models: the 64 x 64 demo DDPM and the 2 mm preview, DPM-Solver++ 5 steps (default).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "MRtoCTSynthesis"))

from _common import RESULTS, command_line, git_commit, machine_info, machine_line, set_threads, write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct"))
                                          / "heldout_families"))
    ap.add_argument("--out", default=str(RESULTS / "mc_batching_cpu.json"))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    import heldout_eval
    import numpy as np

    from MRtoCTSynthesisLib.assets import DEFAULT_MODEL, DEMO_MODEL
    from MRtoCTSynthesisLib.io.volume import read_volume
    from MRtoCTSynthesisLib.models.methods import load_model
    from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize

    folder = heldout_eval.clinical_case(Path(args.data))
    mri = heldout_eval.central(read_volume(folder / "mr.nii.gz"), args.slices)
    k = args.samples
    doc = {"command": command_line(), "commit": git_commit(), "machine": machine_info("cpu"), "samples": k,
           "slices": args.slices, "rows": []}
    print(machine_line(doc["machine"]), flush=True)
    for path in (DEMO_MODEL, DEFAULT_MODEL):
        model = load_model(path)
        probe = synthesize(heldout_eval.central(mri, 1), model, SynthesisOptions(samples=1, steps=1, device="cpu"))
        batch = probe.info["batch_size"]  # the engine's automatic CPU batch for this grid
        times = {"batched": [], "per_sample": []}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            res = synthesize(mri, model, SynthesisOptions(samples=k, seed=0, device="cpu", batch_size=batch))
            times["batched"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            one = [SynthesisOptions(samples=1, seed=s, device="cpu", batch_size=batch) for s in range(k)]
            outs = [synthesize(mri, model, o).sct.array for o in one]
            mean = np.mean(outs, axis=0)
            std = np.std(outs, axis=0)
            times["per_sample"].append(time.perf_counter() - t0)
        row = {"model": Path(path).name, "grid": res.info["model_grid"]["shape"], "batch": batch,
               "batched_s": min(times["batched"]), "per_sample_s": min(times["per_sample"]), "times_s": times,
               "mean_std_hu_batched": float(res.std.array.mean()), "mean_std_hu_per_sample": float(std.mean()),
               "mean_sct_hu_batched": float(res.sct.array.mean()), "mean_sct_hu_per_sample": float(mean.mean())}
        row["ratio"] = row["per_sample_s"] / row["batched_s"]
        doc["rows"].append(row)
        print(f"{row['model']:26s} grid {row['grid']} batch {batch}: one call with K={k} {row['batched_s']:.1f} s, "
              f"{k} calls with K=1 {row['per_sample_s']:.1f} s ({row['ratio']:.2f}x)", flush=True)
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    write_json(Path(args.out), doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
