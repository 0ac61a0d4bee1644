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

from ..errors import CancelledError, InputError

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130


_FIX_SEP = "\n  Fix: "


class _Parser(argparse.ArgumentParser):
    """argparse with the engine's error format: usage, ``<prog>: error: <problem>``, then a ``Fix:`` line.

    Type checkers put their fix after ``_FIX_SEP`` in the message; other argparse errors (missing or
    unknown arguments, invalid choices) point at ``--help``. Exit status 2, like an :class:`InputError`.
    """

    def error(self, message):
        problem, sep, fix = message.partition(_FIX_SEP)
        if not sep:
            fix = f"see `{self.prog} --help` for the arguments and their valid values."
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT_ERROR, f"{self.prog}: error: {problem}{_FIX_SEP}{fix}\n")


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}.{_FIX_SEP}"
                                             f"give {name} a whole number >= 1.") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}.{_FIX_SEP}give {name} 1 or more "
                                             "(see --help for the default).")
        return v
    return parse


SEED_MAX = 2 ** 62  # torch generators take 64-bit seeds; derived seeds (seed + offset) must stay in range


def _seed(name="--seed"):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}.{_FIX_SEP}"
                                             f"give {name} a whole number, e.g. {name} 0.") from None
        if not 0 <= v <= SEED_MAX:
            raise argparse.ArgumentTypeError(f"{name} must be between 0 and 2**62, got {v}.{_FIX_SEP}"
                                             f"use a seed in that range, e.g. {name} 0.")
        return v
    return parse


def _non_negative_float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}.{_FIX_SEP}"
                                             f"give {name} a finite number >= 0.") from None
        if not (v >= 0 and v != float("inf")):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, got {text}.{_FIX_SEP}"
                                             f"give {name} a finite number >= 0.")
        return v
    return parse


def _non_negative_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = -1
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= 0, got {text!r}.{_FIX_SEP}"
                                             f"give {name} 0 or more.")
        return v
    return parse


def _require_output_folder(path: Path, what: str) -> None:
    if not path.parent.exists():
        raise InputError(f"the folder for {what} ({path.parent}) does not exist.", "create it first or choose another path.")


# ----------------------------------------------------------------------------------------------- phantom
def cmd_phantom(args) -> int:
    from ..data.phantom import generate_dataset

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; phantom cases are written into a folder.",
                         "give a folder path (it is created if missing), e.g. --out phantoms.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder --out {out} ({exc.strerror or exc}).",
                         "choose a folder path you can write to.") from None
    t0 = time.perf_counter()
    folders = generate_dataset(out, args.cases, first_seed=args.seed, region=args.region,
                               size=tuple(args.size), spacing=tuple(args.spacing))
    print(f"wrote {len(folders)} {args.region} phantom case(s) to {out} in {time.perf_counter() - t0:.1f} s:")
    for f in folders:
        print(f"  {f}  (mr.nii.gz = T2-weighted MR, ct.nii.gz = CT in HU, mask.nii.gz = body mask)")
    return 0


