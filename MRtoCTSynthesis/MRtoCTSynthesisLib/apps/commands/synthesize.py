"""``mrtoct synthesize``: MRI volume -> synthetic CT (+ Monte-Carlo std), optionally pinned to sparse-view CT
measurements (DDMM-Synth). This is what the Slicer module runs in its subprocess.

The command checks every output path first, reads the MRI, loads the checkpoint (without pickle), calls the one
synthesis function :func:`...pipeline.synthesis.synthesize` and writes the sCT and std volumes (HU, the MRI's
exact geometry) atomically, only after the whole volume is done.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ...errors import InputError
from ...names import COMPILE_MODES, SAMPLER_CHOICES
from ..args import (
    FIX_SEP,
    check_output_file,
    check_volume_output,
    positive_int,
    progress_printer,
    same_file,
    seed,
    sigterm_as_interrupt,
    write_json_output,
)

#: from the torch-free names module (Testing/test_names.py checks them against the registries)
SAMPLER_CHOICES = list(SAMPLER_CHOICES)
COMPILE_CHOICES = list(COMPILE_MODES)


def add_synthesis_arguments(p: argparse.ArgumentParser) -> None:
    """Sampling flags shared by ``synthesize`` and ``demo``."""
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="sampler (default: the model's, dpmpp = DPM-Solver++(2M)); ddpm = ancestral (Lyu Table I), "
                        "ddim, em = Euler-Maruyama, pc = predictor-corrector, ode = probability-flow RK45")
    p.add_argument("--steps", type=positive_int("--steps"), default=None,
                   help="sampling steps (default per sampler: ddpm 1000, ddim 100, em 1000, pc 500, dpmpp 5, or "
                        "dpmpp 20 with --samples > 1, where 5 steps would make the uncertainty map too small; "
                        "ode: maximum steps of the adaptive solver); at most 10000, and at most the model's T "
                        "(e.g. 1000) for ddpm and ddim")
    p.add_argument("--samples", type=positive_int("--samples"), default=None,
                   help="Monte-Carlo samples per slice, 1 to 10000; the sCT is their mean and --out-std their std "
                        "(default 1)")
    p.add_argument("--seed", type=seed(), default=None,
                   help="random seed, 0 to 2**62 (default 0); same seed + inputs + device = same sCT")
    p.add_argument("--device", default=None, help="auto (CUDA if available; the default), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="images per network call (default: automatic; halved on CUDA out-of-memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="auto (default) = bf16 autocast on CUDA, fp32 on CPU; bf16 on a CPU = bf16 autocast there "
                        "(~2x faster network calls on CPUs with native bf16, e.g. AVX512-BF16/AMX)")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="NHWC memory layout for weights and inputs (faster convolutions on recent GPUs under "
                        "bf16/fp16; no gain on CPU). Off by default")
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_CHOICES, metavar="MODE",
                   help="torch.compile the networks (MODE: default, reduce-overhead = CUDA graphs, max-autotune). "
                        "Compiling takes minutes and pays only for long runs on a GPU; on the 2-core CPU we measured "
                        "it slower (benchmarks/README.md). Off by default")
    p.add_argument("--backend", choices=["torch", "onnx"], default=None,
                   help="how the diffusion denoiser runs: torch (default) or onnx = ONNX Runtime on the CPU (needs "
                        "pip install 'onnxruntime==1.31.1' 'onnx==1.23.2', the 'onnx' extra; exported once per "
                        "checkpoint into ~/.cache/mrtoct/onnx, same sCT to float rounding). Opt-in: see "
                        "benchmarks/README.md for its measured speed on a CPU")


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
                        "views 180*a/N_p degrees unless --angles says otherwise, bins one model-grid pixel apart "
                        "unless --detector-spacing says otherwise (any number of bins, centre bin n_det//2 through "
                        "the grid centre), values = line integrals of the CT in model units [-1, 1] x model-grid "
                        "pixel lengths (what --out-sinogram writes)")
    g.add_argument("--angles", metavar="DEGREES",
                   help="with --sinogram: the view angles in degrees, comma-separated in the file's view order, or "
                        "a text file with one angle per line (default: uniform over [0, 180))")
    g.add_argument("--detector-spacing", type=float, default=None, metavar="MM",
                   help="with --sinogram: distance between neighbouring detector bins in mm (default: one pixel of "
                        "the model grid, whose size the run info reports as model_pixel_mm)")
    g.add_argument("--projections", type=int, default=None, metavar="N_p",
                   help="number of views, uniform over [0, 180) degrees (default 23 with --ct; read from the file "
                        "with --sinogram)")
    g.add_argument("--noise-sigma", type=float, default=None, metavar="SIGMA",
                   help="measurement noise: standard deviation per detector bin, in the sinogram's units (model "
                        "units x pixel lengths; a ray across a 64-pixel grid of water measures about -32). With --ct "
                        "Gaussian noise of this size is added (seeded by --seed); with --sinogram it states the "
                        "noise already in the file; without it the noise is estimated from the file (the part of "
                        "the data no image can produce: the views' consistency conditions) and reported. Default 0 "
                        "with --ct. The image-domain sigma_n of DDMM-Synth Eqs. 8-13 is "
                        "this times the exact pseudo-inverse's noise gain (about 55 for 23 views at 64x64) and is "
                        "reported in the run info")
    g.add_argument("--nsmi", choices=["auto", "noiseless", "noisy"], default=None,
                   help="N-SMI block: noiseless (DDMM-Synth Eq. 5, exact pseudo-inverse), noisy (DDMM-Synth-noise, "
                        "Eqs. 7-13 as the paper writes them; needs --sampler ddim or ddpm) or auto (default): "
                        "noiseless when --noise-sigma is 0, otherwise the noisy block with a Wiener-filtered "
                        "pseudo-inverse that keeps only what rises above the stated noise, or the MRI alone "
                        "when nothing does")
    g.add_argument("--out-sinogram", metavar="FILE",
                   help="also write the simulated measurements (with --ct) in the --sinogram layout")


#: (flag, attribute) of the flags that choose how a run samples: with --from-record the record chooses them
RUN_FLAGS = (("--sampler", "sampler"), ("--steps", "steps"), ("--samples", "samples"), ("--seed", "seed"),
             ("--device", "device"), ("--batch-size", "batch_size"), ("--precision", "precision"),
             ("--channels-last", "channels_last"), ("--compile", "compile"), ("--projections", "projections"),
             ("--noise-sigma", "noise_sigma"), ("--nsmi", "nsmi"), ("--angles", "angles"),
             ("--detector-spacing", "detector_spacing"), ("--backend", "backend"))
#: version of the run record ``--info-json`` writes (``--from-record`` reads it)
RECORD_FORMAT = "mrtoct-synthesis-run/1"


def add_parser(sub) -> None:
    sy = sub.add_parser("synthesize", help="MRI volume -> synthetic CT (+ Monte-Carlo std) with a trained model",
                        description="Synthesise a CT in HU from an MRI volume, slice by slice, with a trained "
                                    "checkpoint. "
                                    "Outputs have exactly the MRI's geometry and are written only when complete.")
    sy.add_argument("--mri", help="input MRI volume (NIfTI/NRRD/MHA file or DICOM folder); required unless "
                                  "--from-record names it")
    sy.add_argument("--model", help="trained checkpoint (.safetensors from `mrtoct train`); required unless "
                                    "--from-record names it")
    sy.add_argument("--out-ct", help="output synthetic CT (HU), e.g. sct.nii.gz; a folder name ending in / (or an "
                                     "existing empty folder) writes a DICOM CT series there, like --dicom-out")
    sy.add_argument("--out-std", help="output per-voxel Monte-Carlo std (HU), e.g. sct_std.nii.gz")
    sy.add_argument("--info-json", help="also write the run record as JSON: sampler with all its options, seed, "
                                        "inputs with their SHA-256, NFE, timings (--from-record rebuilds the run)")
    sy.add_argument("--series-uid", action="append", metavar="UID",
                    help="for a DICOM folder (--mri or --ct) holding several series: read the series with this "
                         "SeriesInstanceUID (repeat the flag for several folders)")
    sy.add_argument("--from-record", metavar="INFO_JSON",
                    help="rebuild a run from the record --info-json wrote: the same sampler and options, seed, batch "
                         "size, device, precision and CPU thread count, and the recorded --mri/--model/--ct/--sinogram "
                         "unless given (a different file is used with a warning). Sampling flags may not be given with "
                         "it. On CPU with the same torch the sCT is bit-identical")
    g = sy.add_argument_group(
        "DICOM output (treatment planning)",
        "Write the sCT as a DICOM CT series (CT Image Storage, HU via RescaleSlope/Intercept, the MRI's geometry in "
        "LPS, ImageType DERIVED\\SECONDARY\\AXIAL, SyntheticData YES, 'synthetic' in the series description). "
        "When --mri is a DICOM folder, the sCT joins the MRI's patient, study and frame of reference; otherwise a "
        "new patient ID, study and frame of reference are made (and said).")
    g.add_argument("--dicom-out", metavar="DIR", help="new (or empty) folder for the DICOM series")
    g.add_argument("--dicom-std", action="store_true",
                   help="also write the Monte-Carlo std map (HU, 0.1 HU steps) as a second series of the same study")
    g.add_argument("--dicom-patient-id", metavar="ID",
                   help="patient ID when the MRI is not DICOM (default: a new MRTOCT-... ID)")
    g.add_argument("--dicom-patient-name", metavar="NAME", default="",
                   help="patient name (DICOM PN, e.g. Doe^Jane) when the MRI is not DICOM (default: empty)")
    add_synthesis_arguments(sy)
    add_measurement_arguments(sy)
    sy.set_defaults(func=run, command_parser=sy)


def options_from_args(args):
    """The :class:`...pipeline.synthesis.SynthesisOptions` of parsed ``synthesize``/``demo`` arguments (flags that
    were not given take the defaults: 1 sample, seed 0, device and precision auto)."""
    from ...pipeline.synthesis import SynthesisOptions

    compile_mode = getattr(args, "compile", None)
    return SynthesisOptions(sampler=args.sampler, steps=args.steps,
                            samples=1 if args.samples is None else args.samples,
                            seed=0 if args.seed is None else args.seed, device=args.device or "auto",
                            batch_size=args.batch_size, precision=args.precision or "auto",
                            channels_last=bool(getattr(args, "channels_last", False)), compile=compile_mode is not None,
                            compile_mode=compile_mode or "default", nsmi=getattr(args, "nsmi", None) or "auto",
                            backend=getattr(args, "backend", None) or "torch")


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
                                      ("--out-sinogram", getattr(args, "out_sinogram", None)),
                                      ("--angles", getattr(args, "angles", None)),
                                      ("--detector-spacing", getattr(args, "detector_spacing", None)))
             if value is not None]
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
    if ct and (getattr(args, "angles", None) is not None or getattr(args, "detector_spacing", None) is not None):
        raise InputError("--angles and --detector-spacing describe a measured sinogram (--sinogram); with --ct the "
                         "views are simulated uniformly over 180 degrees.", "drop them, or use --sinogram.")
    return True


def parse_angles(text):
    """``--angles``: comma-separated degrees, or a text file with one angle per line; None stays None."""
    if text is None:
        return None
    source = text
    path = Path(text)
    if "," not in text and path.is_file():
        if path.stat().st_size > 1_000_000:
            raise InputError(f"the --angles file {text} is larger than 1 MB.", "give one angle per line.")
        source = ",".join(line.strip() for line in path.read_text().splitlines() if line.strip())
    try:
        angles = [float(v) for v in source.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--angles {text!r} is not a list of numbers (or a file of them).",
                         "give degrees like 0,7.8,15.6 or a text file with one angle per line.") from None
    if not angles or len(angles) > 1800 or not all(math.isfinite(a) for a in angles):
        raise InputError(f"--angles must give 1 to 1800 finite angles, got {len(angles)}.",
                         "give one angle in degrees per view of the sinogram file.")
    return angles


def measurement_spec_from_args(args):
    """The :class:`...pipeline.measurements.MeasurementSpec` of ``--ct``/``--sinogram`` (the files are read here)."""
    from ...io.volume import read_volume
    from ...pipeline.measurements import MeasurementSpec

    if args.ct:
        sigma = 0.0 if args.noise_sigma is None else float(args.noise_sigma)
        return MeasurementSpec(ct=read_volume(args.ct, "reference CT", series_uid=getattr(args, "series_uid", None)),
                               projections=args.projections, noise_sigma=sigma)
    sigma = None if args.noise_sigma is None else float(args.noise_sigma)  # None: estimated from the file
    return MeasurementSpec(sinogram=read_volume(args.sinogram, "sinogram"), projections=args.projections,
                           noise_sigma=sigma, angles_deg=parse_angles(getattr(args, "angles", None)),
                           detector_spacing_mm=getattr(args, "detector_spacing", None))


def check_distinct_outputs(args) -> None:
    """Refuse outputs that would overwrite each other or an input (the later write would silently win)."""
    inputs = {"--mri": args.mri, "--model": args.model, "--ct": getattr(args, "ct", None),
              "--sinogram": getattr(args, "sinogram", None), "--from-record": getattr(args, "from_record", None)}
    outputs = {"--out-ct": args.out_ct, "--out-std": args.out_std, "--info-json": args.info_json,
               "--out-sinogram": getattr(args, "out_sinogram", None), "--dicom-out": getattr(args, "dicom_out", None)}
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


# ============================================================================================ run records
def file_digest(path) -> str:
    """SHA-256 of a file, or of a folder's files (a DICOM series): their names and contents in name order."""
    import hashlib

    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def report_input_check(info: dict) -> None:
    """The input check (pipeline.input_check) and the std's calibration in the terminal: a warning on stderr when the
    MRI is out of the training distribution, one line on stdout otherwise."""
    from ...pipeline.input_check import describe
    from ..args import detail

    check = info.get("input_check") or {}
    if check.get("in_distribution") is False:
        print(f"warning: {describe(check)}", file=sys.stderr, flush=True)
    elif check:
        print(describe(check))
    unc = info.get("uncertainty") or {}
    if info.get("samples", 1) > 1 and unc.get("note"):
        if not unc.get("is_uncertainty", True):
            print(f"note: {unc['note']}")
        else:
            detail(f"uncertainty: {unc['note']}")


