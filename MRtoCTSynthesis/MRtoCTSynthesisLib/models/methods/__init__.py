"""Synthesis methods: one file each, one registry, one loader.

==============  ================================================  ==============================
method          file                                              paper
==============  ================================================  ==============================
``ddpm``        :mod:`.ddpm` (conditional DDPM)                   Lyu & Wang Table I; DDMM-Synth Eq. 1
``score_sde``   :mod:`.score_sde` (conditional VE-SDE)            Lyu & Wang Eqs. 26-33
``ddmm_synth``  :mod:`.ddmm_synth` (a ddpm prior sampled with     DDMM-Synth Eqs. 1-13
                N-SMI on sparse-view CT; inference only)
``syndiff``     :mod:`.syndiff` (adversarial diffusion, T/k = 4   SynDiff Eqs. 8-24
                steps; unpaired cycle-consistent training)
``unet_cnn``    :mod:`.unet_cnn` (UNet + MSE)                     Lyu & Wang Sec. IV (CNN)
``pix2pix``     :mod:`.pix2pix` (UNet + 70x70 PatchGAN, L1 100)   pix2pix (DDMM-Synth's baseline)
``wgan_gp``     :mod:`.wgan_gp` (UNet + critic + GP + MSE)        Lyu & Wang Sec. IV (WGAN-GP)
``cyclegan``    :mod:`.cyclegan` (unpaired, ResNet + PatchGAN)    SynDiff Sec. IV-B.2 (cGAN)
==============  ================================================  ==============================

Every method has a ``train_step`` (one optimisation step of all its networks), run by
:func:`...training.loop.train_loop`;
``syndiff`` and ``cyclegan`` train on unpaired slices (:class:`..data.UnpairedSliceDataset`), except
``syndiff`` with ``options={"paired": True}``, the supervised variant of SynDiff Sec. V-C.

:func:`create_model` builds an untrained method (for training), :func:`save_model` writes it as a
self-describing safetensors checkpoint (:mod:`..checkpoint`), and :func:`load_model` rebuilds any method
from a checkpoint alone, without pickle.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from ...errors import InputError
from ...io.intensity import CT_MAPPING, mr_mapping_description
from ..checkpoint import load_checkpoint, load_network, save_checkpoint
from ..networks import build_network, unet_preset
from .base import SampleOutput, SynthesisModel
from .conditional_diffusion import ConditionalDiffusion, diffusion_loss
from .cyclegan import CycleGAN
from .ddmm_synth import DDMMSynth
from .ddpm import ConditionalDDPM
from .pix2pix import Pix2Pix
from .score_sde import ScoreSDE
from .syndiff import SynDiff
from .unet_cnn import DirectSynthesis, TrainableMethod, UNetCNN
from .wgan_gp import WGANGP

#: ``ddmm_synth`` samples a ``ddpm`` checkpoint with N-SMI (see :mod:`.ddmm_synth`); it is listed so that
#: method listings (the Slicer module) offer it, and loads checkpoints whose method is ``ddmm_synth``.
#: keyed by each class's own ``method`` (``names.METHOD_INFO`` is tested to match: names, samplers, trainable)
METHODS: dict[str, type[SynthesisModel]] = {cls.method: cls for cls in (
    ConditionalDDPM, ScoreSDE, DDMMSynth, SynDiff, UNetCNN, Pix2Pix, WGANGP, CycleGAN)}


def _method_class(method: str) -> type[SynthesisModel]:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}.", f"choose one of: {', '.join(METHODS)}.")
    return METHODS[method]


def create_model(method: str, image_size: int, context: int = 0, unet: dict | str = "tiny",
                 process: dict | None = None, options: dict | None = None,
                 pixel_mm: float | None = None) -> SynthesisModel:
    """An untrained model of ``method`` for ``image_size`` x ``image_size`` slices with 2.5D ``context``.

    ``unet`` is a preset name of :data:`..networks.UNET_PRESETS` (``"tiny"`` trains on a CPU, ``"full"``
    is the GPU model) or a dict of :class:`..networks.UNetConfig` fields (channels are filled in). For the
    methods with their own networks (:class:`.unet_cnn.TrainableMethod`: syndiff and the CNN/GAN baselines)
    the preset sizes all of them, a dict may hold ``{"preset": ..., <network name>: {fields}}``, and
    ``options`` sets their hyper-parameters (``default_method_config``, e.g. ``{"mse_weight": 100}``).
    ``pixel_mm`` (conditional diffusion methods) records the in-plane pixel size the model trains at as the
    checkpoint's ``conditioning.pixel_spacing_mm``; inference then resamples every slice to it (``image_size``
    is the training patch size). None keeps the square-field-of-view resize to ``image_size``.
    """
    cls = _method_class(method)
    if issubclass(cls, TrainableMethod):
        if pixel_mm is not None:
            raise InputError(f"method {method!r} does not support a physical pixel size (model.pixel_mm).",
                             "leave model.pixel_mm unset (null) for this method, or train ddpm / score_sde.")
        return cls.build(image_size, context, unet=unet, process=process, options=options)
    options = dict(options or {})
    prediction = options.pop("prediction", "eps")
    if options:
        raise InputError(f"method {method!r} takes only the option 'prediction' (got {sorted(options)}).",
                         "leave the others out.")
    if prediction not in ("eps", "v"):
        raise InputError(f"unknown prediction {prediction!r}.", "use 'eps' (the papers') or 'v'.")
    in_ch = 2 + 2 * context  # noisy CT + MR slice and its neighbours
    overrides = {} if isinstance(unet, str) else {k: v for k,
                                                  v in unet.items() if k not in ("in_channels", "image_size")}
    preset = unet if isinstance(unet, str) else "tiny"
    net_cfg = unet_preset(preset, in_ch, image_size=image_size, **overrides).to_dict()
    metadata = {
        "method": method,
        "network": {"denoiser": {"type": "unet", "config": net_cfg}},
        "process": dict(process or cls.default_process),
        "prediction": prediction,
        "intensity": {"ct": CT_MAPPING, "mr": mr_mapping_description()},
        "conditioning": {"mr_channels": 1 + 2 * context, "context_slices": context, "image_size": image_size},
        "training": {},
    }
    if pixel_mm is not None:
        metadata["conditioning"]["pixel_spacing_mm"] = float(pixel_mm)
    network = build_network(metadata["network"]["denoiser"])
    return cls({"denoiser": network}, metadata)


def save_model(model: SynthesisModel, path, training: dict | None = None, ema=None, extra=None) -> Path:
    """Write ``model`` (and optional EMA copies ``{name: module}``) as a self-describing checkpoint.

    ``extra``: training-state tensors (optimiser moments) of a resumable checkpoint, see :mod:`..training`."""
    meta = dict(model.metadata)
    meta["training"] = dict(training or meta.get("training", {}))
    meta["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return save_checkpoint(path, model.networks, meta, ema=ema, extra=extra)


def load_model(path, device="cpu", prefer_ema: bool = True) -> SynthesisModel:
    """Rebuild a trained method from its checkpoint (EMA weights when present), ready for inference."""
    ck = load_checkpoint(path)
    meta = ck.metadata
    cls = _method_class(meta.get("method", "?"))
    for key in ("conditioning", "network"):
        if key not in meta:
            raise InputError(f"checkpoint {path} has no '{key}' section.",
                             "use a checkpoint written by `mrtoct train`.")
    nets = {name: load_network(ck, name, prefer_ema=prefer_ema) for name in meta["network"]}
    return cls(nets, meta).to(device)


__all__ = ["METHODS", "SynthesisModel", "SampleOutput", "ConditionalDiffusion", "ConditionalDDPM", "ScoreSDE",
           "DDMMSynth",
           "SynDiff", "UNetCNN", "Pix2Pix", "WGANGP", "CycleGAN", "TrainableMethod", "DirectSynthesis",
           "create_model", "save_model", "load_model", "diffusion_loss"]
