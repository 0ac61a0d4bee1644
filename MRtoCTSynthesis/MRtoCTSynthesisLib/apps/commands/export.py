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
    save_checkpoint(out, {n: ck.state_dict(n, prefer_ema=True) for n in keep}, meta)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {', '.join(keep)} (EMA weights), from "
          f"{Path(args.model).stat().st_size / 1e6:.1f} MB")
    return 0
