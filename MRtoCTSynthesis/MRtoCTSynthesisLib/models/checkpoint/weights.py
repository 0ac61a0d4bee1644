"""Networks out of a checkpoint: build each from its stored config, check the stored weights against it, load."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ...errors import InputError
from ..networks import build_network
from .format import Checkpoint, PathLike, checkpoint_where, load_checkpoint

__all__ = ["load_network"]


def _mismatch_report(expected: Mapping[str, torch.Tensor], stored: Mapping[str, torch.Tensor]) -> str | None:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = [
        f"{k} {tuple(stored[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(stored))
        if tuple(stored[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return None

    def fmt(items: list[str]) -> str:
        if not items:
            return "none"
        head = ", ".join(items[:4])
        return head + (f" and {len(items) - 4} more" if len(items) > 4 else "")

    return f"missing: {fmt(missing)}; unexpected: {fmt(unexpected)}; shape mismatch (stored vs config): {fmt(shapes)}"


def load_network(
    checkpoint: Checkpoint | PathLike, name: str, prefer_ema: bool = True
) -> nn.Module:
    """Build network ``name`` from the checkpoint's stored config and load its weights strictly.

    Uses the EMA weights when present and ``prefer_ema``. The module is returned in ``eval()`` mode on
    the device the tensors were loaded to (``map_location``) and in float32 parameters; call
    ``.train()`` to resume training.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    specs = ckpt.metadata.get("network", {})
    if name not in specs:
        raise InputError(
            f"{checkpoint_where(ckpt.path)} has no network named {name!r} (it has: {', '.join(specs) or 'none'})",
            "use a checkpoint of the right method",
        )
    try:
        net = build_network(specs[name])
    except InputError as e:
        raise InputError(f"{checkpoint_where(ckpt.path)}, network {name!r}: {e.problem}", e.fix) from e
    sd = ckpt.state_dict(name, prefer_ema=prefer_ema)
    report = _mismatch_report(net.state_dict(), sd)
    if report:
        raise InputError(
            f"{checkpoint_where(ckpt.path)}: checkpoint weights do not match its network config for {name!r} "
            f"({report})",
            "the file's weights and config disagree (edited or mixed-up file); use an unmodified checkpoint",
        )
    net.load_state_dict(sd, strict=True)
    devices = {t.device for t in sd.values()}
    if len(devices) == 1:
        net.to(devices.pop())
    return net.eval()
