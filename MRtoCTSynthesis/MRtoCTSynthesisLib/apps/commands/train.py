"""``mrtoct train``: train any method from a YAML config (resumable runs, validation, logs, multi-GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

from ...errors import InputError
from ...names import TRAIN_METHODS
from ..args import (
    check_not_an_input,
    check_output_dir,
    check_output_file,
    positive_int,
    progress_mode,
    sigterm_as_interrupt,
)


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help="train any method from a config (resumable runs, validation, logs)",
                        description="Train a conditional DDPM or VE-SDE score model, SynDiff, or a UNet-CNN / pix2pix "
                                    "/ "
                                    "WGAN-GP / CycleGAN baseline on <data>/<case>/{mr,ct[,mask]}.nii.gz. Settings come "
                                    "from the engine defaults, then --config (training/configs/<method>.yaml hold the "
                                    "papers' values), then --set KEY=VALUE, then the flags below. The run folder gets "
                                    "config.yaml, split.json (train/val/test by case), last.safetensors (resumable, "
                                    "written atomically every checkpoint_every steps), best.safetensors (best "
                                    "validation PSNR), model.safetensors (final EMA model), log.jsonl and "
                                    "tensorboard/. "
                                    "Multi-GPU: torchrun --nproc_per_node N training/train.py ... (batch size is per "
                                    "process). syndiff and cyclegan train on unpaired slices, and their training "
                                    "cases may hold only an MR or only a CT; --set model.options.paired=true trains "
                                    "SynDiff's supervised variant (SynDiff Sec. V-C) on registered pairs. The Lyu & "
                                    "Wang configs stop on a loss plateau (train.early_stop).",
                        epilog="Examples: mrtoct train --config training/configs/ddpm.yaml --data DIR --run-dir "
                               "runs/ddpm; "
                               "after an interruption add --resume to the same command.")
    tr.add_argument("--config",
                    help="YAML config (see training/configs/); relative paths in it are taken from its folder")
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
    tr.add_argument("--image-size", type=positive_int("--image-size"), default=None, help="model grid (default 64)")
    tr.add_argument("--context", type=int, default=None, help="2.5D neighbour slices on each side (default 0)")
    tr.add_argument("--unet", choices=["tiny", "full"], default=None,
                    help="network size preset of all the method's networks (default tiny)")
    tr.add_argument("--steps", type=positive_int("--steps"), default=None,
                    help="optimisation steps (default: train.epochs passes over the training slices)")
    tr.add_argument("--epochs", type=float, default=None, help="passes over the training slices (default 100) "
                                                                "when --steps is not given")
    tr.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                    help="slices per step and process (default 2, Lyu & Wang)")
    tr.add_argument("--prediction", choices=["eps", "v"], default=None,
                    help="ddpm/score_sde network target: eps (the papers', default) or v = alpha eps - sigma x0 "
                         "(learns the high-noise regime much faster; the bundled demo model uses v)")
    tr.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate (default: the method's; 1e-4 for ddpm, score_sde, unet_cnn, wgan_gp (Lyu "
                         "& "
                         "Wang) and syndiff (SynDiff), 2e-4 for pix2pix and cyclegan)")
    tr.add_argument("--disjoint-cases", action="store_true", default=None,
                    help="syndiff/cyclegan: take MR slices and CT slices from different cases (every other case)")
    tr.add_argument("--register", action="store_true", default=None,
                    help="register each case's MR to its CT first (rigid, Mattes MI; cached with the slices)")
    tr.add_argument("--no-cache", action="store_true",
                    help="do not cache preprocessed slices (default cache: $MRTOCT_CACHE or ~/.cache/mrtoct/slices)")
    tr.add_argument("--val-every", type=int, default=None, help="validate every N steps (default 500; 0 = never)")
    tr.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=None,
                    help="write last.safetensors every N steps (default 500)")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override any config key, e.g. --set optim.grad_clip=0.5 --set model.options.l1_weight=50")
    tr.add_argument("--seed", type=int, default=None, help="seed of weights, data order and noise (default 0)")
    tr.add_argument("--device", default=None, help="auto (default: CUDA if available), cpu, cuda, cuda:N")
    tr.set_defaults(func=run)


#: command-line flags of `mrtoct train` -> the config key they set (flags win over the config file)
TRAIN_FLAG_KEYS = {"method": "method", "data": "data.root", "split": "data.split", "image_size": "model.image_size",
                   "context": "model.context", "unet": "model.unet", "prediction": "model.prediction",
                   "steps": "train.steps", "epochs": "train.epochs", "batch_size": "train.batch_size",
                   "lr": "optim.lr", "seed": "train.seed", "device": "train.device",
                   "disjoint_cases": "data.disjoint_cases", "register": "data.register",
                   "val_every": "train.val_every", "checkpoint_every": "train.checkpoint_every"}


def train_config_from_args(args) -> dict:
    """The run's config: engine defaults < --config file < --set KEY=VALUE < explicit flags."""
    from ...training.config import apply_overrides, default_config, load_config, validate_config

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


def run(args) -> int:
    # torch and the engine load here, not at import: the parser (mrtoct --help) stays light
    from ...training.run import TrainingRun, init_distributed

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != ".safetensors":
        raise InputError(f"--out {out} must end in .safetensors.", "e.g. --out my_model.safetensors")
    if out is not None:
        check_output_file(out, "--out", {"--config": args.config, "--split": args.split})
    cfg = train_config_from_args(args)
    run_dir = Path(args.run_dir) if args.run_dir else (out.with_name(out.stem + "_run") if out
                                                        else Path("runs") / cfg["method"])
    # outputs checked before any work: the run folder is writable and not the data; --out is not a checkpoint the
    # run itself keeps (its resumable state or its best model)
    check_output_dir(run_dir, "--run-dir", {"--data": cfg["data"]["root"]})
    if out is not None:
        check_not_an_input(out, "--out", {"the run's resumable checkpoint": run_dir / "last.safetensors",
                                          "the run's best checkpoint": run_dir / "best.safetensors"})
    if args.resume is False and (run_dir / "last.safetensors").exists() and not args.overwrite:
        raise InputError(f"the run folder {run_dir} already holds a checkpoint.",
                         "add --resume to continue that run, --overwrite to start again from scratch, or choose "
                         "another --run-dir.")
    init_distributed()
    sigterm_as_interrupt()
    try:
        TrainingRun(cfg, run_dir, out=out, command=" ".join(["mrtoct", *sys.argv[1:]])).run(
            resume=args.resume, progress=progress_mode() != "none")
    except KeyboardInterrupt:
        from ...errors import CancelledError

        raise CancelledError(f"training interrupted; {run_dir / 'last.safetensors'} holds the last checkpoint "
                             "(if one was written): run the same command with --resume to continue") from None
    return 0
