"""UNet-CNN baseline (Lyu & Wang Sec. IV: "For CNN, UNet was trained to minimize MSE"), and the shared
machinery of every method that trains with its own ``train_step`` (losses in :mod:`..losses`).

The CNN is the engine's :class:`~..networks.ConditionalUNet` without time embedding (Lyu & Wang use "UNet
of CNN and WGAN-GP without time-embedding"), fed the MR slice (and its 2.5D neighbours) and trained
with Adam (lr 1e-4, betas (0.9, 0.999), eps 1e-8: Lyu & Wang Sec. IV) on the mean squared error to the CT.

:class:`TrainableMethod` is the base of the methods that train with a ``train_step`` (this file, pix2pix,
WGAN-GP, CycleGAN, SynDiff): ``build`` (what :func:`..methods.create_model` calls), per-method
hyper-parameters in ``metadata["method_config"]`` (stored in the checkpoint), and the optimiser groups.
:class:`DirectSynthesis` adds the deterministic one-call inference of the CNN and GAN baselines: the
only sampler is ``"direct"`` (one network evaluation, NFE = 1), ``generator`` is ignored, and K
Monte-Carlo samples are identical, so their std map is exactly zero.

Checkpoint networks: ``generator`` (inference). No EMA is needed by the method; the shared loop keeps
one of the inference network(s) anyway and inference uses it when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ...errors import CancelledError, InputError
from ...io.intensity import CT_MAPPING, mr_mapping_description
from ..losses import batch_on_device
from ..networks import ConditionalUNet, network_spec, unet_preset
from .base import SampleOutput, SynthesisModel


@dataclass(frozen=True)
class DirectSampler:
    """The 'sampler' of a deterministic method: one network call, no randomness."""

    name: str = "direct"
    steps: int = 1

    def to_config(self) -> dict:
        """The whole configuration (it has no options), like :meth:`..samplers.Sampler.to_config`."""
        return {"name": self.name, "steps": self.steps}


def method_metadata(method: str, networks: Mapping[str, torch.nn.Module], process: dict | None, image_size: int,
                    context: int, method_config: dict) -> dict:
    """The checkpoint metadata document of a freshly built method (see :mod:`..checkpoint`)."""
    return {
        "method": method,
        "network": {name: network_spec(net) for name, net in networks.items()},
        "process": process,
        "intensity": {"ct": CT_MAPPING, "mr": mr_mapping_description()},
        "conditioning": {"mr_channels": 1 + 2 * context, "context_slices": context, "image_size": image_size},
        "training": {},
        "method_config": dict(method_config),
    }


def split_network_overrides(unet: str | Mapping[str, Any], roles: tuple[str, ...], main_role: str):
    """``unet`` as :func:`..methods.create_model` takes it -> ``(preset, {role: overrides})``.

    A string is a preset ("tiny" | "full"); a dict may hold ``preset`` plus either per-role dicts
    (``{"generator": {...}, "discriminator": {...}}``) or config fields of the main network.
    """
    if isinstance(unet, str):
        return unet, {}
    if not isinstance(unet, Mapping):
        raise InputError(f"network settings must be a preset name or a dict, got {type(unet).__name__}",
                         "use 'tiny', 'full' or a dict of config fields")
    d = {k: v for k, v in unet.items() if k not in ("in_channels", "image_size")}
    preset = d.pop("preset", "tiny")
    if d and all(k in roles for k in d):
        return preset, {k: dict(v) for k, v in d.items()}
    return preset, ({main_role: d} if d else {})


def unet_generator(preset: str, in_channels: int, image_size: int, overrides: Mapping[str, Any] | None = None):
    """The engine's UNet without time embedding (the CNN / pix2pix / WGAN-GP generator)."""
    cfg = unet_preset(preset, in_channels, image_size=image_size, **{"time_embedding": False, **dict(overrides or {})})
    return ConditionalUNet(cfg)