def run_record(args, info: dict) -> dict:
    """What ``--info-json`` writes: the run's info (sampler config, options, NFE, timings...) plus its inputs with
    their SHA-256 and the measurement flags, so that ``--from-record`` can rebuild the run."""
    from ... import __version__

    inputs = {}
    for name in ("mri", "model", "ct", "sinogram"):
        path = getattr(args, name, None)
        if path:
            inputs[name] = {"path": str(Path(path).resolve()), "sha256": file_digest(path)}
    record = {"format": RECORD_FORMAT, "engine_version": __version__, **info, "inputs": inputs}
    if inputs.get("ct") or inputs.get("sinogram"):
        record["measurement_options"] = {"projections": args.projections, "noise_sigma": args.noise_sigma,
                                         "nsmi": args.nsmi, "angles": getattr(args, "angles", None),
                                         "detector_spacing": getattr(args, "detector_spacing", None)}
    return record


def load_record(path) -> dict:
    """Read a run record (``--info-json`` of an earlier run); :class:`InputError` if it is not one."""
    import json

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--from-record {p} does not exist.",
                         "give the JSON file an earlier run wrote with --info-json.")
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--from-record {p} is not readable JSON ({exc}).",
                         "give the JSON file an earlier run wrote with --info-json.") from None
    missing = [k for k in ("sampler_config", "options", "samples", "seed", "batch_size", "inputs")
               if not isinstance(record, dict) or k not in record]
    if missing:
        raise InputError(f"--from-record {p} is not a run record of this engine version (no {', '.join(missing)}).",
                         "use the --info-json of a run made with this version of mrtoct.")
    return record


