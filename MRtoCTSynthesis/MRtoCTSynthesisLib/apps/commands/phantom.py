"""``mrtoct phantom``: write paired MR/CT phantom cases in the SynthRAD folder layout."""

from __future__ import annotations

import time
from pathlib import Path

from ...errors import InputError
from ..args import check_output_dir, positive_int


def add_parser(sub) -> None:
    ph = sub.add_parser("phantom", help="write paired MR/CT phantom cases (SynthRAD folder layout)",
                        description="Generate procedural, co-registered MR (T1/T2) and CT phantom volumes with a "
                                    "body mask: <out>/case_000/{mr,ct,mask,mr_t1,mr_t2,labels}.nii.gz.")
    ph.add_argument("--out", required=True, help="output folder (created if missing)")
    ph.add_argument("--cases", type=positive_int("--cases"), default=1, help="number of cases (default 1)")
    ph.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i (default 0)")
    ph.add_argument("--region", choices=["pelvis", "head"], default="pelvis")
    ph.add_argument("--size", type=positive_int("--size"), nargs=3, default=[128, 128, 48], metavar=("NX", "NY", "NZ"),
                    help="grid size in voxels (default 128 128 48)")
    ph.add_argument("--spacing", type=float, nargs=3, default=[3.0, 3.0, 3.0], metavar=("SX", "SY", "SZ"),
                    help="voxel spacing in mm (default 3 3 3)")
    ph.set_defaults(func=run)


def run(args) -> int:
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    from ...data.phantom import generate_dataset

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; phantom cases are written into a folder.",
                         "give a folder path (it is created if missing), e.g. --out phantoms.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder --out {out} ({exc.strerror or exc}).",
                         "choose a folder path you can write to.") from None
    check_output_dir(out, "--out")  # writable (read-only disks too), UTF-8 name, before any work
    t0 = time.perf_counter()
    folders = generate_dataset(out, args.cases, first_seed=args.seed, region=args.region,
                               size=tuple(args.size), spacing=tuple(args.spacing))
    print(f"wrote {len(folders)} {args.region} phantom case(s) to {out} in {time.perf_counter() - t0:.1f} s:")
    for f in folders:
        print(f"  {f}  (mr.nii.gz = T2-weighted MR, ct.nii.gz = CT in HU, mask.nii.gz = body mask)")
    return 0