class TrainableMethod(SynthesisModel):
    """A method with its own networks and ``train_step`` (one optimisation step), run by
    :func:`...training.loop.train_loop`."""

    #: networks needed at inference (their EMA copies are kept during training)
    inference_networks: tuple[str, ...] = ("generator",)
    #: every network the method trains (and saves, so that training can resume)
    network_roles: tuple[str, ...] = ("generator",)
    #: trains on unpaired MR and CT slices
    unpaired: bool = False
    #: method hyper-parameters; overridable through create_model(options=...), stored in the checkpoint
    default_method_config: dict[str, Any] = {}
    supports_context: bool = True

    def __init__(self, networks, metadata):
        super().__init__(networks, metadata)
        missing = [n for n in self.inference_networks if n not in networks]
        if missing:
            raise InputError(f"this {self.method} checkpoint has no {', '.join(missing)} network(s).",
                             "use a checkpoint written by `mrtoct train` for this method.")
        cfg = dict(self.default_method_config)
        cfg.update(metadata.get("method_config") or {})
        self.method_config = cfg
        self.metadata["method_config"] = cfg

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, image_size: int, context: int = 0, unet: str | Mapping = "tiny", process: dict | None = None,
              options: Mapping[str, Any] | None = None) -> "TrainableMethod":
        """An untrained model (what ``create_model(method, ...)`` returns for this method)."""
        if context < 0:
            raise InputError(f"context must be >= 0, got {context}.", "use --context 0 (single slices) or more.")
        if context and not cls.supports_context:
            raise InputError(f"method {cls.method!r} translates single slices in both directions and takes no "
                             f"2.5D context (got context {context}).", "use --context 0 for this method.")
        cfg = cls._config_with(process, options)
        preset, overrides = split_network_overrides(unet, cls.network_roles, cls.network_roles[0])
        roles = cls.roles_for(cfg)
        nets = {k: v for k, v in cls.build_networks(preset, overrides, image_size, context).items() if k in roles}
        meta = method_metadata(cls.method, nets, cls.process_config(process), image_size, context, cfg)
        return cls(nets, meta)

    @classmethod
    def roles_for(cls, method_config: Mapping[str, Any]) -> tuple[str, ...]:
        """The networks a model with these options trains (all of ``network_roles`` unless a method says less)."""
        return cls.network_roles

    @classmethod
    def _config_with(cls, process, options) -> dict:
        cfg = dict(cls.default_method_config)
        unknown = sorted(set(options or {}) - set(cfg))
        if unknown:
            raise InputError(f"unknown option(s) {unknown} for method {cls.method!r}.",
                             f"known options: {', '.join(sorted(cfg))}")
        cfg.update(options or {})
        return cfg

    @classmethod
    def process_config(cls, process: dict | None) -> dict | None:
        if process:
            raise InputError(f"method {cls.method!r} has no noise process.", "leave the process settings out.")
        return None

    @classmethod
    def build_networks(cls, preset, overrides, image_size, context) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def to(self, device) -> "TrainableMethod":
        """Inference networks to ``device``; every network to eval mode. The training-only networks (the
        discriminators, the reverse-direction generators) stay where they are, so a GPU holds only what
        sampling needs; :func:`...training.loop.train_loop` moves all of them itself."""
        for name, net in self.networks.items():
            if name in self.inference_networks:
                net.to(device)
            net.eval()
        return self

    # -------------------------------------------------------------------------------- training
    def optimizer_groups(self) -> dict[str, list[str]]:
        """Optimiser name -> the networks it updates."""
        return {n: [n] for n in self.network_roles}

    def train_step(self, state, data, generator: torch.Generator) -> dict[str, float]:
        raise NotImplementedError


class DirectSynthesis(TrainableMethod):
    """Deterministic one-call methods: ``sample`` returns ``predict(cond)``, NFE = 1."""

    default_sampler = "direct"
    valid_samplers = ("direct",)

    def make_sampler(self, name=None, steps=None, **options):
        if name not in (None, "direct"):
            raise InputError(f"sampler {name!r} does not work with method {self.method!r}: it synthesises a slice in "
                             "one deterministic network call.", "leave --sampler out (or use 'direct').")
        if steps not in (None, 1):
            raise InputError(f"method {self.method!r} has no sampling steps (got --steps {steps}).",
                             "leave --steps out.")
        if options:
            raise InputError(f"method {self.method!r} takes no sampler options (got {sorted(options)}).",
                             "leave the sampler options out.")
        return DirectSampler()

    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + 2c, H, W]`` MR (model range) -> ``[B, 1, H, W]`` CT (model range)."""
        return self.networks[self.inference_networks[0]](None, cond)

    def sample(self, cond, sampler, generator=None, x0_hook=None, cancel=None) -> SampleOutput:
        if x0_hook is not None:
            raise InputError(f"method {self.method!r} is a one-call network; measurement-consistency projections "
                             "(DDMM-Synth) need a diffusion method.", "use a ddpm/score_sde/syndiff checkpoint.")
        if cancel is not None and cancel():
            raise CancelledError("synthesis cancelled")
        return SampleOutput(self.predict(cond).float(), 1)


class UNetCNN(DirectSynthesis):
    """UNet trained with MSE (Lyu & Wang's CNN baseline)."""

    method = "unet_cnn"
    default_method_config = {"lr": 1e-4, "betas": [0.9, 0.999]}

    @classmethod
    def build_networks(cls, preset, overrides, image_size, context):
        return {"generator": unet_generator(preset, 1 + 2 * context, image_size, overrides.get("generator"))}

    def train_step(self, state, data, generator):
        """One Adam step on ``||G(MR) - CT||^2`` (mean squared error, Lyu & Wang Sec. IV)."""
        mr, ct = batch_on_device(data, state, generator)
        loss = F.mse_loss(self.predict(mr).float(), ct)
        state.update("generator", loss)
        return {"loss": loss.item(), "mse": loss.item()}
