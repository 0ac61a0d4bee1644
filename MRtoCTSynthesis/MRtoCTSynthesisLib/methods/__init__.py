"""Synthesis methods: one file each, one registry, one loader.

=============  ===========================================  ==============================
method         file                                         paper
=============  ===========================================  ==============================
``ddpm``       :mod:`.ddpm` (conditional DDPM)              Lyu & Wang Table I; DDMM-Synth Eq. 1
``score_sde``  :mod:`.score_sde` (conditional VE-SDE)       Lyu & Wang Eqs. 26-33
=============  ===========================================  ==============================

:func:`create_model` builds an untrained method (for training), :func:`save_model` writes it as a
self-describing safetensors checkpoint (:mod:`..checkpoint`), and :func:`load_model` rebuilds any method
from a checkpoint alone, without pickle.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from ..checkpoint import build_network, load_checkpoint, load_network, save_checkpoint
from ..errors import InputError
from ..networks import unet_preset
from ..intensity import CT_MAPPING, mr_mapping_description
from .base import SampleOutput, SynthesisModel
from .conditional_diffusion import ConditionalDiffusion, diffusion_loss
from .ddpm import ConditionalDDPM
from .score_sde import ScoreSDE

METHODS: dict[str, type[SynthesisModel]] = {"ddpm": ConditionalDDPM, "score_sde": ScoreSDE}


def _method_class(method: str) -> type[SynthesisModel]:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}.", f"choose one of: {', '.join(METHODS)}.")
    return METHODS[method]


def create_model(method: str, image_size: int, context: int = 0, unet: dict | str = "tiny",
                 process: dict | None = None) -> SynthesisModel:
    """An untrained model of ``method`` for ``image_size`` x ``image_size`` slices with 2.5D ``context``.

    ``unet`` is a preset name of :data:`..networks.UNET_PRESETS` (``"tiny"`` trains on a CPU, ``"full"``
    is the GPU model) or a dict of :class:`..networks.UNetConfig` fields (channels are filled in).
    """
    cls = _method_class(method)
    in_ch = 2 + 2 * context  # noisy CT + MR slice and its neighbours
    overrides = {} if isinstance(unet, str) else {k: v for k, v in unet.items() if k not in ("in_channels", "image_size")}
    preset = unet if isinstance(unet, str) else "tiny"
    net_cfg = unet_preset(preset, in_ch, image_size=image_size, **overrides).to_dict()
    metadata = {
        "method": method,
        "network": {"denoiser": {"type": "unet", "config": net_cfg}},
        "process": dict(process or cls.default_process),
        "intensity": {"ct": CT_MAPPING, "mr": mr_mapping_description()},
        "conditioning": {"mr_channels": 1 + 2 * context, "context_slices": context, "image_size": image_size},
        "training": {},
    }
    network = build_network(metadata["network"]["denoiser"])
    return cls({"denoiser": network}, metadata)


def save_model(model: SynthesisModel, path, training: dict | None = None, ema=None) -> Path:
    """Write ``model`` (and optional EMA copies ``{name: module}``) as a self-describing checkpoint."""
    meta = dict(model.metadata)
    meta["training"] = dict(training or meta.get("training", {}))
    meta["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return save_checkpoint(path, model.networks, meta, ema=ema)


def load_model(path, device="cpu", prefer_ema: bool = True) -> SynthesisModel:
    """Rebuild a trained method from its checkpoint (EMA weights when present), ready for inference."""
    ck = load_checkpoint(path)
    meta = ck.metadata
    cls = _method_class(meta.get("method", "?"))
    for key in ("conditioning", "network"):
        if key not in meta:
            raise InputError(f"checkpoint {path} has no '{key}' section.", "use a checkpoint written by `mrtoct train`.")
    nets = {name: load_network(ck, name, prefer_ema=prefer_ema) for name in meta["network"]}
    return cls(nets, meta).to(device)


__all__ = ["METHODS", "SynthesisModel", "SampleOutput", "ConditionalDiffusion", "ConditionalDDPM", "ScoreSDE",
           "create_model", "save_model", "load_model", "diffusion_loss"]
