"""``mrtoct synthesize``: MRI volume -> synthetic CT (+ Monte-Carlo std), optionally pinned to sparse-view CT
measurements (DDMM-Synth). This is what the Slicer module runs in its subprocess.

The command checks every output path first, reads the MRI, loads the checkpoint (without pickle), calls the one
synthesis function :func:`...pipeline.synthesis.synthesize` and writes the sCT and std volumes (HU, the MRI's
exact geometry) atomically, only after the whole volume is done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...errors import InputError
from ..args import (check_output_file, check_volume_output, positive_int, progress_printer, same_file, seed,
                    sigterm_as_interrupt, write_json_output)

SAMPLER_CHOICES = ["ddpm", "ddim", "em", "pc", "ode", "dpmpp"]
SAMPLER_CHOICES += ["syndiff", "direct"]  # SynDiff's fixed T/k-step sampler; the one-call CNN/GAN baselines
#: pipeline.synthesis.COMPILE_MODES, repeated here so that building the parser does not import torch (a test checks)
COMPILE_CHOICES = ["default", "reduce-overhead", "max-autotune"]


def add_synthesis_arguments(p: argparse.ArgumentParser) -> None:
    """Sampling flags shared by ``synthesize`` and ``demo``."""
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="sampler (default: the model's, dpmpp = DPM-Solver++(2M)); ddpm = ancestral (Lyu Table I), "
                        "ddim, em = Euler-Maruyama, pc = predictor-corrector, ode = probability-flow RK45")
    p.add_argument("--steps", type=positive_int("--steps"), default=None,
                   help="sampling steps (default per sampler: ddpm 1000, ddim 100, em 1000, pc 500, dpmpp 5; "
                        "ode: maximum steps of the adaptive solver); at most 10000, and at most the model's T "
                        "(e.g. 1000) for ddpm and ddim")
    p.add_argument("--samples", type=positive_int("--samples"), default=1,
                   help="Monte-Carlo samples per slice, 1 to 10000; the sCT is their mean and --out-std their std "
                        "(default 1)")
    p.add_argument("--seed", type=seed(), default=0,
                   help="random seed, 0 to 2**62 (default 0); same seed + inputs + device = same sCT")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
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


def add_parser(sub) -> None:
    sy = sub.add_parser("synthesize", help="MRI volume -> synthetic CT (+ Monte-Carlo std) with a trained model",
                        description="Synthesise a CT in HU from an MRI volume, slice by slice, with a trained checkpoint. "
                                    "Outputs have exactly the MRI's geometry and are written only when complete.")
    sy.add_argument("--mri", required=True, help="input MRI volume (NIfTI/NRRD/MHA file or DICOM folder)")
    sy.add_argument("--model", required=True, help="trained checkpoint (.safetensors from `mrtoct train`)")
    sy.add_argument("--out-ct", required=True, help="output synthetic CT (HU), e.g. sct.nii.gz")
    sy.add_argument("--out-std", help="output per-voxel Monte-Carlo std (HU), e.g. sct_std.nii.gz")
    sy.add_argument("--info-json", help="also write the run details (sampler, NFE, timings) as JSON")
    sy.add_argument("--series-uid", action="append", metavar="UID",
                    help="for a DICOM folder (--mri or --ct) holding several series: read the series with this "
                         "SeriesInstanceUID (repeat the flag for several folders)")
    add_synthesis_arguments(sy)
    add_measurement_arguments(sy)
    sy.set_defaults(func=run)


def options_from_args(args):
    """The :class:`...pipeline.synthesis.SynthesisOptions` of parsed ``synthesize``/``demo`` arguments."""
    from ...pipeline.synthesis import SynthesisOptions

    compile_mode = getattr(args, "compile", None)
    return SynthesisOptions(sampler=args.sampler, steps=args.steps, samples=args.samples, seed=args.seed,
                            device=args.device, batch_size=args.batch_size, precision=args.precision,
                            channels_last=bool(getattr(args, "channels_last", False)), compile=compile_mode is not None,
                            compile_mode=compile_mode or "default", nsmi=getattr(args, "nsmi", None) or "auto")


def check_measurement_args(args) -> bool:
    """Validate the DDMM-Synth flags; True when measurements are embedded (--ct or --sinogram)."""
    from ...models.methods.ddmm_synth import check_noise_sigma, check_projections

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


def measurement_spec_from_args(args):
    """The :class:`...pipeline.measurements.MeasurementSpec` of ``--ct``/``--sinogram`` (the files are read here)."""
    from ...io.volume import read_volume
    from ...pipeline.measurements import MeasurementSpec

    sigma = 0.0 if args.noise_sigma is None else float(args.noise_sigma)
    if args.ct:
        return MeasurementSpec(ct=read_volume(args.ct, "reference CT", series_uid=getattr(args, "series_uid", None)),
                               projections=args.projections,
                               noise_sigma=sigma)
    return MeasurementSpec(sinogram=read_volume(args.sinogram, "sinogram"), projections=args.projections,
                           noise_sigma=sigma)


def check_distinct_outputs(args) -> None:
    """Refuse outputs that would overwrite each other or an input (the later write would silently win)."""
    inputs = {"--mri": args.mri, "--model": args.model, "--ct": getattr(args, "ct", None),
              "--sinogram": getattr(args, "sinogram", None)}
    outputs = {"--out-ct": args.out_ct, "--out-std": args.out_std, "--info-json": args.info_json,
               "--out-sinogram": getattr(args, "out_sinogram", None)}
    seen = {}
    for flag, path in outputs.items():
        if not path:
            continue
        for in_flag, in_path in inputs.items():
            if in_path and same_file(in_path, path):
                raise InputError(f"{flag} {path} is the input {in_flag}; writing it would destroy the input.",
                                 f"give {flag} another file name.")
        for other, other_flag in seen.items():
            if same_file(other, path):
                raise InputError(f"{other_flag} and {flag} are the same file ({path}); one would overwrite the other.",
                                 f"give {flag} another file name.")
        seen[path] = flag


def run(args) -> int:
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    import warnings

    from ...io.volume import Volume, make_geometry, read_volume, write_volume
    from ...models.methods import load_model
    from ...pipeline.synthesis import synthesize

    out_ct = check_volume_output(args.out_ct, "--out-ct")
    out_std = check_volume_output(args.out_std, "--out-std") if args.out_std else None
    options = options_from_args(args)
    options.validate()
    measured = check_measurement_args(args)
    out_sino = check_volume_output(args.out_sinogram, "--out-sinogram") if getattr(args, "out_sinogram", None) else None
    if args.info_json:
        check_output_file(Path(args.info_json), "--info-json")
    check_distinct_outputs(args)
    mri = read_volume(args.mri, "MRI", series_uid=getattr(args, "series_uid", None))
    model = load_model(args.model)
    model.make_sampler(options.sampler, options.steps)  # sampler and step bounds (e.g. steps <= T), before any work
    spec = measurement_spec_from_args(args) if measured else None
    sigterm_as_interrupt()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = synthesize(mri, model, options, measurements=spec, progress=progress_printer())
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    write_volume(result.sct, out_ct, what="--out-ct")
    if out_std:
        write_volume(result.std, out_std, what="--out-std")
    if measured and out_sino:
        arr = result.measurements.to_volume_array()
        write_volume(Volume(arr, make_geometry(arr.shape[::-1])), out_sino, what="--out-sinogram")
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
        write_json_output(Path(args.info_json), info)
    return 0