def options_from_record(args, record: dict):
    """Fill ``args`` (inputs, measurement flags) from ``record`` and return its :class:`SynthesisOptions`.

    Refuses sampling flags given together with the record (they would silently change the run)."""
    from ...pipeline.synthesis import SynthesisOptions

    given = [flag for flag, attr in RUN_FLAGS if getattr(args, attr, None) is not None]
    if given:
        raise InputError(f"{', '.join(given)} cannot be combined with --from-record: the record fixes how the run "
                         "samples.", f"drop {', '.join(given)} (or drop --from-record and give the flags you want).")
    for name in ("mri", "model", "ct", "sinogram"):
        entry = record["inputs"].get(name)
        if getattr(args, name, None) is None and entry:
            setattr(args, name, entry["path"])
    meas = record.get("measurement_options") or {}
    args.projections, args.noise_sigma, args.nsmi = meas.get("projections"), meas.get("noise_sigma"), meas.get("nsmi")
    args.angles, args.detector_spacing = meas.get("angles"), meas.get("detector_spacing")
    cfg, opts = record["sampler_config"], record["options"]
    try:
        return SynthesisOptions(
            sampler=cfg["name"], steps=int(cfg["steps"]),
            sampler_options={k: v for k, v in cfg.items() if k not in ("name", "steps", "process")},
            samples=int(record["samples"]), seed=int(record["seed"]), device=str(opts["device"]),
            batch_size=int(record["batch_size"]), precision=str(opts["precision"]),
            channels_last=bool(opts["channels_last"]), compile=bool(opts["compile"]),
            compile_mode=str(opts["compile_mode"]), nsmi=str(opts["nsmi"]), backend=str(opts.get("backend", "torch")))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"--from-record: the record's sampler or options are incomplete ({exc!r}).",
                         "use the --info-json of a run made with this version of mrtoct.") from None