# ---------------------------------------------------------------------------------------------- register
def cmd_register(args) -> int:
    import warnings

    from .commands import _check_out
    from ..pipeline.registration import (RegistrationWarning, check_transform_suffix, register, save_transform,
                                         transform_summary)
    from ..io.volume import read_volume, write_volume

    out = _check_out(args.out, "--out")  # checked before the (long) registration, like --transform and --json
    if args.transform:
        check_transform_suffix(Path(args.transform))
        _require_output_folder(Path(args.transform), "--transform")
    if args.json:
        _require_output_folder(Path(args.json), "--json")
    fixed = read_volume(args.fixed, "fixed CT")
    moving = read_volume(args.moving, "moving MRI")
    t0 = time.perf_counter()

    def progress(fraction, message):
        print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():  # printed below from result.warnings, once, with the quality lines
        warnings.simplefilter("ignore", RegistrationWarning)
        result = register(fixed, moving, mode=args.mode, seed=args.seed, progress=progress, init=args.init,
                          iterations=args.iterations)
    write_volume(result.registered, out)
    q = result.quality

    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print(f"registered {args.moving} onto the grid of {args.fixed} ({result.mode}) in {time.perf_counter() - t0:.1f} s")
    print(f"  resampled MRI: {out}")
    print(f"  metric (Mattes MI, lower is better): as given {num(q.get('metric_as_given'), '.4f')}, "
          f"start {num(q.get('metric_start'), '.4f')}, final {num(q.get('metric_final'), '.4f')} "
          f"(MI gain {num(q.get('mi_gain'), '.4f')})")
    print(f"  edges (fixed vs MRI): gradient correlation {num(q.get('gradient_correlation_before'), '.3f')} -> "
          f"{num(q.get('gradient_correlation_after'), '.3f')}, edge alignment "
          f"{num(q.get('edge_alignment_before'), '.3f')} -> {num(q.get('edge_alignment_after'), '.3f')} "
          "(1 = parallel, ~0.5 = unrelated)")
    print(f"  overlap: {num(100 * q['overlap_fraction'] if q.get('overlap_fraction') is not None else None, '.0f')} % "
          "of the CT's voxels lie inside the MRI")
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
        _write_json_atomic(Path(args.json), doc)
        print(f"  quality written to {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
_SINGLE_ONLY = (("mask", "--mask"), ("json", "--json"), ("per_slice", "--per-slice"))
_BATCH_ONLY = (("split", "--split"), ("samplers", "--samplers"), ("steps", "--steps"), ("projections", "--projections"),
               ("noise_sigma", "--noise-sigma"), ("cases", "--cases"), ("figures", "--figures"), ("out", "--out"),
               ("batch_size", "--batch-size"))


def cmd_evaluate(args) -> int:
    """``mrtoct evaluate``: one sCT against its reference (--pred/--ref) or a batch evaluation (--models/--data)."""
    single = [flag for key, flag in (("pred", "--pred"), ("ref", "--ref")) if getattr(args, key, None)]
    batch = [flag for key, flag in (("models", "--models"), ("data", "--data")) if getattr(args, key, None)]
    if single and batch:
        raise InputError(f"{', '.join(single)} (compare one sCT) and {', '.join(batch)} (evaluate models on test "
                         "cases) were both given.", "use either --pred SCT --ref CT [--mask M], or --models A.safetensors ... "
                                             "--data DIR, in separate runs.")
    if batch:
        return run_batch_evaluation(args)
    if len(single) != 2:
        missing = [f for f in ("--pred", "--ref") if f not in single]
        raise InputError(f"nothing to evaluate: {' and '.join(missing)} missing.",
                         "compare one synthetic CT with --pred SCT --ref CT [--mask MASK], or evaluate trained models "
                         "with --models A.safetensors [B.safetensors ...] --data CASES_DIR.")
    extra = [flag for key, flag in _BATCH_ONLY if getattr(args, key, None) is not None]
    if extra:
        raise InputError(f"{', '.join(extra)} belong(s) to the batch mode (--models/--data), not to --pred/--ref.",
                         f"drop {', '.join(extra)}, or run the batch mode with --models and --data.")
    from ..io.intensity import check_ct_in_hu
    from ..pipeline.metrics import evaluate, format_table
    from ..io.volume import read_volume

    pred = read_volume(args.pred, "synthetic CT")
    ref = read_volume(args.ref, "reference CT")
    check_ct_in_hu(ref.array, "reference CT")
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


def run_batch_evaluation(args) -> int:
    """The batch mode of ``mrtoct evaluate`` (and ``training/evaluate.py``): :func:`.evaluation.run_evaluation`."""
    from .evaluation import EvaluationSettings, run_evaluation

    if not getattr(args, "models", None):
        raise InputError("--data was given without --models.", "add --models A.safetensors [B.safetensors ...].")
    if not getattr(args, "data", None):
        raise InputError("--models was given without --data.",
                         "add --data CASES_DIR (a folder of <case>/mr.nii.gz + ct.nii.gz [+ mask.nii.gz]).")
    extra = [flag for key, flag in _SINGLE_ONLY if getattr(args, key, None)]
    if extra:
        raise InputError(f"{', '.join(extra)} belong(s) to the --pred/--ref mode.",
                         f"drop {', '.join(extra)}: the batch mode reads each case's mask.nii.gz and writes "
                         "results.json to --out.")
    settings = EvaluationSettings(
        models=[Path(m) for m in args.models], data=Path(args.data), out=Path(args.out or "mrtoct_evaluation"),
        split=Path(args.split) if args.split else None,
        samplers=[None if s == "default" else s for s in (args.samplers or ["default"])],
        steps=args.steps, samples=args.samples if args.samples is not None else 1,
        projections=list(args.projections or []), noise_sigmas=list(args.noise_sigma or []),
        cases=args.cases, figure_cases=args.figures, device=args.device or "auto",
        seed=args.seed if args.seed is not None else 0, batch_size=args.batch_size,
        precision=args.precision or "auto")
    from .commands import _sigterm_as_interrupt

    _sigterm_as_interrupt()
    res = run_evaluation(settings)
    print()
    print(res["markdown"])
    out = settings.out.resolve()
    print(f"wrote to {out}:")
    for name in sorted(res["files"]):
        print(f"  {name}")
    return 0


def _write_json_atomic(path: Path, obj) -> None:
    from ..io.atomic import write_json

    _require_output_folder(path, str(path))
    write_json(path, obj)


# ------------------------------------------------------------------------------------------------ parser
def add_batch_evaluation_arguments(p, required: bool = False) -> None:
    """The flags of the batch evaluation (``mrtoct evaluate --models`` and ``training/evaluate.py``)."""
    from .commands import SAMPLER_CHOICES

    p.add_argument("--models", nargs="+", metavar="MODEL", required=required,
                   help="trained checkpoints (.safetensors from `mrtoct train`); each is one or more table rows")
    p.add_argument("--data", required=required, metavar="DIR",
                   help="folder of case folders <case>/mr.nii.gz + ct.nii.gz [+ mask.nii.gz] (MR registered to the CT; "
                        "metrics inside mask.nii.gz, the whole volume without one)")
    p.add_argument("--split", metavar="SPLIT",
                   help="split file (JSON/YAML of case names); evaluate its 'test' cases only (default: every case in "
                        "--data)")
    p.add_argument("--samplers", nargs="+", choices=SAMPLER_CHOICES + ["default"], metavar="SAMPLER",
                   help="samplers to compare, each a table row per model: "
                        f"{', '.join(SAMPLER_CHOICES)} or default (the model's own; the default). Every sampler must "
                        "work with every ddpm/score_sde model; syndiff and the one-call baselines always use their "
                        "own; DDMM-Synth rows use the listed samplers N-SMI supports (ddpm, ddim, dpmpp; default = "
                        "ddim) and skip the others with a note")
    p.add_argument("--steps", type=_positive_int("--steps"), default=None,
                   help="sampling steps for every multi-step sampler (default per sampler: ddpm 1000, ddim 100, "
                        "em 1000, pc 500, dpmpp 5)")
    p.add_argument("--samples", type=_positive_int("--samples"), default=None,
                   help="Monte-Carlo samples per slice, K: the sCT is their mean, the std map their spread (default 1; "
                        "calibration needs K > 1; deterministic one-call baselines run once)")
    p.add_argument("--projections", type=int, nargs="+", metavar="N_p",
                   help="DDMM-Synth rows for each conditional DDPM checkpoint: sparse-view measurements with N_p views "
                        "simulated from each case's reference CT, embedded by N-SMI as `mrtoct synthesize --ct` does "
                        "(a ddmm_synth checkpoint without this flag uses 23)")
    p.add_argument("--noise-sigma", type=_non_negative_float("--noise-sigma"), nargs="+", metavar="SIGMA",
                   help="DDMM-Synth measurement noise per detector bin, one row per value (default 0; see `mrtoct "
                        "synthesize --help`); sigma > 0 uses the noisy N-SMI block with ddim/ddpm, the noiseless "
                        "one (with a warning) with dpmpp")
    p.add_argument("--cases", type=_positive_int("--cases"), default=None, metavar="N",
                   help="evaluate only the first N test cases (cases of --data sorted by name; with --split in the "
                        "order of its 'test' list)")
    p.add_argument("--figures", type=_non_negative_int("--figures"), default=None, metavar="N",
                   help="draw figures/<case>.png for the first N cases only (default: every case; 0 = none)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created if missing (default ./mrtoct_evaluation)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_seed("--seed"), default=0,
                   help="random seed of every synthesis and of the DDMM-Synth measurement noise (default 0)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None,
                   help="images per network call (default: automatic)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")


def run_command(func, args) -> int:
    """Run a command function with the CLI's error convention (exit 2 for an InputError, 130 when cancelled)."""
    try:
        return int(func(args) or 0)
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    rg.add_argument("--iterations", type=_non_negative_int("--iterations"), default=100,
                    help="most optimiser iterations per pyramid level (default 100; 0 only reports the start)")
    rg.add_argument("--seed", type=int, default=0, help="seed of the metric's random sampling (default 0)")
    rg.add_argument("--json", help="also write the quality numbers, warnings and per-level optimiser record (.json)")
    rg.set_defaults(func=cmd_register)

    ev = sub.add_parser(
        "evaluate",
        help="score sCTs: one sCT vs its CT (--pred/--ref), or trained models on test cases (--models/--data)",
        description="Two modes. (1) --pred SCT --ref CT [--mask M]: MAE and ME in HU, PSNR over [-1024, 3071] HU, SSIM "
                    "and MS-SSIM inside the body mask (whole volume when no mask is given), SynthRAD conventions. "
                    "(2) --models A.safetensors [B ...] --data DIR: synthesise every test case with every model x "
                    "sampler (and, for conditional DDPM checkpoints, every DDMM-Synth --projections x --noise-sigma "
                    "setting, measurements simulated from the case's own CT), score each sCT with the same metrics, "
                    "and write to --out: table.md and table.csv (per method mean ± std across cases (ddof 1) of PSNR, "
                    "SSIM, MAE, ME, two-sided Wilcoxon signed-rank p-values against the method with the highest mean "
                    "PSNR, NFE, s/slice), results.json (every number per case and method), figures/<case>.png "
                    "(MR | CT | sCT | |error| | MC std | ROI zoom per method) and calibration.json/.png (MC std vs "
                    "|error|: Pearson, Spearman, sparsification curves, AUSE, for methods with --samples > 1 and a "
                    "non-zero std; the PNG only when there is one). Outputs are written only after every run "
                    "finished.")
    one = ev.add_argument_group("mode 1: one synthetic CT against its reference")
    one.add_argument("--pred", help="synthetic CT in HU")
    one.add_argument("--ref", help="reference CT in HU, on the same grid")
    one.add_argument("--mask", help="body mask on the same grid (non-zero = inside)")
    one.add_argument("--json", help="also write all metrics (with per-slice values) to this JSON file")
    one.add_argument("--per-slice", action="store_true", help="also print the per-slice table")
    add_batch_evaluation_arguments(ev.add_argument_group("mode 2: trained models on test cases"))
    ev.set_defaults(func=cmd_evaluate)

    from . import commands  # the synthesis/training/demo commands live beside the models they drive

    commands.add_parsers(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
