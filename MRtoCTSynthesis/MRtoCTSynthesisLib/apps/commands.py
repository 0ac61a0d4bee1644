"""The model-driving subcommands of ``mrtoct``: ``synthesize``, ``info``, ``train`` and ``demo``.

``synthesize`` is what the Slicer module runs in its subprocess: it reads the MRI, loads the checkpoint
(without pickle), runs :func:`.inference.synthesize_volume` and writes the sCT and std volumes (HU, the
MRI's exact geometry) atomically, only after the whole volume is done.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..assets import DEMO_CASE, DEMO_MODEL, DEMO_SYNDIFF
from ..errors import InputError
SAMPLER_CHOICES = ["ddpm", "ddim", "em", "pc", "ode", "dpmpp"]
SAMPLER_CHOICES += ["syndiff", "direct"]  # SynDiff's fixed T/k-step sampler; the one-call CNN/GAN baselines
#: inference.COMPILE_MODES, repeated here so that building the parser does not import torch (a test checks)
COMPILE_CHOICES = ["default", "reduce-overhead", "max-autotune"]
TRAIN_METHODS = ["ddpm", "score_sde", "syndiff", "unet_cnn", "pix2pix", "wgan_gp", "cyclegan"]


def _progress_printer(prefix="PROGRESS"):
    def progress(fraction, message):
        print(f"{prefix} {fraction:.4f} {message}", file=sys.stderr, flush=True)
    return progress


def _sigterm_as_interrupt():
    """Make SIGTERM (the Slicer module's Cancel) unwind like Ctrl-C, so temporary files are cleaned up."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. called from tests through main()): keep the default
        pass


def _check_out(path, what):
    from ..io.volume import WRITE_SUFFIXES, _suffix

    p = Path(path)
    if _suffix(p) not in WRITE_SUFFIXES:
        raise InputError(f"{what} {p} has an unsupported suffix.", f"use one of {', '.join(WRITE_SUFFIXES)}.")
    if not p.parent.exists():
        raise InputError(f"the folder of {what} ({p.parent}) does not exist.", "create it first or choose another path.")
    return p


def _options_from_args(args):
    from ..pipeline.synthesis import SynthesisOptions

    compile_mode = getattr(args, "compile", None)
    return SynthesisOptions(sampler=args.sampler, steps=args.steps, samples=args.samples, seed=args.seed,
                            device=args.device, batch_size=args.batch_size, precision=args.precision,
                            channels_last=bool(getattr(args, "channels_last", False)), compile=compile_mode is not None,
                            compile_mode=compile_mode or "default")


# -------------------------------------------------------------------------------------------- synthesize
def cmd_synthesize(args) -> int:
    from ..pipeline.synthesis import synthesize_volume
    from ..models.methods import load_model
    from ..io.volume import read_volume, write_volume

    out_ct = _check_out(args.out_ct, "--out-ct")
    out_std = _check_out(args.out_std, "--out-std") if args.out_std else None
    options = _options_from_args(args)
    options.validate()
    measured = _check_measurement_args(args)
    out_sino = _check_out(args.out_sinogram, "--out-sinogram") if getattr(args, "out_sinogram", None) else None
    if args.info_json and not Path(args.info_json).parent.exists():
        raise InputError(f"the folder of --info-json ({Path(args.info_json).parent}) does not exist.",
                         "create it first or choose another path.")
    _check_distinct_outputs(args)
    mri = read_volume(args.mri, "MRI")
    model = load_model(args.model)
    _sigterm_as_interrupt()
    if measured:
        result, measurements = _synthesize_with_measurements(args, mri, model, options)
    elif model.method == "ddmm_synth":
        raise InputError("a ddmm_synth checkpoint needs CT measurements to sample with.",
                         "pass --ct REFERENCE_CT (on the MRI's grid) or --sinogram FILE.")
    else:
        result = synthesize_volume(mri, model, options, progress=_progress_printer())
    write_volume(result.sct, out_ct)
    if out_std:
        write_volume(result.std, out_std)
    if measured and out_sino:
        from ..io.volume import Volume, make_geometry

        arr = measurements.to_volume_array()
        write_volume(Volume(arr, make_geometry(arr.shape[::-1])), out_sino)
    info = result.info
    print(f"synthetic CT: {out_ct}" + (f"\nuncertainty (MC std, HU): {out_std}" if out_std else "")
          + (f"\nsinograms (slices, views, bins): {out_sino}" if measured and out_sino else ""))
    print(f"{info['method']} / {info['sampler']} {info['steps']} steps, {info['samples']} sample(s), "
          f"{info['slices']} slices in {info['seconds']:.1f} s on {info['device']}")
    if measured:
        m = info["measurements"]
        print(f"N-SMI {m['nsmi']}: {m['n_projections']} views, noise sigma {m['noise_sigma']:g} per bin "
              f"(image-domain sigma_n {m['sigma_n_image']:.3g}), measurements from {m['source']}")
    if args.info_json:
        from .cli import _write_json_atomic

        _write_json_atomic(Path(args.info_json), info)
    return 0


def _check_distinct_outputs(args) -> None:
    """Refuse outputs that would overwrite each other or an input (the later write would silently win)."""
    import os

    def key(path):
        return os.path.realpath(path)

    inputs = {"--mri": args.mri, "--model": args.model, "--ct": getattr(args, "ct", None),
              "--sinogram": getattr(args, "sinogram", None)}
    outputs = {"--out-ct": args.out_ct, "--out-std": args.out_std, "--info-json": args.info_json,
               "--out-sinogram": getattr(args, "out_sinogram", None)}
    seen = {}
    for flag, path in outputs.items():
        if not path:
            continue
        for in_flag, in_path in inputs.items():
            if in_path and key(in_path) == key(path):
                raise InputError(f"{flag} {path} is the input {in_flag}; writing it would destroy the input.",
                                 f"give {flag} another file name.")
        if key(path) in seen:
            raise InputError(f"{seen[key(path)]} and {flag} are the same file ({path}); one would overwrite the other.",
                             f"give {flag} another file name.")
        seen[key(path)] = flag


def _check_measurement_args(args) -> bool:
    """Validate the DDMM-Synth flags; True when measurements are embedded (--ct or --sinogram)."""
    from ..models.methods.ddmm_synth import check_noise_sigma, check_projections

    ct, sino = getattr(args, "ct", None), getattr(args, "sinogram", None)
    if ct and sino:
        raise InputError("--ct and --sinogram were both given.",
                         "use --ct to simulate measurements from a reference CT, or --sinogram to use your own.")
    given = [flag for flag, value in (("--projections", getattr(args, "projections", None)),
                                      ("--noise-sigma", getattr(args, "noise_sigma", None)),
                                      ("--nsmi", getattr(args, "nsmi", None)),
                                      ("--out-sinogram", getattr(args, "out_sinogram", None))) if value is not None]
    if not (ct or sino):
        if given:
            raise InputError(f"{', '.join(given)} only make(s) sense with CT measurements (DDMM-Synth).",
                             "add --ct REFERENCE_CT (on the MRI's grid) or --sinogram FILE, or drop "
                             f"{', '.join(given)}.")
        return False
    if args.projections is not None:
        check_projections(args.projections)
    if args.noise_sigma is not None:
        check_noise_sigma(args.noise_sigma)
    if sino and args.out_sinogram is not None:
        raise InputError("--out-sinogram writes simulated measurements; with --sinogram there are none.",
                         "drop --out-sinogram (your --sinogram file is already the measurements).")
    return True


def _synthesize_with_measurements(args, mri, model, options):
    """The DDMM-Synth path of ``synthesize``: build the measurements, run N-SMI."""
    import warnings

    from ..pipeline.synthesis import resolve_device
    from ..models.methods.ddmm_synth import (DEFAULT_PROJECTIONS, DDMMSynth, measurements_from_ct,
                                     measurements_from_sinogram, synthesize_with_measurements)
    from ..io.volume import read_volume

    model = DDMMSynth.from_model(model)
    device = resolve_device(options.device)
    sigma = 0.0 if args.noise_sigma is None else float(args.noise_sigma)
    if args.ct:
        ct = read_volume(args.ct, "reference CT")
        n_p = DEFAULT_PROJECTIONS if args.projections is None else args.projections
        meas = measurements_from_ct(mri, ct, model.image_size, n_p, sigma, seed=options.seed, device=device)
    else:
        sino = read_volume(args.sinogram, "sinogram")
        meas = measurements_from_sinogram(sino, mri, model.image_size, sigma, args.projections, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = synthesize_with_measurements(mri, model, meas, args.nsmi or "auto", options,
                                              progress=_progress_printer())
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    return result, meas


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """DDMM-Synth flags of ``synthesize`` (sparse-view CT measurements embedded by N-SMI)."""
    g = p.add_argument_group(
        "DDMM-Synth (sparse-view CT measurements)",
        "Embed parallel-beam CT measurements into sampling with the null-space measurement inference block of "
        "DDMM-Synth (Li et al. 2023). Needs a conditional DDPM checkpoint; the run is reported as method "
        "ddmm_synth (noiseless block) or ddmm_synth_noise (noisy block). Samplers: ddim (default, 100 steps), "
        "ddpm, dpmpp (noiseless block only).")
    g.add_argument("--ct", metavar="REFERENCE_CT",
                   help="reference CT in HU on the MRI's grid (run `mrtoct register` first if it is not); each axial "
                        "slice is put on the model grid like the MRI and projected with --projections views")
    g.add_argument("--sinogram", metavar="FILE",
                   help="use these measurements instead of simulating them: a NIfTI/NRRD volume of shape "
                        "(slices, views, bins) in numpy order (x = detector bin, y = view, z = slice), one sinogram "
                        "per axial slice of the MRI in canonical order (inferior to superior) on the model grid, "
                        "views 180*a/N_p degrees, ceil(sqrt(2)*image_size) bins, values = line integrals of the CT "
                        "in model units [-1, 1] x pixel lengths (what --out-sinogram writes)")
    g.add_argument("--projections", type=int, default=None, metavar="N_p",
                   help="number of views, uniform over [0, 180) degrees (default 23 with --ct; read from the file "
                        "with --sinogram)")
    g.add_argument("--noise-sigma", type=float, default=None, metavar="SIGMA",
                   help="measurement noise: standard deviation per detector bin, in the sinogram's units (model "
                        "units x pixel lengths; a ray across a 64-pixel grid of water measures about -32). With --ct "
                        "Gaussian noise of this size is added (seeded by --seed); with --sinogram it states the "
                        "noise already in the file. Default 0. The image-domain sigma_n of DDMM-Synth Eqs. 8-13 is "
                        "this times the pseudo-inverse's noise gain (about 1.9 for 23 views at 64x64) and is "
                        "reported in the run info")
    g.add_argument("--nsmi", choices=["auto", "noiseless", "noisy"], default=None,
                   help="N-SMI block: noiseless (DDMM-Synth Eq. 5), noisy (DDMM-Synth-noise, Eqs. 7-13; needs "
                        "--sampler ddim or ddpm) or auto = noisy when --noise-sigma > 0 (default auto)")
    g.add_argument("--out-sinogram", metavar="FILE",
                   help="also write the simulated measurements (with --ct) in the --sinogram layout")


def add_synthesis_arguments(p: argparse.ArgumentParser, model_required=True) -> None:
    from .cli import _positive_int, _seed

    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="sampler (default: the model's, dpmpp = DPM-Solver++(2M)); ddpm = ancestral (Lyu Table I), "
                        "ddim, em = Euler-Maruyama, pc = predictor-corrector, ode = probability-flow RK45")
    p.add_argument("--steps", type=_positive_int("--steps"), default=None,
                   help="sampling steps (default per sampler: ddpm 1000, ddim 100, em 1000, pc 500, dpmpp 5; "
                        "ode: maximum steps of the adaptive solver)")
    p.add_argument("--samples", type=_positive_int("--samples"), default=1,
                   help="Monte-Carlo samples per slice; the sCT is their mean and --out-std their std (default 1)")
    p.add_argument("--seed", type=_seed(), default=0,
                   help="random seed, 0 to 2**62 (default 0); same seed + inputs + device = same sCT")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None,
                   help="images per network call (default: automatic; halved on CUDA out-of-memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC memory layout for weights and inputs (faster convolutions on recent GPUs under "
                        "bf16/fp16; no gain on CPU). Off by default")
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_CHOICES, metavar="MODE",
                   help="torch.compile the networks (MODE: default, reduce-overhead = CUDA graphs, max-autotune). "
                        "Compiling takes minutes and pays only for long runs on a GPU; on the 2-core CPU we measured "
                        "it slower (benchmarks/README.md). Off by default")


