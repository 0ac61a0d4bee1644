"""Networks of the adversarial methods: discriminators, the ResNet generator and SynDiff's diffusive generator.

Four network types, each a ``(Config, Module)`` pair in :data:`GAN_NETWORK_TYPES` (part of the registry
:data:`..networks.NETWORK_TYPES`), so checkpoints describe them by ``{"type": ..., "config": {...}}`` and
:func:`..checkpoint.load_network` rebuilds them without pickle:

``patchgan`` -- :class:`PatchDiscriminator`
    The 70x70 PatchGAN of pix2pix/CycleGAN: 4x4 convolutions C64-C128-C256 (stride 2), C512 (stride 1)
    and a 1-channel 4x4 output convolution, LeakyReLU(0.2), no normalisation on the first layer. With
    ``n_layers=3`` each output value sees a 70x70 input patch. ``norm``: ``batch`` (pix2pix),
    ``instance`` (CycleGAN) or ``none`` (the WGAN-GP critic: the gradient penalty is per sample, so
    batch statistics must not couple the samples). Output ``[B, 1, h, w]`` patch logits/scores.
``resnet_generator`` -- :class:`ResnetGenerator`
    The CycleGAN generator, also SynDiff's non-diffusive generator (SynDiff Sec. IV-B: three encoding,
    six residual and three decoding blocks): reflection-padded 7x7 convolution, ``n_downsampling``
    stride-2 convolutions, ``n_blocks`` residual blocks, transposed-convolution upsampling, 7x7 output
    convolution and tanh (both modalities live in [-1, 1]).
``time_discriminator`` -- :class:`TimeConditionedDiscriminator`
    SynDiff's discriminators (Sec. IV-B: blocks of two convolutions followed by two-fold downsampling,
    the temporal embedding added onto the feature maps of every block). With ``time_embedding=True``
    it is D_theta(x_{t-k}, x_t, t) of SynDiff Eqs. 11-12 (input: the two images as two channels); with
    ``time_embedding=False`` it is a non-diffusive D_phi (Eqs. 17-18). Returns one logit per sample.
``diffusive_generator`` -- :class:`DiffusiveGenerator`
    SynDiff's diffusive generator G_theta(x_t, y, t, z) (Sec. III-B.1 and IV-B): an encoder-decoder
    UNet whose residual sub-blocks receive (i) a temporal embedding (sinusoidal features of t through a
    two-layer MLP) added as a channel-wise bias and (ii) a random latent z mapped by a three-layer MLP
    that modulates the feature maps through adaptive group normalisation (per-channel scale and shift).
    It predicts x0 (tanh output in [-1, 1]); the posterior q(x_{t-k} | x_t, x0) turns the prediction
    into a sample (SynDiff Eq. 15).

All forward passes are batch-vectorised and work on any H, W the down-sampling allows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from .unet import MAX_LEVELS, SelfAttention, as_int_tuple, check_channel_mults, check_config_int, sinusoidal_embedding

__all__ = [
    "PatchGANConfig", "PatchDiscriminator",
    "ResnetGeneratorConfig", "ResnetGenerator",
    "TimeDiscriminatorConfig", "TimeConditionedDiscriminator",
    "DiffusiveGeneratorConfig", "DiffusiveGenerator",
    "GAN_PRESETS", "gan_preset", "GAN_NETWORK_TYPES",
]


# ---------------------------------------------------------------------------------------------- config base
class _Config:
    """to_dict / from_dict (unknown keys refused) and positive-int checks shared by the configs below."""

    _positive: tuple[str, ...] = ()
    _int_tuples: tuple[str, ...] = ()

    def _check(self) -> None:
        for name in self._int_tuples:
            setattr(self, name, as_int_tuple(getattr(self, name), name))
        for name in self._positive:
            check_config_int(type(self).__name__, name, getattr(self, name))
        if "channel_mults" in self._int_tuples:
            check_channel_mults(type(self).__name__, self.channel_mults)
        if "attention_levels" in self._int_tuples and len(self.attention_levels) > MAX_LEVELS:
            raise InputError(f"{type(self).__name__} attention_levels lists {len(self.attention_levels)} levels",
                             f"list at most {MAX_LEVELS} levels, each once")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in self._int_tuples:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        if not isinstance(d, Mapping):
            raise InputError(f"a {cls.__name__} must be a mapping, got {type(d).__name__}", "pass a dict of fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown {cls.__name__} key(s): {', '.join(map(str, unknown))}",
                             f"remove them or fix the spelling; known keys: {', '.join(sorted(known))}")
        return cls(**dict(d))


_NORMS = ("batch", "instance", "none")


def _norm2d(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)
    return nn.Identity()


def _check_norm(kind: str) -> None:
    if kind not in _NORMS:
        raise InputError(f"unknown normalisation {kind!r}", f"use one of: {', '.join(_NORMS)}")


# ---------------------------------------------------------------------------------------------- PatchGAN
@dataclass
class PatchGANConfig(_Config):
    """:class:`PatchDiscriminator` hyper-parameters; ``n_layers=3`` gives the 70x70 receptive field."""

    in_channels: int
    base_channels: int = 64
    n_layers: int = 3
    norm: str = "batch"
    image_size: int = 256

    _positive = ("in_channels", "base_channels", "n_layers", "image_size")

    def __post_init__(self) -> None:
        self._check()
        _check_norm(self.norm)


class PatchDiscriminator(nn.Module):
    """``forward(x) -> [B, 1, h, w]``: one real/fake score per (overlapping, 70x70) input patch."""

    def __init__(self, config: PatchGANConfig | Mapping[str, Any]):
        super().__init__()
        cfg = config if isinstance(config, PatchGANConfig) else PatchGANConfig.from_dict(config)
        self.config = cfg
        bias = cfg.norm != "batch"  # BatchNorm's shift replaces the bias
        ndf = cfg.base_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, cfg.n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=bias), _norm2d(cfg.norm, ndf * mult),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        for m in self.modules():  # pix2pix/CycleGAN initialisation: N(0, 0.02)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---------------------------------------------------------------------------------------------- ResNet generator
@dataclass
class ResnetGeneratorConfig(_Config):
    """:class:`ResnetGenerator` hyper-parameters (CycleGAN: 9 blocks at 256^2; SynDiff's module: 6)."""

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 64
    n_downsampling: int = 2
    n_blocks: int = 9
    norm: str = "instance"
    image_size: int = 256

    _positive = ("in_channels", "out_channels", "base_channels", "n_downsampling", "n_blocks", "image_size")

    def __post_init__(self) -> None:
        self._check()
        _check_norm(self.norm)


class _ResnetBlock(nn.Module):
    def __init__(self, ch: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm2d(norm, ch), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm2d(norm, ch))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """``forward(x) -> [B, out_channels, H, W]`` in [-1, 1] (H, W multiples of ``2**n_downsampling``)."""

    def __init__(self, config: ResnetGeneratorConfig | Mapping[str, Any]):
        super().__init__()
        cfg = config if isinstance(config, ResnetGeneratorConfig) else ResnetGeneratorConfig.from_dict(config)
        self.config = cfg
        ngf = cfg.base_channels
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(cfg.in_channels, ngf, 7),
                                   _norm2d(cfg.norm, ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(cfg.n_downsampling):
            layers += [nn.Conv2d(ch, 2 * ch, 3, 2, 1), _norm2d(cfg.norm, 2 * ch), nn.ReLU(True)]
            ch *= 2
        layers += [_ResnetBlock(ch, cfg.norm) for _ in range(cfg.n_blocks)]
        for _ in range(cfg.n_downsampling):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1), _norm2d(cfg.norm, ch // 2),
                       nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, cfg.out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 ** self.config.n_downsampling
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise InputError(f"the ResNet generator expects [B, {self.config.in_channels}, H, W] with H, W multiples "
                             f"of {f}, got {tuple(x.shape)}", "use matching slices (model grid) and context")
        return self.model(x)


# ---------------------------------------------------------------------------------------------- time discriminator
@dataclass
class TimeDiscriminatorConfig(_Config):
    """:class:`TimeConditionedDiscriminator` hyper-parameters.

    ``channel_mults``: one entry per down-sampling block (SynDiff uses six at 256^2);
    ``time_embedding``: add the embedding of t to every block (diffusive D) or not (non-diffusive D).
    """

    in_channels: int = 2
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8, 8)
    time_embedding: bool = True
    time_features: int = 32
    image_size: int = 256

    _positive = ("in_channels", "base_channels", "time_features", "image_size")
    _int_tuples = ("channel_mults",)

    def __post_init__(self) -> None:
        self._check()
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise InputError("TimeDiscriminatorConfig channel_mults must be positive integers",
                             "use e.g. [1, 2, 2] (small) or [1, 2, 4, 8, 8, 8]")
        if not isinstance(self.time_embedding, bool):
            raise InputError("TimeDiscriminatorConfig time_embedding must be true or false", "set it to a bool")


class _DownBlock(nn.Module):
    """Two 3x3 convolutions (the time embedding added after the first), 2x average-pool, residual path."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x, emb):
        h = self.conv1(F.leaky_relu(x, 0.2))
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.leaky_relu(h, 0.2))
        h = F.avg_pool2d(h, 2)
        return (h + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2.0)


class TimeConditionedDiscriminator(nn.Module):
    """``forward(x, t=None) -> [B]`` logits; ``x`` is ``[B, in_channels, H, W]`` (for SynDiff's D_theta the
    candidate x_{t-k} and the noisy x_t concatenated), ``t`` a ``[B]`` noise condition (SynDiff time in
    units of the T = 1000 grid, e.g. 250, 500, ...), required when ``time_embedding`` is on."""

    def __init__(self, config: TimeDiscriminatorConfig | Mapping[str, Any]):
        super().__init__()
        cfg = config if isinstance(config, TimeDiscriminatorConfig) else TimeDiscriminatorConfig.from_dict(config)
        self.config = cfg
        base = cfg.base_channels
        emb_dim = 4 * base if cfg.time_embedding else None
        self.time_mlp = (nn.Sequential(nn.Linear(cfg.time_features, emb_dim), nn.LeakyReLU(0.2),
                                       nn.Linear(emb_dim, emb_dim), nn.LeakyReLU(0.2))
                         if cfg.time_embedding else None)
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        chans = [base * m for m in cfg.channel_mults]
        blocks, ch = [], base
        for out_ch in chans:
            blocks.append(_DownBlock(ch, out_ch, emb_dim))
            ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(ch, ch, 3, padding=1)
        self.linear = nn.Linear(ch, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        emb = None
        if self.time_mlp is not None:
            if t is None:
                raise InputError("this discriminator is time-conditioned and needs t", "pass the diffusion time")
            t = torch.as_tensor(t, device=x.device)
            if t.numel() == 1:
                t = t.reshape(1).expand(x.shape[0])
            emb = self.time_mlp(sinusoidal_embedding(t, self.config.time_features))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        h = F.leaky_relu(self.conv_out(F.leaky_relu(h, 0.2)), 0.2)
        return self.linear(h.mean(dim=(2, 3))).squeeze(1)


# ---------------------------------------------------------------------------------------------- diffusive generator
@dataclass
class DiffusiveGeneratorConfig(_Config):
    """:class:`DiffusiveGenerator` hyper-parameters.

    ``in_channels`` = 1 (x_t) + source channels; ``latent_dim``: size of z (SynDiff: 256) and of the
    mapped style vector; ``time_features``: sinusoidal features of t (SynDiff: 32) before the two-layer
    MLP; ``channel_mults``: one entry per resolution level (SynDiff: six levels, channels doubled every
    other level); ``attention_levels``: levels with self-attention (keep them at low resolution).
    """

    in_channels: int = 2
    out_channels: int = 1
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (4,)
    attention_heads: int = 4
    norm_groups: int = 16
    latent_dim: int = 256
    time_features: int = 32
    dropout: float = 0.0
    image_size: int = 256

    _positive = ("in_channels", "out_channels", "base_channels", "num_res_blocks", "attention_heads", "norm_groups",
                 "latent_dim", "time_features", "image_size")
    _int_tuples = ("channel_mults", "attention_levels")

    def __post_init__(self) -> None:
        self._check()
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise InputError("DiffusiveGeneratorConfig channel_mults must be positive integers", "use e.g. [1, 2, 2]")
        if any(not 0 <= a < len(self.channel_mults) for a in self.attention_levels):
            raise InputError(f"attention_levels {list(self.attention_levels)} name levels that do not exist",
                             f"use indices 0..{len(self.channel_mults) - 1} or []")
        for m in set(self.channel_mults):
            if (self.base_channels * m) % self.norm_groups:
                raise InputError(f"{self.base_channels * m} channels are not divisible by norm_groups "
                                 f"{self.norm_groups}",
                                 "choose base_channels as a multiple of norm_groups")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= float(self.dropout) < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout!r}", "use e.g. 0.0")
        self.dropout = float(self.dropout)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)


class _AdaGN(nn.Module):
    """Adaptive group normalisation: GroupNorm whose per-channel scale and shift come from the style w."""

    def __init__(self, groups: int, ch: int, style_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, affine=False)
        self.style = nn.Linear(style_dim, 2 * ch)
        nn.init.zeros_(self.style.weight)
        with torch.no_grad():  # start as plain GroupNorm with unit gain
            self.style.bias.zero_()
            self.style.bias[:ch] = 1.0

    def forward(self, h, w):
        gain, bias = self.style(w)[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * gain + bias


class _StyledResBlock(nn.Module):
    """AdaGN-SiLU-conv, + time bias, AdaGN-SiLU-dropout-conv, with a residual connection."""

    def __init__(self, in_ch, out_ch, emb_dim, style_dim, groups, dropout):
        super().__init__()
        self.norm1 = _AdaGN(groups, in_ch, style_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _AdaGN(groups, out_ch, style_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, temb, w):
        h = self.conv1(F.silu(self.norm1(x, w)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]  # channel-specific bias (SynDiff Sec. III-B.1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, w))))
        return (self.skip(x) + h) / math.sqrt(2.0)


class DiffusiveGenerator(nn.Module):
    """``forward(x_t, cond, t, z=None) -> x0 estimate [B, out_channels, H, W]`` in [-1, 1].

    ``t``: ``[B]`` (or scalar) time in units of the T = 1000 grid; ``z``: ``[B, latent_dim]`` random latent
    (drawn here with the global RNG when None; pass it explicitly for reproducible sampling).
    """

    def __init__(self, config: DiffusiveGeneratorConfig | Mapping[str, Any]):
        super().__init__()
        cfg = config if isinstance(config, DiffusiveGeneratorConfig) else DiffusiveGeneratorConfig.from_dict(config)
        self.config = cfg
        base, groups = cfg.base_channels, cfg.norm_groups
        emb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        z = cfg.latent_dim
        self.mapping = nn.Sequential(nn.Linear(z, z), nn.LeakyReLU(0.2), nn.Linear(z, z), nn.LeakyReLU(0.2),
                                     nn.Linear(z, z))
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        chans = [base * m for m in cfg.channel_mults]
        n = len(chans)
        skip_ch, ch = [base], base
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, out_ch in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_StyledResBlock(ch, out_ch, emb_dim, z, groups, cfg.dropout))
                self.down_attn.append(SelfAttention(out_ch, cfg.attention_heads, groups)
                                      if i in cfg.attention_levels else nn.Identity())
                ch = out_ch
                skip_ch.append(ch)
            if i < n - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_ch.append(ch)
        self.mid1 = _StyledResBlock(ch, ch, emb_dim, z, groups, cfg.dropout)
        self.mid_attn = SelfAttention(ch, cfg.attention_heads, groups)
        self.mid2 = _StyledResBlock(ch, ch, emb_dim, z, groups, cfg.dropout)
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(n)):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(_StyledResBlock(ch + skip_ch.pop(), chans[i], emb_dim, z, groups, cfg.dropout))
                self.up_attn.append(SelfAttention(chans[i], cfg.attention_heads, groups)
                                    if i in cfg.attention_levels else nn.Identity())
                ch = chans[i]
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        assert not skip_ch
        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t, z: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        inp = torch.cat([x_t, cond], dim=1)
        b, c, h, w = inp.shape
        f = cfg.downsample_factor
        if c != cfg.in_channels or h % f or w % f:
            raise InputError(f"the diffusive generator expects {cfg.in_channels} channels and H, W multiples of {f}, "
                             f"got {tuple(inp.shape)}", "use matching slices (model grid) and context")
        t = torch.as_tensor(t, device=inp.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(b)
        temb = self.time_mlp(sinusoidal_embedding(t, cfg.time_features))
        if z is None:
            z = torch.randn(b, cfg.latent_dim, device=inp.device, dtype=inp.dtype)
        style = self.mapping(z)
        hcur = self.conv_in(inp)
        skips = [hcur]
        per_level = cfg.num_res_blocks
        for j, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            hcur = attn(block(hcur, temb, style))
            skips.append(hcur)
            level = j // per_level
            if j % per_level == per_level - 1 and level < len(self.downsample):
                hcur = self.downsample[level](hcur)
                skips.append(hcur)
        hcur = self.mid2(self.mid_attn(self.mid1(hcur, temb, style)), temb, style)
        per_up = cfg.num_res_blocks + 1
        for j, (block, attn) in enumerate(zip(self.up, self.up_attn)):
            hcur = attn(block(torch.cat([hcur, skips.pop()], dim=1), temb, style))
            level = j // per_up
            if j % per_up == per_up - 1 and level < len(self.upsample):
                hcur = self.upsample[level](F.interpolate(hcur, scale_factor=2.0, mode="nearest"))
        return torch.tanh(self.conv_out(F.silu(self.norm_out(hcur))))


# ---------------------------------------------------------------------------------------------- presets
#: "tiny": CPU-trainable sizes for tests and the phantom demo; "full": the papers' sizes for 256x256.
GAN_PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "patchgan": dict(base_channels=8, n_layers=3),
        "resnet_generator": dict(base_channels=8, n_downsampling=2, n_blocks=2),
        "time_discriminator": dict(base_channels=16, channel_mults=(1, 2, 2)),
        "diffusive_generator": dict(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                                    attention_levels=(), norm_groups=8, latent_dim=32),
    },
    "full": {
        "patchgan": dict(base_channels=64, n_layers=3),
        "resnet_generator": dict(base_channels=64, n_downsampling=2, n_blocks=9),
        "time_discriminator": dict(base_channels=64, channel_mults=(1, 2, 4, 8, 8, 8)),
        "diffusive_generator": dict(base_channels=64, channel_mults=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                                    attention_levels=(4,), norm_groups=16, latent_dim=256),
    },
}

_CONFIGS = {"patchgan": PatchGANConfig, "resnet_generator": ResnetGeneratorConfig,
            "time_discriminator": TimeDiscriminatorConfig, "diffusive_generator": DiffusiveGeneratorConfig}
_MODULES = {"patchgan": PatchDiscriminator, "resnet_generator": ResnetGenerator,
            "time_discriminator": TimeConditionedDiscriminator, "diffusive_generator": DiffusiveGenerator}


def gan_preset(kind: str, preset: str, **fields):
    """The config of network type ``kind`` at preset ``preset`` ("tiny" | "full"), with ``fields`` overriding."""
    if preset not in GAN_PRESETS:
        raise InputError(f"unknown network preset {preset!r}", f"use one of: {', '.join(GAN_PRESETS)}")
    kw = dict(GAN_PRESETS[preset][kind])
    kw.update(fields)
    return _CONFIGS[kind](**kw)


#: the four types as checkpoint network types (see :data:`..networks.NETWORK_TYPES`)
GAN_NETWORK_TYPES = {name: (cfg_cls, _MODULES[name]) for name, cfg_cls in _CONFIGS.items()}
