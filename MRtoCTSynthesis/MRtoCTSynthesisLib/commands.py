"""The model-driving subcommands of ``mrtoct``: ``synthesize``, ``info``, ``train`` and ``demo``.

``synthesize`` is what the Slicer module runs in its subprocess: it reads the MRI, loads the checkpoint
(without pickle), runs :func:`.inference.synthesize_volume` and writes the sCT and std volumes (HU, the
MRI's exact geometry) atomically, only after the whole volume is done.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from .errors import InputError

ASSETS = Path(__file__).with_name("assets")
DEMO_CASE = ASSETS / "demo_case"
DEMO_MODEL = ASSETS / "demo_ddpm.safetensors"
SAMPLER_CHOICES = ["ddpm", "ddim", "em", "pc", "ode", "dpmpp"]
SAMPLER_CHOICES += ["syndiff", "direct"]  # SynDiff's fixed T/k-step sampler; the one-call CNN/GAN baselines
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
    from .volume import WRITE_SUFFIXES, _suffix

    p = Path(path)
    if _suffix(p) not in WRITE_SUFFIXES:
        raise InputError(f"{what} {p} has an unsupported suffix.", f"use one of {', '.join(WRITE_SUFFIXES)}.")
    if not p.parent.exists():
        raise InputError(f"the folder of {what} ({p.parent}) does not exist.", "create it first or choose another path.")
    return p


def _options_from_args(args):
    from .inference import SynthesisOptions

    return SynthesisOptions(sampler=args.sampler, steps=args.steps, samples=args.samples, seed=args.seed,
                            device=args.device, batch_size=args.batch_size, precision=args.precision)


# -------------------------------------------------------------------------------------------- synthesize
def cmd_synthesize(args) -> int:
    from .inference import synthesize_volume
    from .methods import load_model
    from .volume import read_volume, write_volume

    out_ct = _check_out(args.out_ct, "--out-ct")
    out_std = _check_out(args.out_std, "--out-std") if args.out_std else None
    options = _options_from_args(args)
    options.validate()
    measured = _check_measurement_args(args)
    out_sino = _check_out(args.out_sinogram, "--out-sinogram") if getattr(args, "out_sinogram", None) else None
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
        from .volume import Volume, make_geometry

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


def _check_measurement_args(args) -> bool:
    """Validate the DDMM-Synth flags; True when measurements are embedded (--ct or --sinogram)."""
    from .methods.ddmm_synth import check_noise_sigma, check_projections

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

    from .inference import resolve_device
    from .methods.ddmm_synth import (DEFAULT_PROJECTIONS, DDMMSynth, measurements_from_ct,
                                     measurements_from_sinogram, synthesize_with_measurements)
    from .volume import read_volume

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
    from .cli import _positive_int

    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="sampler (default: the model's, dpmpp = DPM-Solver++(2M)); ddpm = ancestral (Lyu Table I), "
                        "ddim, em = Euler-Maruyama, pc = predictor-corrector, ode = probability-flow RK45")
    p.add_argument("--steps", type=_positive_int("--steps"), default=None,
                   help="sampling steps (default per sampler: ddpm 1000, ddim 100, em 1000, pc 500, dpmpp 20; "
                        "ode: maximum steps of the adaptive solver)")
    p.add_argument("--samples", type=_positive_int("--samples"), default=1,
                   help="Monte-Carlo samples per slice; the sCT is their mean and --out-std their std (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed + inputs + device = same sCT")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None,
                   help="images per network call (default: automatic; halved on CUDA out-of-memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")


# -------------------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from .checkpoint import describe_checkpoint

    print(describe_checkpoint(args.model))
    return 0


def _training_progress(total_steps: int):
    """``progress(step, loss)`` printing a PROGRESS line about 20 times per run (and at the last step)."""
    t0 = time.perf_counter()

    def progress(step, loss):
        if step % max(1, total_steps // 20) == 0 or step == total_steps - 1:
            print(f"PROGRESS {(step + 1) / total_steps:.4f} step {step + 1}/{total_steps} loss {loss:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return progress


# ------------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    import torch

    from .data import SliceDataset, find_cases
    from .methods import create_model, save_model
    from .training import TrainSettings, train_diffusion

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out} must end in .safetensors.", "e.g. --out my_model.safetensors")
    if not out.parent.exists():
        raise InputError(f"the folder of --out ({out.parent}) does not exist.", "create it first.")
    torch.manual_seed(args.seed)
    folders = find_cases(args.data)
    options = {"prediction": args.prediction} if args.method in ("ddpm", "score_sde") else None
    model = create_model(args.method, args.image_size, args.context, unet=args.unet, options=options)
    if hasattr(model, "train_step"):  # syndiff and the CNN/GAN baselines: adversarial.train_adversarial
        return _train_with_steps(args, model, folders, out)
    data = SliceDataset.from_folders(folders, args.image_size, args.context)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                             lr=args.lr if args.lr is not None else 1e-4)
    print(f"training {args.method} on {len(data)} slices from {len(folders)} case(s), {settings.steps} steps")
    progress = _training_progress(settings.steps)

    hist = train_diffusion(model, data, settings, device=args.device if args.device != "auto" else "cpu",
                           progress=progress)
    training = {"settings": settings.to_dict(), "cases": [f.name for f in folders], "slices": len(data),
                "final_loss_mean_last_100": float(sum(hist["loss"][-100:]) / len(hist["loss"][-100:])),
                "seconds": hist["seconds"], "command": " ".join(sys.argv)}
    save_model(model, out, training=training, ema={"denoiser": hist["ema"]})
    print(f"saved {out} (final loss {training['final_loss_mean_last_100']:.4f}, {hist['seconds']:.0f} s)")
    return 0


def _train_with_steps(args, model, folders, out) -> int:
    """``mrtoct train`` for the methods with a ``train_step`` (SynDiff, UNet-CNN, pix2pix, WGAN-GP, CycleGAN)."""
    from .adversarial import AdversarialSettings, train_adversarial
    from .data import SliceDataset, UnpairedSliceDataset
    from .methods import save_model

    if model.unpaired:
        data = UnpairedSliceDataset.from_folders(folders, args.image_size, args.context,
                                                 disjoint_cases=args.disjoint_cases)
        what = f"{len(data.mr)} MR and {len(data.ct)} CT slices drawn independently (unpaired)"
    else:
        data = SliceDataset.from_folders(folders, args.image_size, args.context)
        what = f"{len(data)} paired slices"
    settings = AdversarialSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"training {args.method} on {what} from {len(folders)} case(s), {settings.steps} steps")
    progress = _training_progress(settings.steps)

    hist = train_adversarial(model, data, settings, device=args.device if args.device != "auto" else "cpu",
                             progress=progress)
    tail = {k: float(sum(v[-100:]) / len(v[-100:])) for k, v in hist["terms"].items()}
    training = {"settings": settings.to_dict(), "method_config": model.method_config,
                "cases": [f.name for f in folders], "unpaired": bool(model.unpaired),
                "slices": {"mr": len(data.mr), "ct": len(data.ct)},
                "final_loss_mean_last_100": tail["loss"], "final_terms_mean_last_100": tail,
                "seconds": hist["seconds"], "command": " ".join(sys.argv)}
    save_model(model, out, training=training, ema=hist["ema"])
    print(f"saved {out} (final loss {tail['loss']:.4f}, {hist['seconds']:.0f} s)")
    return 0


# -------------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from .figures import save_comparison_figure
    from .inference import synthesize_volume
    from .methods import load_model
    from .metrics import evaluate, format_table
    from .volume import read_volume, write_volume

    model_path = Path(args.model) if args.model else DEMO_MODEL
    if not model_path.exists():
        raise InputError(f"the demo model {model_path} is missing.",
                         "reinstall the package (`bash scripts/setup.sh`), or pass --model YOUR.safetensors.")
    if not (DEMO_CASE / "mr.nii.gz").exists():
        raise InputError(f"the bundled demo case {DEMO_CASE} is missing.", "reinstall the package (`bash scripts/setup.sh`).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mri = read_volume(DEMO_CASE / "mr.nii.gz", "demo MRI")
    ref = read_volume(DEMO_CASE / "ct.nii.gz", "demo CT")
    mask = read_volume(DEMO_CASE / "mask.nii.gz", "demo mask")
    model = load_model(model_path)
    options = _options_from_args(args)
    print(f"demo: {model.method} model {model_path.name}, {options.sampler or model.default_sampler} sampler, "
          f"{options.samples} Monte-Carlo samples per slice, on the bundled phantom case ({mri.geometry.describe()})")
    _sigterm_as_interrupt()
    result = synthesize_volume(mri, model, options, progress=_progress_printer())
    write_volume(result.sct, out / "sct.nii.gz")
    write_volume(result.std, out / "sct_std.nii.gz")
    metrics = evaluate(result.sct, ref, mask)
    body = mask.array > 0
    metrics["mean_std_hu"] = float(result.std.array[body].mean())
    summary = {k: v for k, v in metrics.items() if k != "per_slice"}
    from .cli import _write_json_atomic

    _write_json_atomic(out / "metrics.json", {"metrics": metrics, "run": result.info, "model": str(model_path)})
    fig = save_comparison_figure(out / "comparison.png", mri, result.sct, result.std, ref, mask, metrics,
                                 title=f"MRtoCTSynthesis demo: {model.method} + {result.info['sampler']} "
                                       f"({result.info['steps']} steps), {options.samples} MC samples")
    print(format_table([{"case": "demo phantom", **{k: summary[k] for k in ("mae_hu", "me_hu", "psnr_db", "ssim", "mean_std_hu")},
                         "s_per_slice": round(result.info["seconds_per_slice"], 3)}]))
    print(f"\nwrote to {out.resolve()}:")
    for name, what in [("sct.nii.gz", "synthetic CT (HU)"), ("sct_std.nii.gz", "per-voxel uncertainty (MC std, HU)"),
                       ("metrics.json", "metrics vs the phantom's CT, and run details"),
                       (fig.name, "figure: MRI | CT | sCT | error | uncertainty")]:
        print(f"  {name:16s} {what}")
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

    tr = sub.add_parser("train", help="train a synthesis model (diffusion, SynDiff or a CNN/GAN baseline) (engine loop)",
                        description="Train a conditional DDPM or VE-SDE score model, SynDiff, or a UNet-CNN / pix2pix / "
                                    "WGAN-GP / CycleGAN baseline on <data>/<case>/{mr,ct[,mask]}.nii.gz "
                                    "and write a self-describing checkpoint with EMA weights. syndiff and cyclegan "
                                    "train on unpaired slices (MR and CT drawn independently). This is the engine's "
                                    "single-process loop; training/ holds the full toolkit.")
    tr.add_argument("--data", required=True, help="folder of case folders (SynthRAD layout, e.g. from `mrtoct phantom`)")
    tr.add_argument("--method", choices=TRAIN_METHODS, default="ddpm",
                    help="ddpm (default), score_sde, syndiff (unpaired, 4-step adversarial diffusion), unet_cnn, "
                         "pix2pix, wgan_gp, cyclegan (unpaired)")
    tr.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    tr.add_argument("--image-size", type=_positive_int("--image-size"), default=64, help="model grid (default 64)")
    tr.add_argument("--context", type=int, default=0, help="2.5D neighbour slices on each side (default 0)")
    tr.add_argument("--unet", choices=["tiny", "full"], default="tiny",
                    help="network size preset of all the method's networks (default tiny)")
    tr.add_argument("--steps", type=_positive_int("--steps"), default=2000)
    tr.add_argument("--batch-size", type=_positive_int("--batch-size"), default=16)
    tr.add_argument("--prediction", choices=["eps", "v"], default="eps",
                    help="ddpm/score_sde network target: eps (the papers', default) or v = alpha eps - sigma x0 "
                         "(learns the high-noise regime much faster; the bundled demo model uses v)")
    tr.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate (default: the method's; 1e-4 for ddpm, score_sde, unet_cnn, wgan_gp (Lyu & "
                         "Wang) and syndiff (SynDiff), 2e-4 for pix2pix and cyclegan)")
    tr.add_argument("--disjoint-cases", action="store_true",
                    help="syndiff/cyclegan: take MR slices and CT slices from different cases (every other case)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.set_defaults(func=cmd_train)

    de = sub.add_parser("demo", help="synthesise the bundled phantom case with the bundled model and write a figure",
                        description="Run synthesis with uncertainty on the bundled phantom case and bundled weights; "
                                    "write sCT, std, metrics JSON and a comparison PNG.")
    de.add_argument("--out", default="mrtoct_demo_output", help="output folder (default ./mrtoct_demo_output)")
    de.add_argument("--model", help="use this checkpoint instead of the bundled demo model")
    add_synthesis_arguments(de)
    de.set_defaults(func=cmd_demo, samples=8)