# -------------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from ..models.checkpoint import describe_checkpoint

    print(describe_checkpoint(args.model))
    return 0


def cmd_export(args) -> int:
    """Keep only what synthesis needs: the inference networks, as their EMA weights, no optimiser state."""
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..models.methods import METHODS

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out} must end in .safetensors.", "e.g. --out model_small.safetensors")
    ck = load_checkpoint(args.model)
    cls = METHODS.get(ck.method)
    keep = list(getattr(cls, "inference_networks", None) or ck.network_names)
    meta = dict(ck.metadata)
    meta["network"] = {n: ck.metadata["network"][n] for n in keep}
    meta["training"] = {k: v for k, v in meta.get("training", {}).items() if k != "resume"}
    meta["training"]["exported_from"] = {"file": Path(args.model).name, "sha256": ck.metadata.get("sha256"),
                                         "kept": keep}
    save_checkpoint(out, {n: ck.state_dict(n, prefer_ema=True) for n in keep}, meta)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {', '.join(keep)} (EMA weights), from "
          f"{Path(args.model).stat().st_size / 1e6:.1f} MB")
    return 0


# ------------------------------------------------------------------------------------------------- train
#: command-line flags of `mrtoct train` -> the config key they set (flags win over the config file)
TRAIN_FLAG_KEYS = {"method": "method", "data": "data.root", "split": "data.split", "image_size": "model.image_size",
                   "context": "model.context", "unet": "model.unet", "prediction": "model.prediction",
                   "steps": "train.steps", "epochs": "train.epochs", "batch_size": "train.batch_size",
                   "lr": "optim.lr", "seed": "train.seed", "device": "train.device",
                   "disjoint_cases": "data.disjoint_cases", "register": "data.register",
                   "val_every": "train.val_every", "checkpoint_every": "train.checkpoint_every"}