def check_record_inputs(args, record: dict) -> None:
    """Warn where the files, torch or thread count differ from the record (the run then is not the recorded one);
    on CPU, use the recorded thread count (it is part of the bit-exact recipe)."""
    import torch

    for name in ("mri", "model", "ct", "sinogram"):
        entry, path = record["inputs"].get(name), getattr(args, name, None)
        if entry and path and file_digest(path) != entry.get("sha256"):
            print(f"warning: --{name} {path} is not the recorded file (SHA-256 differs from {entry['path']}): this "
                  "run applies the recorded settings to other data", file=sys.stderr)
    if record.get("torch") and record["torch"] != torch.__version__:
        print(f"warning: the record was made with torch {record['torch']}, this is {torch.__version__}: the sCT may "
              "differ in the last bits", file=sys.stderr)
    threads = record.get("threads")
    if str(record.get("device", "")).startswith("cpu") and isinstance(threads, int) and threads >= 1 \
            and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        print(f"note: using {threads} CPU thread(s) as recorded (the thread count changes the last bits)",
              file=sys.stderr)


# ============================================================================================ the command
def output_targets(args) -> tuple[Path | None, Path | None]:
    """(volume file, DICOM folder) the sCT goes to; ``--out-ct DIR/`` (or an existing folder) means DICOM."""
    out_ct, dicom = args.out_ct, getattr(args, "dicom_out", None)
    if out_ct and (out_ct.endswith(("/", os.sep)) or Path(out_ct).is_dir()):
        if dicom:
            raise InputError(f"--out-ct {out_ct} names a folder (DICOM output) and --dicom-out is given too.",
                             "use one of them for the DICOM series, or give --out-ct a file name such as sct.nii.gz.")
        out_ct, dicom = None, out_ct
        args.out_ct, args.dicom_out = None, dicom
    if not out_ct and not dicom:
        raise InputError("the following arguments are required: --out-ct (or --dicom-out).",
                         "add --out-ct sct.nii.gz and/or --dicom-out DICOM_FOLDER.")
    if not dicom:
        extra = [f for f, v in (("--dicom-std", args.dicom_std), ("--dicom-patient-id", args.dicom_patient_id),
                                ("--dicom-patient-name", args.dicom_patient_name)) if v]
        if extra:
            raise InputError(f"{', '.join(extra)} only apply to DICOM output.", "add --dicom-out DIR or drop them.")
    return (Path(out_ct) if out_ct else None), (Path(dicom) if dicom else None)


