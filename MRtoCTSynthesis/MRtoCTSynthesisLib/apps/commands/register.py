"""``mrtoct register``: register an MRI to a CT and write the MRI resampled onto the CT grid."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..args import check_distinct_outputs, check_output_file, check_volume_output


def add_parser(sub) -> None:
    rg = sub.add_parser("register", help="register an MRI to a CT (rigid then affine, Mattes MI)",
                        description="Register the moving MRI to the fixed CT with SimpleITK (rigid then affine, Mattes "
                                    "mutual information, conjugate-gradient line search, 3-level pyramid) and write "
                                    "the MRI resampled onto the CT grid.")
    rg.add_argument("--fixed", required=True, help="fixed image: the CT")
    rg.add_argument("--moving", required=True, help="moving image: the MRI")
    rg.add_argument("--out", required=True, help="output: the MRI resampled onto the CT grid (.nii.gz/.nrrd/.mha)")
    rg.add_argument("--transform", help="also save the transform (.tfm or .h5)")
    rg.add_argument("--mode", choices=["rigid", "rigid+affine", "affine"], default="rigid+affine")
    rg.add_argument("--seed", type=int, default=0, help="seed of the metric's random sampling (default 0)")
    rg.add_argument("--series-uid", action="append", metavar="UID",
                    help="for a DICOM folder holding several series: read the series with this SeriesInstanceUID "
                         "(repeat the flag for --fixed and --moving)")
    rg.set_defaults(func=run)


def run(args) -> int:
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    from ...io.volume import read_volume, write_volume
    from ...pipeline.registration import register, save_transform, transform_suffix

    inputs = {"--fixed": args.fixed, "--moving": args.moving}
    out = check_volume_output(args.out, "--out", inputs)  # checked before the (long) registration, like --transform
    if args.transform:
        transform_suffix(Path(args.transform))
        check_output_file(Path(args.transform), "--transform", inputs)
    check_distinct_outputs({"--out": args.out, "--transform": args.transform})
    fixed = read_volume(args.fixed, "fixed CT", series_uid=args.series_uid)
    moving = read_volume(args.moving, "moving MRI", series_uid=args.series_uid)
    t0 = time.perf_counter()

    def progress(fraction, message):
        print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)

    result = register(fixed, moving, mode=args.mode, seed=args.seed, progress=progress)
    write_volume(result.registered, out, what="--out")
    print(f"registered {args.moving} onto the grid of {args.fixed} ({args.mode}) in {time.perf_counter() - t0:.1f} s")
    print(f"  resampled MRI: {out}")
    if args.transform:
        save_transform(result.transform, args.transform)
        print(f"  transform (fixed -> moving physical points): {args.transform}")
    return 0
