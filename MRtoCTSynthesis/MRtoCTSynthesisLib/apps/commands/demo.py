"""``mrtoct demo``: the README's main job -- the bundled phantom case through the bundled models, with
uncertainty, metrics and one comparison figure."""

from __future__ import annotations

from pathlib import Path

from ...assets import DEMO_CASE, DEMO_MODEL, DEMO_SYNDIFF
from ...errors import InputError
from ..args import check_output_dir, progress_printer, sigterm_as_interrupt, write_json_output
from .synthesize import add_synthesis_arguments, options_from_args, report_input_check


def add_parser(sub) -> None:
    de = sub.add_parser("demo", help="synthesise the bundled phantom case with the bundled model and write a figure",
                        description="Run synthesis with uncertainty on the bundled phantom case and bundled weights; "
                                    "write sCT, std, metrics JSON and a comparison PNG.")
    de.add_argument("--out", default="mrtoct_demo_output", help="output folder (default ./mrtoct_demo_output)")
    de.add_argument("--model", help="use this checkpoint instead of the bundled demo model (then only its rows run)")
    de.add_argument("--projections", type=int, default=23, metavar="N_p",
                    help="DDMM-Synth row: views of the bundled CT embedded with N-SMI (default 23; 0 = skip the row)")
    de.add_argument("--no-syndiff", action="store_true", help="skip the SynDiff row")
    de.add_argument("--dicom", action="store_true",
                    help="also write the first row's sCT and std map as DICOM CT series into <out>/dicom/ (a new "
                         "patient ID, study and frame of reference: the bundled MRI is not DICOM)")
    add_synthesis_arguments(de)
    de.set_defaults(func=run, samples=8)


def run(args) -> int:
    """The README's main job: the bundled case through the bundled models, one figure, one metrics file.

    Rows: the conditional DDPM from the MRI alone (its sCT and std are sct.nii.gz / sct_std.nii.gz);
    DDMM-Synth, the same model pinned to ``--projections`` simulated views of the bundled CT (N-SMI,
    noiseless); SynDiff (when its bundled model is present; the label says whether it was trained on pairs,
    SynDiff Sec. V-C, or unpaired). All use ``--samples`` Monte-Carlo samples
    (DDMM-Synth half as many: the measurements leave little to vary).
    """
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    import dataclasses

    import numpy as np

    from ...io.slicing import canonical_layout, to_canonical
    from ...io.volume import read_volume, write_volume
    from ...models.methods import load_model
    from ...models.methods.ddmm_synth import check_projections
    from ...pipeline.measurements import MeasurementSpec
    from ...pipeline.metrics import evaluate, format_table
    from ...pipeline.synthesis import synthesize
    from ..evaluation import central_body_slice, highest_error_roi
    from ..figures import save_method_grid_figure

    model_path = Path(args.model) if args.model else DEMO_MODEL
    if not model_path.exists():
        raise InputError(f"the demo model {model_path} is missing.",
                         "reinstall the package (`bash scripts/setup.sh`), or pass --model YOUR.safetensors.")
    if not (DEMO_CASE / "mr.nii.gz").exists():
        raise InputError(f"the bundled demo case {DEMO_CASE} is missing.",
                         "reinstall the package (`bash scripts/setup.sh`).")
    if args.projections:
        check_projections(args.projections)
    out = check_output_dir(Path(args.out), "--out")  # writable, checked before any work
    out.mkdir(parents=True, exist_ok=True)
    if args.dicom:
        from ...io.dicom import check_dicom_output

        check_dicom_output(out / "dicom", "the demo's DICOM folder")
    mri = read_volume(DEMO_CASE / "mr.nii.gz", "demo MRI")
    ref = read_volume(DEMO_CASE / "ct.nii.gz", "demo CT")
    mask = read_volume(DEMO_CASE / "mask.nii.gz", "demo mask")
    model = load_model(model_path)
    options = options_from_args(args)
    print(f"demo: {model.method} model {model_path.name} on the bundled phantom case ({mri.geometry.describe()}), "
          f"{options.samples} Monte-Carlo samples per slice")
    sigterm_as_interrupt()
    body = mask.array > 0
    runs = []  # (key, label, result)

    def add_row(key, label, fn):
        print(f"-- {label}", flush=True)
        result = fn()
        metrics = evaluate(result.sct, ref, mask)
        metrics["mean_std_hu"] = float(result.std.array[body].mean())
        runs.append((key, label, result, metrics))

    # resolves the defaults (for K > 1 samples too), for the labels
    sampler = model.make_sampler(options.sampler, model.steps_for(options.sampler, options.steps, options.samples))
    add_row("main", f"{model.method} + {sampler.name} {sampler.steps} steps",
            lambda: synthesize(mri, model, options, progress=progress_printer(desc="demo")))
    if args.projections and model.method == "ddpm":
        # the sampler of the main row (N-SMI noiseless works with dpmpp), half the samples
        dd_opts = dataclasses.replace(options, samples=max(1, options.samples // 2),
                                      sampler=sampler.name, steps=sampler.steps, nsmi="noiseless")
        views = MeasurementSpec(ct=ref, projections=args.projections)
        add_row("ddmm_synth", f"DDMM-Synth, {args.projections} CT views",
                lambda: synthesize(mri, model, dd_opts, measurements=views, progress=progress_printer(desc="demo")))
    if not args.model and not args.no_syndiff and DEMO_SYNDIFF.exists():
        sd = load_model(DEMO_SYNDIFF)
        variant = "paired" if getattr(sd, "paired", False) else "unpaired"
        add_row("syndiff", f"SynDiff ({variant}), 4 steps", lambda: synthesize(
            mri, sd, dataclasses.replace(options, sampler=None, steps=None, backend="torch"),  # SynDiff: torch only
            progress=progress_printer(desc="demo")))

    files = []
    for key, label, result, _ in runs:
        stem = "sct" if key == "main" else f"sct_{key}"
        write_volume(result.sct, out / f"{stem}.nii.gz")
        write_volume(result.std, out / f"{stem}_std.nii.gz")
        files += [(f"{stem}.nii.gz", f"synthetic CT (HU), {label}"), (f"{stem}_std.nii.gz", "its MC std (HU)")]
    if args.dicom:
        from ...io.dicom import export_dicom, new_reference

        r = runs[0][2]
        reference = new_reference(patient_name="MRtoCTSynthesis^Demo phantom")
        export_dicom(r.sct, out / "dicom", reference, std=r.std, derivation=f"{runs[0][1]}, mean of {options.samples} "
                     f"samples, seed {options.seed}; bundled phantom case")
        files.append(("dicom/", f"the first row's sCT and std as DICOM CT series ({reference.patient['PatientID']})"))
    main_metrics = runs[0][3]
    write_json_output(out / "metrics.json", {
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
    report_input_check(runs[0][2].info)  # is the bundled case like the model's training images? (it should be)
    print(f"\nwrote to {out.resolve()}:")
    for name, what in files + [("metrics.json", "metrics vs the phantom's CT, and run details"),
                               (fig.name, "figure: MRI | CT | sCT | error | uncertainty | zoom, one row per method")]:
        print(f"  {name:24s} {what}")
    return 0
