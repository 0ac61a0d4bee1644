"""Neural networks of the engine, and the registry that builds them from a config.

:mod:`.unet`: the conditional UNet of the diffusion methods and the CNN/GAN generators; :mod:`.gan`: PatchGAN
discriminators, the ResNet generator and SynDiff's networks. :data:`NETWORK_TYPES` maps the type name stored in
a checkpoint (``{"type": "unet", "config": {...}}``) to its config and module classes; :func:`build_network`
builds an untrained module from such a spec.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ...errors import InputError
from .gan import GAN_NETWORK_TYPES
from .unet import ConditionalUNet, UNetConfig, count_parameters, sinusoidal_embedding

#: network type name -> (config class with from_dict/to_dict, module class taking the config)
NETWORK_TYPES: dict[str, tuple[type, type]] = {"unet": (UNetConfig, ConditionalUNet), **GAN_NETWORK_TYPES}

__all__ = [
    "ConditionalUNet",
    "UNetConfig",
    "count_parameters",
    "sinusoidal_embedding",
    "unet_preset",
    "UNET_PRESETS",
    "NETWORK_TYPES",
    "register_network_type",
    "build_network",
    "network_spec",
    "normalise_spec",
    "unwrap_module",
    "expected_state_shapes",
]

#: Recommended sizes. "tiny": trains on a laptop CPU (0.30 M parameters with 2 input channels; a forward
#: pass of 16 slices of 64x64 takes ~0.2 s on 2 CPU cores; self-attention only at 16x16 and in the
#: middle, since attention at 32x32 costs more than all the convolutions together on a CPU);
#: "full": GPU model for 256x256 slices (42.9 M parameters; attention at 32x32 and in the middle).
#: "cpu": the bundled default model's network for 2 mm pixels on a CPU (1.63 M parameters): the input's 2x2 pixel
#: blocks folded into channels (space_to_depth 2), then 32-64 channels on four levels, attention only on the
#: lowest (1/16 of the input: 6x6 tokens on a 96-pixel training patch, 12x12 on a 384 mm field of view at
#: 2 mm, always <= 32x32 up to 1 m) and in the middle; chosen by the measurements of benchmarks/unet_cpu.py.
UNET_PRESETS: dict[str, dict] = {
    "cpu": dict(space_to_depth=2, base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=1,
                attention_levels=(3,), attention_heads=4, norm_groups=8, image_size=96),
    "tiny": dict(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,),
                 attention_heads=4, norm_groups=8, image_size=64),
    "full": dict(base_channels=96, channel_mults=(1, 2, 2, 4), num_res_blocks=2, attention_levels=(3,),
                 attention_heads=8, norm_groups=32, dropout=0.1, image_size=256),
}


def unet_preset(name: str, in_channels: int, out_channels: int = 1, **overrides) -> UNetConfig:
    """A :class:`UNetConfig` from :data:`UNET_PRESETS` (``"tiny"``, ``"cpu"`` or ``"full"``), with overrides."""
    if name not in UNET_PRESETS:
        raise InputError(f"unknown UNet preset {name!r}", f"use one of: {', '.join(UNET_PRESETS)}")
    kwargs = dict(UNET_PRESETS[name])
    kwargs.update(overrides)
    return UNetConfig(in_channels=in_channels, out_channels=out_channels, **kwargs)


def register_network_type(name: str, config_cls: type, module_cls: type) -> None:
    """Make ``{"type": name, "config": {...}}`` buildable: ``module_cls(config_cls.from_dict(config))``."""
    NETWORK_TYPES[name] = (config_cls, module_cls)


def unwrap_module(module: nn.Module) -> nn.Module:
    """Strip torch.compile / DataParallel wrappers so the saved keys have no wrapper prefix."""
    while True:
        if hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        elif isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        else:
            return module


def network_spec(module: nn.Module) -> dict[str, Any] | None:
    """``{"type": ..., "config": {...}}`` for a module of a registered type that has a ``config``, else None."""
    module = unwrap_module(module)
    for tname, (_cfg_cls, mod_cls) in NETWORK_TYPES.items():
        if type(module) is mod_cls and hasattr(module, "config") and hasattr(module.config, "to_dict"):
            return {"type": tname, "config": module.config.to_dict()}
    return None


def normalise_spec(name: str, spec: Any) -> dict[str, Any]:
    """``spec`` checked to be ``{"type": <str>, "config": {...}}`` (a config object is turned into its dict)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("type"), str) or "config" not in spec:
        raise InputError(
            f"the metadata's network entry {name!r} must be {{'type': <str>, 'config': {{...}}}}, got {spec!r}",
            "describe each network by its type (e.g. 'unet') and its config dict",
        )
    out = dict(spec)
    cfg = out["config"]
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise InputError(
            f"the config of network {name!r} must be a dict, got {type(cfg).__name__}",
            "store the network config as a dict (UNetConfig.to_dict())",
        )
    out["config"] = dict(cfg)
    return out


def build_network(net_spec: Mapping[str, Any]) -> nn.Module:
    """Build an (untrained) module from ``{"type": <registered type>, "config": {...}}``."""
    spec = normalise_spec("network", net_spec)
    tname = spec["type"]
    if tname not in NETWORK_TYPES:
        raise InputError(
            f"unknown network type {tname!r}",
            f"known types: {', '.join(sorted(NETWORK_TYPES))}; update MRtoCTSynthesis if the checkpoint is newer",
        )
    cfg_cls, mod_cls = NETWORK_TYPES[tname]
    return mod_cls(cfg_cls.from_dict(spec["config"]))


def expected_state_shapes(net_spec: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and tensor shapes a spec's network has, without allocating it.

    The config is validated (bounds included, see :data:`.unet.CONFIG_LIMITS`) and the module is built on torch's
    ``meta`` device, which records shapes but allocates no memory; so a checkpoint's stored tensor shapes can be
    compared with its metadata before any real network is built.
    """
    with torch.device("meta"):
        net = build_network(net_spec)
    return {k: tuple(int(d) for d in t.shape) for k, t in net.state_dict().items()}
