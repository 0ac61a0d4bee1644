"""``mrtoct evaluate``: one sCT against its reference (``--pred/--ref``), or trained models on test cases
(``--models/--data``, the batch evaluation of :mod:`..evaluation`, also ``training/evaluate.py``)."""

from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from ...names import METRIC_PRESETS
from ..args import (
    check_output_dir,
    check_output_file,
    non_negative_float,
    non_negative_int,
    positive_int,
    seed,
    sigterm_as_interrupt,
    write_json_output,
)
from .synthesize import SAMPLER_CHOICES

_SINGLE_ONLY = (("mask", "--mask"), ("json", "--json"), ("per_slice", "--per-slice"))
_BATCH_ONLY = (("split", "--split"), ("samplers", "--samplers"), ("steps", "--steps"), ("projections", "--projections"),
               ("noise_sigma", "--noise-sigma"), ("cases", "--cases"), ("figures", "--figures"), ("out", "--out"),
               ("batch_size", "--batch-size"))


def add_parser(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="score sCTs: one sCT vs its CT (--pred/--ref), or trained models on test cases (--models/--data)",
        description="Two modes. (1) --pred SCT --ref CT [--mask M]: MAE and ME in HU, PSNR, SSIM and MS-SSIM inside "
                    "the body mask (whole volume when no mask is given), with the definitions of --metrics (default: "
                    "PSNR over [-1024, 3071] HU, Gaussian-window SSIM; synthrad2023/synthrad2025: exactly the "
                    "SynthRAD challenges' evaluation code); the output says which preset produced the numbers. "
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
    one.add_argument("--series-uid", action="append", metavar="UID",
                     help="for a DICOM folder holding several series: read the series with this SeriesInstanceUID "
                          "(repeat the flag for several folders)")
    add_batch_evaluation_arguments(ev.add_argument_group("mode 2: trained models on test cases"))
    ev.add_argument("--metrics", choices=METRIC_PRESETS, default="default",
                    help="metric definitions (both modes): default = this project's ([-1024, 3071] HU, 11-tap "
                         "Gaussian SSIM, 2D MS-SSIM); synthrad2023 (= synthrad) = the SynthRAD2023 code ([-1024, "
                         "3000] HU, PSNR range 4024, 7x7x7 uniform SSIM with sample covariance, outside-mask filled "
                         "with -1024); synthrad2025 = the SynthRAD2025 code ([-1024, 3071], masked 3D MS-SSIM)")
    ev.set_defaults(func=run)


def add_batch_evaluation_arguments(p, required: bool = False) -> None:
    """The flags of the batch evaluation (``mrtoct evaluate --models`` and ``training/evaluate.py``)."""
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
    p.add_argument("--steps", type=positive_int("--steps"), default=None,
                   help="sampling steps for every multi-step sampler (default per sampler: ddpm 1000, ddim 100, "
                        "em 1000, pc 500, dpmpp 5, or 20 with --samples > 1: 5 steps under-disperse the MC std)")
    p.add_argument("--samples", type=positive_int("--samples"), default=None,
                   help="Monte-Carlo samples per slice, K: the sCT is their mean, the std map their spread (default 1; "
                        "calibration needs K > 1; deterministic one-call baselines run once)")
    p.add_argument("--projections", type=int, nargs="+", metavar="N_p",
                   help="DDMM-Synth rows for each conditional DDPM checkpoint: sparse-view measurements with N_p views "
                        "simulated from each case's reference CT, embedded by N-SMI as `mrtoct synthesize --ct` does "
                        "(a ddmm_synth checkpoint without this flag uses 23)")
    p.add_argument("--noise-sigma", type=non_negative_float("--noise-sigma"), nargs="+", metavar="SIGMA",
                   help="DDMM-Synth measurement noise per detector bin, one row per value (default 0; see `mrtoct "
                        "synthesize --help`); N-SMI runs as --nsmi auto: the exact noiseless block at 0, the "
                        "Wiener-filtered noisy block above it (gamma_t = 1 with the deterministic dpmpp)")
    p.add_argument("--cases", type=positive_int("--cases"), default=None, metavar="N",
                   help="evaluate only the first N test cases (cases of --data sorted by name; with --split in the "
                        "order of its 'test' list)")
    p.add_argument("--figures", type=non_negative_int("--figures"), default=None, metavar="N",
                   help="draw figures/<case>.png for the first N cases only (default: every case; 0 = none)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created if missing (default ./mrtoct_evaluation)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed("--seed"), default=0,
                   help="random seed of every synthesis and of the DDMM-Synth measurement noise (default 0)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="images per network call (default: automatic)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")


def run(args) -> int:
    """One sCT against its reference (--pred/--ref) or a batch evaluation (--models/--data)."""
    single = [flag for key, flag in (("pred", "--pred"), ("ref", "--ref")) if getattr(args, key, None)]
    batch = [flag for key, flag in (("models", "--models"), ("data", "--data")) if getattr(args, key, None)]
    if single and batch:
        raise InputError(f"{', '.join(single)} (compare one sCT) and {', '.join(batch)} (evaluate models on test "
                         "cases) were both given.",
                         "use either --pred SCT --ref CT [--mask M], or --models A.safetensors ... "
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
    # the engine loads here, not at import: the parser (mrtoct --help) stays light
    from ...io.intensity import check_ct_in_hu
    from ...io.volume import read_volume
    from ...pipeline.metrics import evaluate, format_table

    if args.json:  # checked before any work: writable, and not one of the inputs
        check_output_file(Path(args.json), "--json", {"--pred": args.pred, "--ref": args.ref, "--mask": args.mask})
    uid = getattr(args, "series_uid", None)
    pred = read_volume(args.pred, "synthetic CT", series_uid=uid)
    ref = read_volume(args.ref, "reference CT", series_uid=uid)
    check_ct_in_hu(ref.array, "reference CT")
    mask = read_volume(args.mask, "mask", series_uid=uid) if args.mask else None
    res = evaluate(pred, ref, None if mask is None else mask, preset=getattr(args, "metrics", "default"))
    row = {"case": Path(args.pred).name, **{k: v for k, v in res.items() if k not in ("per_slice",)}}
    print(format_table([row]))
    if args.per_slice:
        print(format_table(res["per_slice"]))
    if args.json:
        write_json_output(Path(args.json), res)
        print(f"metrics written to {args.json}")
    return 0


def run_batch_evaluation(args) -> int:
    """The batch mode of ``mrtoct evaluate`` (and ``training/evaluate.py``): :func:`..evaluation.run_evaluation`."""
    from ..evaluation import EvaluationSettings, run_evaluation  # torch loads here, not with the parser

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
    check_output_dir(Path(args.out or "mrtoct_evaluation"), "--out", {"--models": list(args.models),
                                                                      "--data": args.data})
    from ...pipeline.synthesis import SynthesisOptions  # the bounds of --steps/--samples/--batch-size, before any work

    SynthesisOptions(steps=args.steps, samples=args.samples if args.samples is not None else 1,
                     batch_size=args.batch_size).validate()
    settings = EvaluationSettings(
        models=[Path(m) for m in args.models], data=Path(args.data), out=Path(args.out or "mrtoct_evaluation"),
        split=Path(args.split) if args.split else None,
        samplers=[None if s == "default" else s for s in (args.samplers or ["default"])],
        steps=args.steps, samples=args.samples if args.samples is not None else 1,
        projections=list(args.projections or []), noise_sigmas=list(args.noise_sigma or []),
        cases=args.cases, figure_cases=args.figures, device=args.device or "auto",
        seed=args.seed if args.seed is not None else 0, batch_size=args.batch_size,
        precision=args.precision or "auto", metrics=getattr(args, "metrics", None) or "default")
    sigterm_as_interrupt()
    res = run_evaluation(settings)
    print()
    print(res["markdown"])
    out = settings.out.resolve()
    print(f"wrote to {out}:")
    for name in sorted(res["files"]):
        print(f"  {name}")
    return 0