def dicom_reference_for(args):
    """The patient/study/frame of reference of the DICOM sCT: the MRI's when it is a DICOM folder, else new."""
    from ...io.dicom import new_reference, read_dicom_reference

    if Path(args.mri).is_dir():
        if args.dicom_patient_id or args.dicom_patient_name:
            raise InputError("--dicom-patient-id/--dicom-patient-name are for an MRI that is not DICOM; this sCT "
                             "takes the patient of the MRI's DICOM series.", "drop them.")
        return read_dicom_reference(args.mri)
    return new_reference(args.dicom_patient_id, args.dicom_patient_name)


def run(args) -> int:
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    import dataclasses
    import json
    import warnings

    from ...io.volume import Volume, make_geometry, read_volume, write_volume
    from ...models.methods import load_model
    from ...pipeline.synthesis import synthesize
    from ..args import detail

    record = load_record(args.from_record) if args.from_record else None
    options = options_from_record(args, record) if record else options_from_args(args)
    missing = [flag for flag, value in (("--mri", args.mri), ("--model", args.model)) if not value]
    if not (args.out_ct or args.dicom_out):
        missing.append("--out-ct (or --dicom-out)")
    if missing:  # what argparse says for required arguments (it cannot require them: --from-record may give them)
        problem = f"the following arguments are required: {', '.join(missing)}"
        fix = "give them (--mri and --model may also come from a run record: --from-record RECORD.json)."
        parser = getattr(args, "command_parser", None)
        if parser is not None:
            parser.error(problem + FIX_SEP + fix)  # usage + error + Fix, exit status 2, like any argparse error
        raise InputError(problem + ".", fix)
    out_ct, dicom_out = output_targets(args)
    if out_ct:
        out_ct = check_volume_output(out_ct, "--out-ct")
    if dicom_out:
        from ...io.dicom import check_dicom_output

        check_dicom_output(dicom_out)
    out_std = check_volume_output(args.out_std, "--out-std") if args.out_std else None
    options.validate()
    measured = check_measurement_args(args)
    out_sino = check_volume_output(args.out_sinogram, "--out-sinogram") if getattr(args, "out_sinogram", None) else None
    if args.info_json:
        check_output_file(Path(args.info_json), "--info-json")
    check_distinct_outputs(args)
    if record:
        check_record_inputs(args, record)
    mri = read_volume(args.mri, "MRI", series_uid=getattr(args, "series_uid", None))
    reference = dicom_reference_for(args) if dicom_out else None
    model = load_model(args.model)
    # sampler and step bounds (e.g. steps <= T), before any work
    model.make_sampler(options.sampler, model.steps_for(options.sampler, options.steps, options.samples))
    spec = measurement_spec_from_args(args) if measured else None
    detail(f"MRI {args.mri}: {mri.geometry.describe()}")
    detail(f"options: {json.dumps(dataclasses.asdict(options))}")
    sigterm_as_interrupt()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = synthesize(mri, model, options, measurements=spec, progress=progress_printer(desc="synthesis"))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    info = result.info
    if out_ct:
        write_volume(result.sct, out_ct, what="--out-ct")
    if out_std:
        write_volume(result.std, out_std, what="--out-std")
    if measured and out_sino:
        arr = result.measurements.to_volume_array()
        write_volume(Volume(arr, make_geometry(arr.shape[::-1])), out_sino, what="--out-sinogram")
    if dicom_out:
        from ...io.dicom import export_dicom

        how = (f"{info['method']}, {info['sampler']} {info['steps']} steps, mean of {info['samples']} sample(s), "
               f"seed {info['seed']}")
        export_dicom(result.sct, dicom_out, reference, std=result.std if args.dicom_std else None, derivation=how)
    print("\n".join(line for line in (
        f"synthetic CT: {out_ct}" if out_ct else "",
        f"uncertainty (MC std, HU): {out_std}" if out_std else "",
        f"sinograms (slices, views, bins): {out_sino}" if measured and out_sino else "",
        f"DICOM CT series{' + std series' if args.dicom_std else ''}: {dicom_out}/ ({mri.shape[0]} slices; "
        f"{reference.note})" if dicom_out else "") if line))
    print(f"{info['method']} / {info['sampler']} {info['steps']} steps, {info['samples']} sample(s), "
          f"{info['slices']} slices in {info['seconds']:.1f} s on {info['device']}")
    detail(f"sampler config: {json.dumps(info['sampler_config'])}")
    report_input_check(info)
    if measured:
        m = info["measurements"]
        print(f"N-SMI {m['nsmi']}: {m['n_projections']} views, noise sigma {m['noise_sigma']:g} per bin "
              f"(image-domain sigma_n {m['sigma_n_image']:.3g}), measurements from {m['source']}")
    if args.info_json:
        write_json_output(Path(args.info_json), run_record(args, info))
    return 0
