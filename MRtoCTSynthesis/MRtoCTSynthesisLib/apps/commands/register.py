"""``mrtoct register``: register an MRI to a CT, write the MRI resampled onto the CT grid, and report how well it
went (metric at the start and the end, edge agreement, overlap; warnings with the numbers when it did not)."""

from __future__ import annotations

import time
from pathlib import Path

from ..args import (
    check_distinct_outputs,
    check_output_file,
    check_volume_output,
    non_negative_int,
    progress_printer,
    write_json_output,
)


def add_parser(sub) -> None:
    rg = sub.add_parser("register", help="register an MRI to a CT (rigid by default; Mattes MI)",
                        description="Register the moving MRI to the fixed CT with SimpleITK (Mattes mutual information "
                                    "with central-difference gradients, conjugate gradients, a 3-level pyramid that "
                                    "never shrinks a thick slice axis) and write the MRI resampled onto the CT grid. "
                                    "Prints the quality checks (metric at the start and the end, edge agreement, "
                                    "overlap) and a warning, with the numbers, when the optimiser did not move or "
                                    "did not improve the metric.")
    rg.add_argument("--fixed", required=True, help="fixed image: the CT")
    rg.add_argument("--moving", required=True, help="moving image: the MRI")
    rg.add_argument("--out", required=True, help="output: the MRI resampled onto the CT grid (.nii.gz/.nrrd/.mha)")
    rg.add_argument("--transform", help="also save the transform (.tfm or .h5)")
    rg.add_argument("--mode", choices=["rigid", "affine", "rigid+affine", "bspline", "syn"], default="rigid",
                    help="rigid (default): one subject's MRI and CT; affine / rigid+affine: scans whose scale "
                         "differs (another scanner's calibration, another subject), adds error on rigid anatomy; "
                         "bspline: rigid then a B-spline deformation, for paired training data when soft tissue "
                         "moved (reports the Jacobian range); syn: the same with ANTs SyN (needs antspyx)")
    rg.add_argument("--init", choices=["moments", "geometry", "none"], default="moments",
                    help="starting alignment: centres of mass of the body masks (default), image centres, or the "
                         "positions as given (e.g. after a manual alignment in Slicer)")
    rg.add_argument("--iterations", type=non_negative_int("--iterations"), default=100,
                    help="most optimiser iterations per pyramid level (default 100; 0 only reports the start)")
    rg.add_argument("--seed", type=int, default=0, help="seed of the metric's random sampling (default 0)")
    rg.add_argument("--json", help="also write the quality numbers, warnings and per-level optimiser record (.json)")
    rg.add_argument("--series-uid", action="append", metavar="UID",
                    help="for a DICOM folder holding several series: read the series with this SeriesInstanceUID "
                         "(repeat the flag for --fixed and --moving)")
    rg.set_defaults(func=run)


def _num(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def run(args) -> int:
    # the engine loads here, not at import: the parser (mrtoct --help) stays light
    import warnings

    from ...io.volume import read_volume, write_volume
    from ...pipeline.registration import (
        RegistrationWarning,
        check_transform_suffix,
        register,
        save_transform,
        transform_summary,
    )

    inputs = {"--fixed": args.fixed, "--moving": args.moving}
    out = check_volume_output(args.out, "--out", inputs)  # checked before the (long) registration, like the others
    if args.transform:
        check_transform_suffix(Path(args.transform))
        check_output_file(Path(args.transform), "--transform", inputs)
    if args.json:
        check_output_file(Path(args.json), "--json", inputs)
    check_distinct_outputs({"--out": args.out, "--transform": args.transform, "--json": args.json})
    fixed = read_volume(args.fixed, "fixed CT", series_uid=args.series_uid)
    moving = read_volume(args.moving, "moving MRI", series_uid=args.series_uid)
    t0 = time.perf_counter()

    with warnings.catch_warnings():  # printed below from result.warnings, once, with the quality lines
        warnings.simplefilter("ignore", RegistrationWarning)
        result = register(fixed, moving, mode=args.mode, seed=args.seed, init=args.init, iterations=args.iterations,
                          progress=progress_printer(digits=3, desc="registration"))
    write_volume(result.registered, out)
    q = result.quality
    print(f"registered {args.moving} onto the grid of {args.fixed} ({result.mode}) in {time.perf_counter() - t0:.1f} s")
    print(f"  resampled MRI: {out}")
    print(f"  metric (Mattes MI, lower is better): as given {_num(q.get('metric_as_given'), '.4f')}, "
          f"start {_num(q.get('metric_start'), '.4f')}, final {_num(q.get('metric_final'), '.4f')} "
          f"(MI gain {_num(q.get('mi_gain'), '.4f')})")
    print(f"  edges (fixed vs MRI): gradient correlation {_num(q.get('gradient_correlation_before'), '.3f')} -> "
          f"{_num(q.get('gradient_correlation_after'), '.3f')}, edge alignment "
          f"{_num(q.get('edge_alignment_before'), '.3f')} -> {_num(q.get('edge_alignment_after'), '.3f')} "
          "(1 = parallel, ~0.5 = unrelated)")
    overlap = q.get("overlap_fraction")
    print(f"  overlap: {_num(None if overlap is None else 100 * overlap, '.0f')} % of the CT's voxels lie inside "
          "the MRI")
    if "jacobian_min" in q:
        print(f"  Jacobian determinant: {q['jacobian_min']:.3f} .. {q['jacobian_max']:.3f} "
              f"({100 * q['folding_fraction']:.2f} % folded)")
    print(f"  transform: {transform_summary(result.transform)['text']}")
    if q.get("metric_unchanged") and not result.warnings:
        print("  note: the metric did not change: the starting alignment (centres of mass) was already the optimum")
    for w in result.warnings:
        print(f"  warning: {w}")
    if args.transform:
        save_transform(result.transform, args.transform)
        print(f"  transform (fixed -> moving physical points): {args.transform}")
    if args.json:
        doc = {"fixed": str(args.fixed), "moving": str(args.moving), "out": str(out), "mode": result.mode,
               "converged": result.converged, "warnings": result.warnings, "quality": q,
               "transform": transform_summary(result.transform), "stages": result.stages}
        write_json_output(Path(args.json), doc)
        print(f"  quality written to {args.json}")
    return 0
