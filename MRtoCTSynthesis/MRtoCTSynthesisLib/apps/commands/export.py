"""``mrtoct export``: a smaller, inference-only copy of a checkpoint."""

from __future__ import annotations

from pathlib import Path

from ...errors import InputError
from ..args import check_output_file


def add_parser(sub) -> None:
    ex = sub.add_parser("export", help="write a smaller inference-only copy of a checkpoint",
                        description="Keep only the networks synthesis uses (e.g. SynDiff's MR->CT diffusive "
                                    "generator), "
                                    "stored as their EMA weights; drop discriminators, reverse-direction generators "
                                    "and "
                                    "optimiser state. The result cannot resume training.")
    ex.add_argument("--model", required=True, help="checkpoint from `mrtoct train` (any of the run folder's files)")
    ex.add_argument("--out", required=True, help="output .safetensors")
    ex.add_argument("--record-data", default=None, metavar="DIR",
                    help="case folders the model was trained on (or a representative set of them): store their "
                         "training record in the checkpoint, which every synthesis compares its MRI with (the "
                         "out-of-distribution check; pipeline/input_check.py)")
    ex.add_argument("--calibration-data", default=None, metavar="DIR",
                    help="held-out paired cases (MR, CT, mask) not used for training: fit the recalibration of the "
                         "MC std (a conformal quantile of |sCT - CT| / std, 95 %%) and store it in the checkpoint")
    ex.add_argument("--record-samples", type=int, default=4,
                    help="Monte-Carlo samples per slice for the record's MC std level (default 4; 1 = image "
                         "features only)")
    ex.add_argument("--calibration-samples", type=int, default=8,
                    help="Monte-Carlo samples per slice for the calibration (default 8)")
    ex.set_defaults(func=run)


def run(args) -> int:
    """Keep only what synthesis needs: the inference networks, as their EMA weights, no optimiser state."""
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    from ...models.checkpoint import load_checkpoint, save_checkpoint
    from ...models.methods import METHODS

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out} must end in .safetensors.", "e.g. --out model_small.safetensors")
    check_output_file(out, "--out", {"--model": args.model})  # writable, and never the checkpoint being exported
    ck = load_checkpoint(args.model)
    cls = METHODS.get(ck.method)
    keep = list(getattr(cls, "inference_networks", None) or ck.network_names)
    meta = dict(ck.metadata)
    meta["network"] = {n: ck.metadata["network"][n] for n in keep}
    meta["training"] = {k: v for k, v in meta.get("training", {}).items() if k != "resume"}
    meta["training"]["exported_from"] = {"file": Path(args.model).name, "sha256": ck.metadata.get("sha256"),
                                         "kept": keep}
    if args.record_data or args.calibration_data:
        meta.update(records_for(args))
    save_checkpoint(out, {n: ck.state_dict(n, prefer_ema=True) for n in keep}, meta)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {', '.join(keep)} (EMA weights), from "
          f"{Path(args.model).stat().st_size / 1e6:.1f} MB")
    return 0


def records_for(args) -> dict:
    """The training record and/or the std calibration (training/records.py) of the exported model."""
    from ...data.cases import find_cases
    from ...models.methods import load_model
    from ...training.records import build_input_record, fit_calibration

    model = load_model(args.model)  # EMA weights, as the exported file will hold them
    model.metadata = {k: v for k, v in model.metadata.items() if k not in ("input_record", "uncertainty_calibration")}
    extra = {}
    for flag, folder in (("--record-data", args.record_data), ("--calibration-data", args.calibration_data)):
        if folder and not find_cases(folder, partial=flag == "--record-data"):
            raise InputError(f"{flag} {folder} holds no case folders.",
                             "give a folder of case folders (mr.nii.gz ...).")
    if args.record_data:
        extra["input_record"] = build_input_record(model, find_cases(args.record_data, partial=True),
                                                   samples=args.record_samples)
    if args.calibration_data:
        try:
            extra["uncertainty_calibration"] = fit_calibration(model, find_cases(args.calibration_data),
                                                               samples=args.calibration_samples)
        except ValueError as e:
            raise InputError(f"the std cannot be calibrated: {e}.",
                             "drop --calibration-data, or use a diffusion model and --calibration-samples >= 2."
                             ) from None
        print(f"std calibration: scale {extra['uncertainty_calibration']['scale']:.3f}")
    return extra
