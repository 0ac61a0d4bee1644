#!/usr/bin/env python
"""How well does the input check tell known from unknown MRIs, and is the recalibrated std honest? (issue 22)

    OMP_NUM_THREADS=1 python benchmarks/input_check_eval.py --model MRtoCTSynthesisLib/assets/demo_ddpm.safetensors \\
        --out benchmarks/results/input_check_eval.json

Every case is synthesised the way ``mrtoct synthesize --samples K`` does (the model's default sampler for K > 1,
seed 0) on its central ``--slices`` slices, and the run's ``info["input_check"]`` is recorded. Groups:

* **in distribution** (expected: ``in_distribution`` true): the demo generator (the bundled model's training
  generator, 64 x 64 x 36 at 6 x 6 x 4 mm, T2) with seeds 500+ (training used 100-111, the calibration 300-303),
  and the bundled demo case (seed 42). The false-alarm rate is the fraction flagged.
  The same generator at 1.5 mm pixels in a 256 x 256 grid is in distribution too for a square-FOV model such as the
  demo DDPM: the field of view is the same 384 mm, so its network sees the same 6 mm pixels (expected: not flagged).
* **shifted** (expected: flagged): the same generator's T1-weighted image (another contrast), the head region of
  the generator, the held-out phantom families (``heldout_large_t2``, ``heldout_small_bssfp``, seeds 9000+ /
  9100+), the ``wide`` family (seeds 9200+), and the real MRIs of :mod:`MRtoCTSynthesisLib.data.real_mr` when
  they can be fetched (antspyx 0.6.3's ch2 brain template, TotalSegmentator 2.18.0's example MR). The detection
  rate is the fraction flagged.

Where a reference CT exists, the row also has MAE and the coverage of the 68 % and 95 % intervals
(``|sCT - CT| <= z std`` in the body mask) with the raw MC std and with the recalibrated std the engine writes
(``info["uncertainty"]``), so the calibration can be judged on families not used to fit it.

Two phases, so that the slow sampling need not wait for the record (the shared CPU): ``--phase run`` synthesises
every case and keeps, per case, the input features, the mean MC std and the body voxels' |error| and raw std in
``--data``/raw; ``--phase score`` (the default runs both) applies the input check
(:func:`MRtoCTSynthesisLib.pipeline.input_check.check_input`, the function synthesis calls) and the calibration
factor (:func:`MRtoCTSynthesisLib.pipeline.uncertainty.calibration_scale`) of ``--model``'s metadata to them. For a
checkpoint that already holds its record and calibration, the result is what ``info["input_check"]`` and the written
std of each run say.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MRtoCTSynthesis"))

from MRtoCTSynthesisLib.assets import DEMO_CASE  # noqa: E402
from MRtoCTSynthesisLib.data.phantom import generate_case, write_case  # noqa: E402
from MRtoCTSynthesisLib.data.phantom.families import generate_family_dataset  # noqa: E402
from MRtoCTSynthesisLib.errors import InputError  # noqa: E402
from MRtoCTSynthesisLib.io.volume import read_volume  # noqa: E402
from MRtoCTSynthesisLib.models.methods import load_model  # noqa: E402
from MRtoCTSynthesisLib.pipeline.metrics import evaluate  # noqa: E402
from MRtoCTSynthesisLib.pipeline.synthesis import SynthesisOptions, synthesize  # noqa: E402
from MRtoCTSynthesisLib.training.records import Z68, Z95, case_features, central_slab, interval_coverage  # noqa: E402

DEMO_GRID = {"size": (64, 64, 36), "spacing": (6.0, 6.0, 4.0)}
FINE_GROUP = "1.5 mm pixels, 256 x 256, same FOV (demo generator)"


def phantom(data: Path, name: str, seed: int, weighting: str = "t2", **kw) -> Path:
    folder = data / name
    if not (folder / "meta.json").exists():
        write_case(generate_case(seed, **kw), folder, mr_weighting=weighting)
    return folder


def groups(data: Path, n_id: int, n_shift: int):
    """(group, expected in distribution, name, folder or MR path)"""
    yield "in distribution", True, "demo case (seed 42)", DEMO_CASE
    for s in range(500, 500 + n_id):
        yield "in distribution", True, f"demo generator seed {s}", phantom(data, f"demo_{s}", s, **DEMO_GRID)
    for s in range(600, 600 + n_shift):
        yield "T1 contrast (demo generator)", False, f"T1 seed {s}", phantom(data, f"demo_t1_{s}", s, "t1",
                                                                            **DEMO_GRID)
    for s in range(700, 700 + n_shift):  # the same 384 mm field of view: a square-FOV model still sees 6 mm pixels
        yield FINE_GROUP, True, f"1.5 mm seed {s}", phantom(data, f"fine_{s}", s, size=(256, 256, 24),
                                                            spacing=(1.5, 1.5, 4.0))
    for s in range(800, 800 + n_shift):
        yield "head (demo generator)", False, f"head seed {s}", phantom(data, f"head_{s}", s, region="head",
                                                                       **DEMO_GRID)
    for fam, first in (("heldout_large_t2", 9000), ("heldout_small_bssfp", 9100), ("wide", 9200)):
        for folder in generate_family_dataset(data / "families", fam, n_shift, first):
            yield fam, False, f"{fam} {folder.name.rsplit('_', 1)[-1]}", folder
    try:
        from MRtoCTSynthesisLib.data.real_mr import REAL_MR_SOURCES, real_mr_path

        for name, (_, _, what) in REAL_MR_SOURCES.items():
            yield "real MRI", False, f"{name} ({what})", real_mr_path(name)
    except (ImportError, InputError) as e:
        print(f"real MRIs skipped: {e}", flush=True)


def run_one(model, path: Path, samples: int, slices: int, raw_file: Path | None = None) -> dict:
    if path.is_dir():
        mr = read_volume(path / "mr.nii.gz")
        ct = read_volume(path / "ct.nii.gz") if (path / "ct.nii.gz").exists() else None
        mask = read_volume(path / "mask.nii.gz") if (path / "mask.nii.gz").exists() else None
    else:
        mr, ct, mask = read_volume(path), None, None
    mr = central_slab(mr, slices)
    t0 = time.perf_counter()
    res = synthesize(mr, model, SynthesisOptions(samples=samples, seed=0, device="cpu"))
    row = {"features": case_features(mr, model), "uncertainty": res.info["uncertainty"],
           "sampler": f"{res.info['sampler']} {res.info['steps']}", "seconds": time.perf_counter() - t0,
           "shape": list(mr.array.shape), "spacing": list(mr.geometry.spacing)}
    if ct is not None:
        ct = central_slab(ct, slices)
        mask = central_slab(mask, slices) if mask is not None else None
        m = evaluate(res.sct, ct, mask)
        body = mask.array > 0 if mask is not None else np.ones(mr.array.shape, bool)
        err = np.abs(res.sct.array[body].astype(np.float64) - ct.array[body])
        std = res.std.array[body].astype(np.float64)
        raw = std / float(res.info["uncertainty"]["calibration_factor"])
        row.update({"mae_hu": m["mae_hu"], "raw_mean_std_hu": float(raw.mean())})
        if raw_file is not None:
            np.savez_compressed(raw_file, err=err.astype(np.float32), raw_std=raw.astype(np.float32))
    return row


def score(row: dict, metadata: dict, raw_file: Path | None) -> dict:
    """The input check and the coverages of one case under ``metadata``'s record and calibration."""
    from MRtoCTSynthesisLib.pipeline.input_check import check_input
    from MRtoCTSynthesisLib.pipeline.uncertainty import calibration_scale

    record = metadata.get("input_record")
    sampler, steps = row["sampler"].split()
    run = (record or {}).get("mc_std_hu", {}).get("run", {})
    same = run.get("sampler") == sampler and int(run.get("steps", -1)) == int(steps)
    feats = dict(row["features"])  # what synthesis computes (training.records.case_features = its own steps)
    mc = row["uncertainty"].get("raw_mean_std_hu")
    row["input_check"] = check_input(feats, record, mc if same else None)
    factor, note = calibration_scale(metadata.get("uncertainty_calibration"), metadata.get("method", "?"), sampler,
                                     int(steps), int(row["samples"]))
    row["calibration_factor"], row["calibration_note"] = factor, note
    if raw_file is not None and raw_file.exists():
        d = np.load(raw_file)
        err, raw = d["err"].astype(np.float64), d["raw_std"].astype(np.float64)
        row["coverage_raw"] = {"68": interval_coverage(err, raw, Z68), "95": interval_coverage(err, raw, Z95)}
        row["coverage"] = {"68": interval_coverage(err, factor * raw, Z68),
                           "95": interval_coverage(err, factor * raw, Z95)}
        row["mean_std_hu"] = float(factor * raw.mean())
    return row


