"""Neural networks of the engine (currently the conditional UNet shared by all methods)."""

from __future__ import annotations

from .unet import ConditionalUNet, UNetConfig, count_parameters, sinusoidal_embedding

__all__ = [
    "ConditionalUNet",
    "UNetConfig",
    "count_parameters",
    "sinusoidal_embedding",
    "unet_preset",
    "UNET_PRESETS",
]

#: Recommended sizes. "tiny": trains on a laptop CPU (0.30 M parameters with 2 input channels; a forward
#: pass of 16 slices of 64x64 takes ~0.2 s on 2 CPU cores; self-attention only at 16x16 and in the
#: middle, since attention at 32x32 costs more than all the convolutions together on a CPU);
#: "full": GPU model for 256x256 slices (42.9 M parameters; attention at 32x32 and in the middle).
UNET_PRESETS: dict[str, dict] = {
    "tiny": dict(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1, attention_levels=(2,),
                 attention_heads=4, norm_groups=8, image_size=64),
    "full": dict(base_channels=96, channel_mults=(1, 2, 2, 4), num_res_blocks=2, attention_levels=(3,),
                 attention_heads=8, norm_groups=32, dropout=0.1, image_size=256),
}


def unet_preset(name: str, in_channels: int, out_channels: int = 1, **overrides) -> UNetConfig:
    """A :class:`UNetConfig` from :data:`UNET_PRESETS` (``"tiny"`` or ``"full"``), with overrides."""
    from ...errors import InputError

    if name not in UNET_PRESETS:
        raise InputError(f"unknown UNet preset {name!r}", f"use one of: {', '.join(UNET_PRESETS)}")
    kwargs = dict(UNET_PRESETS[name])
    kwargs.update(overrides)
    return UNetConfig(in_channels=in_channels, out_channels=out_channels, **kwargs)
