"""``mrtoct``: the engine's command line (the Slicer module runs the same commands in a subprocess).

Subcommands: ``phantom``, ``register``, ``synthesize``, ``evaluate``, ``info``, ``train``, ``demo``.
User-fixable problems print ``error: <problem>`` and ``Fix: <fix>`` and exit with status 2; nothing is
written in that case (outputs are written atomically, so an existing file is never half-replaced).
Progress lines for machine readers (the Slicer module) start with ``PROGRESS`` and go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import CancelledError, InputError

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def _non_negative_float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {text}")
        return v
    return parse


def _require_output_folder(path: Path, what: str) -> None:
    if not path.parent.exists():
        raise InputError(f"the folder for {what} ({path.parent}) does not exist.", "create it first or choose another path.")


# ----------------------------------------------------------------------------------------------- phantom
def cmd_phantom(args) -> int:
    from .phantom import generate_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    folders = generate_dataset(out, args.cases, first_seed=args.seed, region=args.region,
                               size=tuple(args.size), spacing=tuple(args.spacing))
    print(f"wrote {len(folders)} {args.region} phantom case(s) to {out} in {time.perf_counter() - t0:.1f} s:")
    for f in folders:
        print(f"  {f}  (mr.nii.gz = T2-weighted MR, ct.nii.gz = CT in HU, mask.nii.gz = body mask)")
    return 0


# ---------------------------------------------------------------------------------------------- register
def cmd_register(args) -> int:
    from .registration import register, save_transform
    from .volume import read_volume, write_volume

    out = Path(args.out)
    _require_output_folder(out, "--out")
    fixed = read_volume(args.fixed, "fixed CT")
    moving = read_volume(args.moving, "moving MRI")
    t0 = time.perf_counter()

    def progress(fraction, message):
        print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)

    result = register(fixed, moving, mode=args.mode, seed=args.seed, progress=progress)
    write_volume(result.registered, out)
    print(f"registered {args.moving} onto the grid of {args.fixed} ({args.mode}) in {time.perf_counter() - t0:.1f} s")
    print(f"  resampled MRI: {out}")
    if args.transform:
        save_transform(result.transform, args.transform)
        print(f"  transform (fixed -> moving physical points): {args.transform}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from .metrics import evaluate, format_table
    from .volume import read_volume

    pred = read_volume(args.pred, "synthetic CT")
    ref = read_volume(args.ref, "reference CT")
    mask = read_volume(args.mask, "mask") if args.mask else None
    res = evaluate(pred, ref, None if mask is None else mask)
    row = {"case": Path(args.pred).name, **{k: v for k, v in res.items() if k not in ("per_slice",)}}
    print(format_table([row]))
    if args.per_slice:
        print(format_table(res["per_slice"]))
    if args.json:
        _write_json_atomic(Path(args.json), res)
        print(f"metrics written to {args.json}")
    return 0


def _write_json_atomic(path: Path, obj) -> None:
    from .atomic import write_json

    _require_output_folder(path, str(path))
    write_json(path, obj)


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrtoct",
        description="MRI -> synthetic CT with conditional diffusion models (MRtoCTSynthesis engine).",
        epilog="Run `mrtoct demo` for a complete example on a bundled phantom case.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ph = sub.add_parser("phantom", help="write paired MR/CT phantom cases (SynthRAD folder layout)",
                        description="Generate procedural, co-registered MR (T1/T2) and CT phantom volumes with a "
                                    "body mask: <out>/case_000/{mr,ct,mask,mr_t1,mr_t2,labels}.nii.gz.")
    ph.add_argument("--out", required=True, help="output folder (created if missing)")
    ph.add_argument("--cases", type=_positive_int("--cases"), default=1, help="number of cases (default 1)")
    ph.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i (default 0)")
    ph.add_argument("--region", choices=["pelvis", "head"], default="pelvis")
    ph.add_argument("--size", type=_positive_int("--size"), nargs=3, default=[128, 128, 48], metavar=("NX", "NY", "NZ"),
                    help="grid size in voxels (default 128 128 48)")
    ph.add_argument("--spacing", type=float, nargs=3, default=[3.0, 3.0, 3.0], metavar=("SX", "SY", "SZ"),
                    help="voxel spacing in mm (default 3 3 3)")
    ph.set_defaults(func=cmd_phantom)

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
    rg.set_defaults(func=cmd_register)

    ev = sub.add_parser("evaluate", help="compare a synthetic CT with a reference CT (MAE/ME HU, PSNR, SSIM)",
                        description="MAE and ME in HU, PSNR over [-1024, 3071] HU, SSIM and MS-SSIM inside the body "
                                    "mask (whole volume when no mask is given), SynthRAD conventions.")
    ev.add_argument("--pred", required=True, help="synthetic CT in HU")
    ev.add_argument("--ref", required=True, help="reference CT in HU, on the same grid")
    ev.add_argument("--mask", help="body mask on the same grid (non-zero = inside)")
    ev.add_argument("--json", help="also write all metrics (with per-slice values) to this JSON file")
    ev.add_argument("--per-slice", action="store_true", help="also print the per-slice table")
    ev.set_defaults(func=cmd_evaluate)

    from . import commands  # the synthesis/training/demo commands live beside the models they drive

    commands.add_parsers(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"error: {err.problem}", file=sys.stderr)
        if err.fix:
            print(f"  Fix: {err.fix}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except CancelledError as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("cancelled by the user; no output was written", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