def features_only(args) -> int:
    """The image-feature part of the input check for every case, without sampling (see --features-only)."""
    from MRtoCTSynthesisLib.models.checkpoint import read_metadata
    from MRtoCTSynthesisLib.pipeline.input_check import check_input

    model = load_model(args.model)
    record = read_metadata(args.model).get("input_record")
    rows = []
    for group, expected, name, path in groups(Path(args.data), args.in_cases, args.shift_cases):
        path = Path(path)
        mr = read_volume(path / "mr.nii.gz") if path.is_dir() else read_volume(path)
        if args.expect_in is not None:
            expected = group in args.expect_in
        check = check_input(case_features(mr, model), record)
        rows.append({"group": group, "expected_in": expected, "case": name, "input_check": check})
        print(f"{name:55s} in={check['in_distribution']!s:5s} score {check['score']} "
              f"{'; '.join(check['reasons'])[:150]}", flush=True)
    table = summary(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": Path(args.model).name, "features_only": True, "rows": rows,
                                              "table": table}, indent=1, default=str))
    return 0


def summary(rows) -> str:
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["group"], []).append(r)
    out = ["| group | cases | flagged | rate | score (min-max) | MAE (HU) | 95 % coverage raw -> recalibrated | "
           "68 % coverage raw -> recalibrated |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for g, rs in by.items():
        flagged = sum(1 for r in rs if r["input_check"]["in_distribution"] is False)
        scores = [r["input_check"]["score"] for r in rs if r["input_check"]["score"] is not None]
        rate = flagged / len(rs)
        what = "false alarms" if rs[0]["expected_in"] else "detected"
        cov = [r for r in rs if "coverage" in r]

        def mean(key, sub=None):
            vals = [r[key][sub] if sub else r[key] for r in cov]
            return f"{np.mean(vals):.3f}" if vals else "-"
        maes = f"{np.mean([r['mae_hu'] for r in cov]):.1f}" if cov else "-"
        out.append(f"| {g} | {len(rs)} | {flagged} | {100 * rate:.0f} % {what} | "
                   f"{min(scores):.2f}-{max(scores):.2f} | {maes} | {mean('coverage_raw', '95')} -> "
                   f"{mean('coverage', '95')} | {mean('coverage_raw', '68')} -> {mean('coverage', '68')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct"))
                                          / "input_check"))
    ap.add_argument("--in-cases", type=int, default=10, help="in-distribution generator cases (default 10)")
    ap.add_argument("--shift-cases", type=int, default=2, help="cases per shifted group (default 2)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--out", default=None)
    ap.add_argument("--phase", choices=["both", "run", "score"], default="both")
    ap.add_argument("--features-only", action="store_true",
                    help="no synthesis: score only the image features of each case against --model's record (the MC "
                         "std score and the coverages need sampling); fast, for models too slow to sample here")
    ap.add_argument("--expect-in", nargs="*", default=None, metavar="GROUP",
                    help="the groups that are in distribution for --model (default: the demo generator's)")
    args = ap.parse_args(argv)
    if args.features_only:
        return features_only(args)
    torch.set_num_threads(1)
    raw_dir = Path(args.data) / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    index = raw_dir / "rows.json"
    t0 = time.perf_counter()
    if args.phase in ("both", "run"):
        model = load_model(args.model)
        rows = []
        for i, (group, expected, name, path) in enumerate(groups(Path(args.data), args.in_cases, args.shift_cases)):
            r = run_one(model, Path(path), args.samples, args.slices, raw_dir / f"case_{i:03d}.npz")
            r.update({"group": group, "expected_in": expected, "case": name, "raw": f"case_{i:03d}.npz",
                      "samples": args.samples})
            rows.append(r)
            print(f"ran {name}: MAE {r.get('mae_hu', float('nan')):.1f}, "
                  f"raw MC std {r['uncertainty']['raw_mean_std_hu']}", flush=True)
            index.write_text(json.dumps(rows, default=str))
        if args.phase == "run":
            return 0
    from MRtoCTSynthesisLib.models.checkpoint import read_metadata

    metadata = read_metadata(args.model)
    rows = [score(r, metadata, raw_dir / r["raw"]) for r in json.loads(index.read_text())]
    for r in rows:  # raw files of an earlier version of this script listed the same-FOV group as shifted
        if r["group"].startswith("1.5 mm pixels"):
            r["group"], r["expected_in"] = FINE_GROUP, True
    for r in rows:
        name = r["case"]
        ic = r["input_check"]
        print(f"{name:55s} in={ic['in_distribution']!s:5s} score {ic['score']} "
              f"MAE {r.get('mae_hu', float('nan')):6.1f} cov95 {r.get('coverage', {}).get('95', float('nan')):.3f} "
              f"{'; '.join(ic['reasons'])[:160]}", flush=True)
    table = summary(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "model": Path(args.model).name, "samples": args.samples, "slices": args.slices, "rows": rows,
            "table": table, "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
                                       "1 thread", "seconds": time.perf_counter() - t0}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