def train_config_from_args(args) -> dict:
    """The run's config: engine defaults < --config file < --set KEY=VALUE < explicit flags."""
    from ..training.loop import apply_overrides, default_config, load_config, validate_config

    cfg = load_config(args.config) if args.config else default_config(args.method or "ddpm")
    cfg = apply_overrides(cfg, args.set or [])
    for flag, key in TRAIN_FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is None or value is False:
            continue
        if flag == "data":
            value = str(Path(value).resolve())
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    if args.no_cache:
        cfg["data"]["cache"] = False
    return validate_config(cfg)


def cmd_train(args) -> int:
    from ..training.loop import TrainingRun, init_distributed

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != ".safetensors":
        raise InputError(f"--out {out} must end in .safetensors.", "e.g. --out my_model.safetensors")
    if out is not None and not out.parent.exists():
        raise InputError(f"the folder of --out ({out.parent}) does not exist.", "create it first.")
    cfg = train_config_from_args(args)
    run_dir = Path(args.run_dir) if args.run_dir else (out.with_name(out.stem + "_run") if out
                                                        else Path("runs") / cfg["method"])
    if args.resume is False and (run_dir / "last.safetensors").exists() and not args.overwrite:
        raise InputError(f"the run folder {run_dir} already holds a checkpoint.",
                         "add --resume to continue that run, --overwrite to start again from scratch, or choose "
                         "another --run-dir.")
    init_distributed()
    _sigterm_as_interrupt()
    try:
        TrainingRun(cfg, run_dir, out=out, command=" ".join(["mrtoct", *sys.argv[1:]])).run(resume=args.resume)
    except KeyboardInterrupt:
        from ..errors import CancelledError

        raise CancelledError(f"training interrupted; {run_dir / 'last.safetensors'} holds the last checkpoint "
                             "(if one was written): run the same command with --resume to continue") from None
    return 0


# -------------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """The README's main job: the bundled case through the bundled models, one figure, one metrics file.

    Rows: the conditional DDPM from the MRI alone (its sCT and std are sct.nii.gz / sct_std.nii.gz);
    DDMM-Synth, the same model pinned to ``--projections`` simulated views of the bundled CT (N-SMI,
    noiseless); SynDiff (when its bundled model is present; the label says whether it was trained on pairs,
    SynDiff Sec. V-C, or unpaired). All use ``--samples`` Monte-Carlo samples
    (DDMM-Synth half as many: the measurements leave little to vary).
    """
    import dataclasses

    import numpy as np

    from .evaluation import central_body_slice, highest_error_roi
    from .figures import save_method_grid_figure
    from ..pipeline.synthesis import resolve_device, synthesize_volume
    from ..models.methods import load_model
    from ..models.methods.ddmm_synth import DDMMSynth, check_projections, measurements_from_ct, synthesize_with_measurements
    from ..pipeline.metrics import evaluate, format_table
    from ..io.slicing import canonical_layout, to_canonical
    from ..io.volume import read_volume, write_volume

    model_path = Path(args.model) if args.model else DEMO_MODEL
    if not model_path.exists():
        raise InputError(f"the demo model {model_path} is missing.",
                         "reinstall the package (`bash scripts/setup.sh`), or pass --model YOUR.safetensors.")
    if not (DEMO_CASE / "mr.nii.gz").exists():
        raise InputError(f"the bundled demo case {DEMO_CASE} is missing.", "reinstall the package (`bash scripts/setup.sh`).")
    if args.projections:
        check_projections(args.projections)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mri = read_volume(DEMO_CASE / "mr.nii.gz", "demo MRI")
    ref = read_volume(DEMO_CASE / "ct.nii.gz", "demo CT")
    mask = read_volume(DEMO_CASE / "mask.nii.gz", "demo mask")
    model = load_model(model_path)
    options = _options_from_args(args)
    print(f"demo: {model.method} model {model_path.name} on the bundled phantom case ({mri.geometry.describe()}), "
          f"{options.samples} Monte-Carlo samples per slice")
    _sigterm_as_interrupt()
    body = mask.array > 0
    runs = []  # (key, label, result)

    def run(key, label, fn):
        print(f"-- {label}", flush=True)
        result = fn()
        metrics = evaluate(result.sct, ref, mask)
        metrics["mean_std_hu"] = float(result.std.array[body].mean())
        runs.append((key, label, result, metrics))

    sampler = model.make_sampler(options.sampler, options.steps)  # resolves the defaults, for the labels
    run("main", f"{model.method} + {sampler.name} {sampler.steps} steps",
        lambda: synthesize_volume(mri, model, options, progress=_progress_printer()))
    if args.projections and model.method == "ddpm":
        dd = DDMMSynth.from_model(model)
        meas = measurements_from_ct(mri, ref, dd.image_size, args.projections, 0.0, seed=options.seed,
                                    device=resolve_device(options.device))
        # the sampler of the main row (N-SMI noiseless works with dpmpp), half the samples
        dd_opts = dataclasses.replace(options, samples=max(1, options.samples // 2),
                                      sampler=sampler.name, steps=sampler.steps)
        run("ddmm_synth", f"DDMM-Synth, {args.projections} CT views",
            lambda: synthesize_with_measurements(mri, dd, meas, "noiseless", dd_opts, progress=_progress_printer()))
    if not args.model and not args.no_syndiff and DEMO_SYNDIFF.exists():
        sd = load_model(DEMO_SYNDIFF)
        variant = "paired" if getattr(sd, "paired", False) else "unpaired"
        run("syndiff", f"SynDiff ({variant}), 4 steps", lambda: synthesize_volume(
            mri, sd, dataclasses.replace(options, sampler=None, steps=None), progress=_progress_printer()))

    files = []
    for key, label, result, _ in runs:
        stem = "sct" if key == "main" else f"sct_{key}"
        write_volume(result.sct, out / f"{stem}.nii.gz")
        write_volume(result.std, out / f"{stem}_std.nii.gz")
        files += [(f"{stem}.nii.gz", f"synthetic CT (HU), {label}"), (f"{stem}_std.nii.gz", "its MC std (HU)")]
    from .cli import _write_json_atomic

    main_metrics = runs[0][3]
    _write_json_atomic(out / "metrics.json", {
        "metrics": main_metrics, "run": runs[0][2].info, "model": str(model_path),
        "methods": {key: {"label": label, "metrics": {k: v for k, v in m.items() if k != "per_slice"}, "run": r.info}
                    for key, label, r, m in runs}})

    mr_c = to_canonical(mri.array, mri.geometry)[0]
    ref_c = to_canonical(ref.array, ref.geometry)[0]
    mask_c = to_canonical(mask.array, mask.geometry)[0] > 0
    z = central_body_slice(mask_c)
    spacing = canonical_layout(mri.geometry)[2]
    rows = [{"label": label, "sct": to_canonical(r.sct.array, r.sct.geometry)[0][z],
             "std": to_canonical(r.std.array, r.std.geometry)[0][z], "metrics": m} for _, label, r, m in runs]
    roi = highest_error_roi([row["sct"] - ref_c[z] for row in rows], mask_c[z], (spacing[1], spacing[2]))
    fig = save_method_grid_figure(out / "comparison.png", mr_c[z].astype(np.float64), ref_c[z].astype(np.float64),
                                  rows, mask=mask_c[z], roi=roi, pixel_spacing=(spacing[1], spacing[2]),
                                  title=f"MRtoCTSynthesis demo: bundled phantom case, axial slice {z}; "
                                        f"{options.samples} MC samples")
    print(format_table([{"method": label, **{k: m[k] for k in ("mae_hu", "me_hu", "psnr_db", "ssim", "mean_std_hu")},
                         "nfe": r.info.get("nfe_per_sample", r.info.get("nfe")),
                         "s_per_slice": round(r.info["seconds_per_slice"], 3)} for _, label, r, m in runs]))
    print(f"\nwrote to {out.resolve()}:")
    for name, what in files + [("metrics.json", "metrics vs the phantom's CT, and run details"),
                               (fig.name, "figure: MRI | CT | sCT | error | uncertainty | zoom, one row per method")]:
        print(f"  {name:24s} {what}")
    return 0


def add_parsers(sub) -> None:
    from .cli import _positive_int

    sy = sub.add_parser("synthesize", help="MRI volume -> synthetic CT (+ Monte-Carlo std) with a trained model",
                        description="Synthesise a CT in HU from an MRI volume, slice by slice, with a trained checkpoint. "
                                    "Outputs have exactly the MRI's geometry and are written only when complete.")
    sy.add_argument("--mri", required=True, help="input MRI volume (NIfTI/NRRD/MHA file or DICOM folder)")
    sy.add_argument("--model", required=True, help="trained checkpoint (.safetensors from `mrtoct train`)")
    sy.add_argument("--out-ct", required=True, help="output synthetic CT (HU), e.g. sct.nii.gz")
    sy.add_argument("--out-std", help="output per-voxel Monte-Carlo std (HU), e.g. sct_std.nii.gz")
    sy.add_argument("--info-json", help="also write the run details (sampler, NFE, timings) as JSON")
    add_synthesis_arguments(sy)
    add_measurement_arguments(sy)
    sy.set_defaults(func=cmd_synthesize)

    inf = sub.add_parser("info", help="describe a checkpoint (method, network, schedule, training data)")
    inf.add_argument("--model", required=True)
    inf.set_defaults(func=cmd_info)

    ex = sub.add_parser("export", help="write a smaller inference-only copy of a checkpoint",
                        description="Keep only the networks synthesis uses (e.g. SynDiff's MR->CT diffusive generator), "
                                    "stored as their EMA weights; drop discriminators, reverse-direction generators and "
                                    "optimiser state. The result cannot resume training.")
    ex.add_argument("--model", required=True, help="checkpoint from `mrtoct train` (any of the run folder's files)")
    ex.add_argument("--out", required=True, help="output .safetensors")
    ex.set_defaults(func=cmd_export)

    tr = sub.add_parser("train", help="train any method from a config (resumable runs, validation, logs)",
                        description="Train a conditional DDPM or VE-SDE score model, SynDiff, or a UNet-CNN / pix2pix / "
                                    "WGAN-GP / CycleGAN baseline on <data>/<case>/{mr,ct[,mask]}.nii.gz. Settings come "
                                    "from the engine defaults, then --config (training/configs/<method>.yaml hold the "
                                    "papers' values), then --set KEY=VALUE, then the flags below. The run folder gets "
                                    "config.yaml, split.json (train/val/test by case), last.safetensors (resumable, "
                                    "written atomically every checkpoint_every steps), best.safetensors (best "
                                    "validation PSNR), model.safetensors (final EMA model), log.jsonl and tensorboard/. "
                                    "Multi-GPU: torchrun --nproc_per_node N training/train.py ... (batch size is per "
                                    "process). syndiff and cyclegan train on unpaired slices, and their training "
                                    "cases may hold only an MR or only a CT; --set model.options.paired=true trains "
                                    "SynDiff's supervised variant (SynDiff Sec. V-C) on registered pairs. The Lyu & "
                                    "Wang configs stop on a loss plateau (train.early_stop).",
                        epilog="Examples: mrtoct train --config training/configs/ddpm.yaml --data DIR --run-dir runs/ddpm; "
                               "after an interruption add --resume to the same command.")
    tr.add_argument("--config", help="YAML config (see training/configs/); relative paths in it are taken from its folder")
    tr.add_argument("--data", help="folder of case folders (SynthRAD layout, e.g. from `mrtoct phantom`)")
    tr.add_argument("--split", help="split file (JSON/YAML: train/val/test lists of case names); default: a random "
                                    "split by case (10%% val, 20%% test), saved as <run-dir>/split.json")
    tr.add_argument("--run-dir", help="run folder (default: <out>_run next to --out, else runs/<method>)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --run-dir from its last.safetensors (same weights, optimiser state, EMA "
                         "and data order as if never interrupted)")
    tr.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds a checkpoint")
    tr.add_argument("--out", help="also write the final model here (.safetensors)")
    tr.add_argument("--method", choices=TRAIN_METHODS, default=None,
                    help="ddpm (default), score_sde, syndiff (unpaired, 4-step adversarial diffusion), unet_cnn, "
                         "pix2pix, wgan_gp, cyclegan (unpaired)")
    tr.add_argument("--image-size", type=_positive_int("--image-size"), default=None, help="model grid (default 64)")
    tr.add_argument("--context", type=int, default=None, help="2.5D neighbour slices on each side (default 0)")
    tr.add_argument("--unet", choices=["tiny", "full"], default=None,
                    help="network size preset of all the method's networks (default tiny)")
    tr.add_argument("--steps", type=_positive_int("--steps"), default=None,
                    help="optimisation steps (default: train.epochs passes over the training slices)")
    tr.add_argument("--epochs", type=float, default=None, help="passes over the training slices (default 100) "
                                                                "when --steps is not given")
    tr.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None,
                    help="slices per step and process (default 2, Lyu & Wang)")
    tr.add_argument("--prediction", choices=["eps", "v"], default=None,
                    help="ddpm/score_sde network target: eps (the papers', default) or v = alpha eps - sigma x0 "
                         "(learns the high-noise regime much faster; the bundled demo model uses v)")
    tr.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate (default: the method's; 1e-4 for ddpm, score_sde, unet_cnn, wgan_gp (Lyu & "
                         "Wang) and syndiff (SynDiff), 2e-4 for pix2pix and cyclegan)")
    tr.add_argument("--disjoint-cases", action="store_true", default=None,
                    help="syndiff/cyclegan: take MR slices and CT slices from different cases (every other case)")
    tr.add_argument("--register", action="store_true", default=None,
                    help="register each case's MR to its CT first (rigid then affine; cached with the slices)")
    tr.add_argument("--no-cache", action="store_true",
                    help="do not cache preprocessed slices (default cache: $MRTOCT_CACHE or ~/.cache/mrtoct/slices)")
    tr.add_argument("--val-every", type=int, default=None, help="validate every N steps (default 500; 0 = never)")
    tr.add_argument("--checkpoint-every", type=_positive_int("--checkpoint-every"), default=None,
                    help="write last.safetensors every N steps (default 500)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override any config key, e.g. --set optim.grad_clip=0.5 --set model.options.l1_weight=50")
    tr.add_argument("--seed", type=int, default=None, help="seed of weights, data order and noise (default 0)")
    tr.add_argument("--device", default=None, help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    tr.set_defaults(func=cmd_train)

    de = sub.add_parser("demo", help="synthesise the bundled phantom case with the bundled model and write a figure",
                        description="Run synthesis with uncertainty on the bundled phantom case and bundled weights; "
                                    "write sCT, std, metrics JSON and a comparison PNG.")
    de.add_argument("--out", default="mrtoct_demo_output", help="output folder (default ./mrtoct_demo_output)")
    de.add_argument("--model", help="use this checkpoint instead of the bundled demo model (then only its rows run)")
    de.add_argument("--projections", type=int, default=23, metavar="N_p",
                    help="DDMM-Synth row: views of the bundled CT embedded with N-SMI (default 23; 0 = skip the row)")
    de.add_argument("--no-syndiff", action="store_true", help="skip the SynDiff row")
    add_synthesis_arguments(de)
    de.set_defaults(func=cmd_demo, samples=8)
