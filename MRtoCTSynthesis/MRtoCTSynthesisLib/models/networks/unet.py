"""Conditional UNet used by every method of the engine.

One network class serves all methods:

* conditional DDPM (epsilon prediction) and the conditional VE-SDE score model (parameterised as a
  noise prediction too), both with ``time_embedding=True``: the MR condition is concatenated with the
  noisy CT on the channel axis, as in the conditional objective of DDMM-Synth Eq. 1 (SR3-style
  conditioning, also Lyu & Wang Eqs. 23-33), and the noise level enters through a sinusoidal
  embedding of a continuous scalar (for example ``1000 * t``);
* the CNN (UNet + MSE) and GAN-generator baselines, with ``time_embedding=False``: the same network
  without the embedding path, which then ignores ``noise_cond`` (Lyu & Wang use "UNet of CNN and
  WGAN-GP without time-embedding").

Architecture (the usual DDPM/improved-DDPM layout, written from the papers' descriptions): an input
3x3 convolution, ``len(channel_mults)`` resolution levels each holding ``num_res_blocks`` residual
blocks (GroupNorm + SiLU + 3x3 conv, the embedding applied as a scale/shift of the second
normalisation), optional multi-head self-attention at low-resolution levels, a strided-convolution
downsampling between levels, a middle block (residual, attention, residual), a mirrored decoder that
concatenates the encoder activations (skip connections) and upsamples with nearest-neighbour
interpolation + 3x3 conv, and a zero-initialised output convolution, so an untrained network outputs
zeros (the standard choice for diffusion denoisers).

``space_to_depth = s > 1`` (the CPU preset) folds each s x s block of input pixels into channels before the
input convolution (``pixel_unshuffle``) and unfolds the output convolution's ``s * s`` channels back into
pixels (``pixel_shuffle``, a sub-pixel convolution): the network reads and writes images at full resolution
but its first level runs at 1/s of it with s^2 times the channels. On a CPU a 3x3 convolution with 16-24
channels on a large image runs 4-5x below the throughput of one with 32 or more channels on a smaller one
(memory-bound; benchmarks/unet_cpu.py), so this is much cheaper per pixel than a full-resolution first level.

The forward pass has no Python loop over samples; it works under ``torch.autocast`` (bf16/fp16:
normalisation and the sinusoidal embedding run in float32) and with ``channels_last`` tensors.
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

__all__ = ["UNetConfig", "ConditionalUNet", "count_parameters", "sinusoidal_embedding", "CONFIG_LIMITS",
           "check_config_int", "check_channel_mults"]


#: Upper bounds of the integer fields of every network config (UNet and the GAN networks). They are far above
#: any useful model (the "full" preset: 96 base channels, 2 residual blocks, 4 levels) and keep a config read from
#: checkpoint metadata from asking for a network that takes hours or all memory to build; a checkpoint's tensors
#: are then compared with the config's shapes before any real network is built (models.checkpoint).
CONFIG_LIMITS = {"in_channels": 1024, "out_channels": 1024, "base_channels": 1024, "num_res_blocks": 16,
                 "attention_heads": 64, "norm_groups": 1024, "image_size": 4096, "n_layers": 8, "n_downsampling": 8,
                 "n_blocks": 64, "time_features": 4096, "latent_dim": 4096}
#: at most this many resolution levels (entries of channel_mults), each multiplier at most MAX_CHANNEL_MULT
MAX_LEVELS = 8
MAX_CHANNEL_MULT = 32


def check_config_int(owner: str, name: str, value: Any) -> int:
    """A positive whole-number config field within :data:`CONFIG_LIMITS` (:class:`InputError` otherwise)."""
    hi = CONFIG_LIMITS.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{owner} field {name!r} must be a positive integer, got {value!r}",
                         f"set {name} to an integer >= 1")
    if hi is not None and value > hi:
        raise InputError(f"{owner} field {name!r} is {value}, above the limit of {hi}",
                         f"set {name} between 1 and {hi}; a checkpoint whose metadata asks for more was edited or "
                         "damaged: use an unmodified checkpoint")
    return value


def check_channel_mults(owner: str, mults: tuple[int, ...]) -> None:
    """``channel_mults``: 1 to :data:`MAX_LEVELS` entries, each between 1 and :data:`MAX_CHANNEL_MULT`."""
    if not mults or len(mults) > MAX_LEVELS or any(m < 1 or m > MAX_CHANNEL_MULT for m in mults):
        raise InputError(
            f"{owner} channel_mults must be 1 to {MAX_LEVELS} integers between 1 and {MAX_CHANNEL_MULT}, "
            f"got {list(mults)}",
            "use for example [1, 2] (small CPU model) or [1, 2, 2, 4] (GPU model)")


def as_int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InputError(
            f"UNet config field {name!r} must be a list of integers, got {value!r}",
            f"write {name} as a list, for example [1, 2, 2]",
        )
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(
                f"UNet config field {name!r} must hold integers, got {v!r}",
                f"write {name} as a list of integers",
            )
        out.append(int(v))
    return tuple(out)


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`ConditionalUNet` (JSON-able through :meth:`to_dict`).

    ``in_channels`` is the total number of input channels: condition channels (MR slices) plus target
    channels (the noisy CT, or nothing extra for the CNN baseline's single MR input). ``attention_levels``
    are indices into ``channel_mults`` (level ``i`` works at resolution ``image_size / 2**i``); keep
    them at low resolution. ``image_size`` documents the training size; any H and W divisible by
    ``2 ** (len(channel_mults) - 1)`` are accepted at run time.
    """

    in_channels: int
    out_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)
    attention_heads: int = 4
    dropout: float = 0.0
    time_embedding: bool = True
    norm_groups: int = 8
    image_size: int = 64
    space_to_depth: int = 1

    def __post_init__(self) -> None:
        self.channel_mults = as_int_tuple(self.channel_mults, "channel_mults")
        self.attention_levels = as_int_tuple(self.attention_levels, "attention_levels")
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks",
                     "attention_heads", "norm_groups", "image_size", "space_to_depth"):
            check_config_int("UNet config", name, getattr(self, name))
        if not isinstance(self.time_embedding, bool):
            raise InputError(
                f"UNet config field 'time_embedding' must be true or false, got {self.time_embedding!r}",
                "set time_embedding to true (diffusion) or false (CNN/GAN baselines)",
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= float(self.dropout) < 1.0:
            raise InputError(
                f"UNet config field 'dropout' must be in [0, 1), got {self.dropout!r}",
                "set dropout to a probability such as 0.0 or 0.1",
            )
        self.dropout = float(self.dropout)
        if self.space_to_depth not in (1, 2, 4):
            raise InputError(f"UNet space_to_depth must be 1, 2 or 4, got {self.space_to_depth!r}",
                             "use 1 (first level at full resolution) or 2 (the CPU preset)")
        check_channel_mults("UNet", self.channel_mults)
        n_levels = len(self.channel_mults)
        bad = [a for a in self.attention_levels if not 0 <= a < n_levels]
        if bad:
            raise InputError(
                f"UNet attention_levels {list(self.attention_levels)} name levels that do not exist "
                f"(channel_mults has {n_levels} levels, indices 0..{n_levels - 1})",
                f"use indices between 0 and {n_levels - 1}, preferably the last ones (low resolution), or []",
            )
        if len(set(self.attention_levels)) != len(self.attention_levels):
            raise InputError(
                f"UNet attention_levels {list(self.attention_levels)} repeats a level",
                "list each level at most once",
            )
        if self.base_channels % self.norm_groups:
            raise InputError(
                f"UNet base_channels ({self.base_channels}) is not divisible by norm_groups ({self.norm_groups})",
                "choose base_channels as a multiple of norm_groups (e.g. 32 with 8 groups)",
            )
        for a in set(self.attention_levels) | {n_levels - 1}:
            ch = self.base_channels * self.channel_mults[a]
            if ch % self.attention_heads:
                raise InputError(
                    f"UNet attention at level {a} has {ch} channels, not divisible by attention_heads "
                    f"({self.attention_heads})",
                    "choose attention_heads dividing base_channels * channel_mults at the attention levels",
                )
        if self.image_size % self.downsample_factor:
            raise InputError(
                f"UNet image_size {self.image_size} is not divisible by {self.downsample_factor} "
                f"(space_to_depth * 2 ** (number of levels - 1))",
                f"use an image_size that is a multiple of {self.downsample_factor}",
            )

    @property
    def downsample_factor(self) -> int:
        """H and W of the inputs must be multiples of this: ``space_to_depth * 2 ** (len(channel_mults) - 1)``."""
        return self.space_to_depth * 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_levels"] = list(self.attention_levels)
        if self.space_to_depth == 1:  # the default: left out, so such configs read as before (older engines too)
            del d["space_to_depth"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are refused (they usually mean a typo or a newer file)."""
        if not isinstance(d, Mapping):
            raise InputError(
                f"a UNet config must be a mapping of field names to values, got {type(d).__name__}",
                "pass a dict such as {'in_channels': 2, 'base_channels': 32}",
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(
                f"unknown UNet config key(s): {', '.join(map(str, unknown))}",
                f"remove them or fix the spelling; known keys: {', '.join(sorted(known))}",
            )
        if "in_channels" not in d:
            raise InputError("the UNet config has no 'in_channels'",
                             "add in_channels (condition channels + target channels)")
        return cls(**dict(d))


def sinusoidal_embedding(noise_cond: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of a continuous scalar per sample: ``[B] -> [B, dim]``.

    Accepts any real value (``1000 * t`` for continuous time, a DDPM step index, a log noise scale);
    always computed in float32, even under autocast.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=noise_cond.device, dtype=torch.float32) / half
    )
    args = noise_cond.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding scales and shifts the second normalisation."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch) if emb_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb_proj is not None:
            scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels of a feature map, with a residual connection."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))
        # [B, 3C, H, W] -> [3, B, heads, HW, C/heads], made contiguous: scaled_dot_product_attention takes
        # its fused (flash) kernel only for contiguous q/k/v and otherwise falls back to the unfused math
        # path, ~4-8x slower on a CPU (benchmarks/unet_cpu.py); same values to float rounding.
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).permute(1, 0, 2, 4, 3).contiguous()
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = out.permute(0, 1, 3, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class _Level(nn.Module):
    """Holds the residual blocks (and attention blocks) of one resolution level."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()  # empty, or one entry per residual block


class ConditionalUNet(nn.Module):
    """Conditional UNet: ``forward(x, cond, noise_cond) -> [B, out_channels, H, W]``.

    ``x`` ``[B, C_target, H, W]`` (noisy CT for diffusion; may be ``None`` for the CNN baseline when all
    input is in ``cond``), ``cond`` ``[B, C_cond, H, W]`` or ``None`` (MR slices), ``noise_cond`` ``[B]``
    (or a scalar, broadcast to the batch) continuous noise level, e.g. ``1000 * t``; ignored when the
    config has ``time_embedding=False``. ``C_cond + C_target`` must equal ``config.in_channels``.
    """

    def __init__(self, config: UNetConfig | Mapping[str, Any]):
        super().__init__()
        if not isinstance(config, UNetConfig):
            config = UNetConfig.from_dict(config)
        self.config = config
        cfg = config
        groups = cfg.norm_groups
        base = cfg.base_channels
        emb_dim = 4 * base if cfg.time_embedding else None

        if cfg.time_embedding:
            self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        else:
            self.time_mlp = None

        s2 = cfg.space_to_depth ** 2
        self.conv_in = nn.Conv2d(cfg.in_channels * s2, base, 3, padding=1)

        chans = [base * m for m in cfg.channel_mults]
        n_levels = len(chans)
        skip_chans = [base]
        ch = base
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, out_ch in enumerate(chans):
            level = _Level()
            for _ in range(cfg.num_res_blocks):
                level.res.append(_ResBlock(ch, out_ch, emb_dim, groups, cfg.dropout))
                if i in cfg.attention_levels:
                    level.attn.append(SelfAttention(out_ch, cfg.attention_heads, groups))
                ch = out_ch
                skip_chans.append(ch)
            self.down.append(level)
            if i < n_levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chans.append(ch)

        self.mid_res1 = _ResBlock(ch, ch, emb_dim, groups, cfg.dropout)
        self.mid_attn = SelfAttention(ch, cfg.attention_heads, groups)
        self.mid_res2 = _ResBlock(ch, ch, emb_dim, groups, cfg.dropout)

        self.up = nn.ModuleList()  # ordered from the lowest resolution to the highest
        self.upsample = nn.ModuleList()
        for i in reversed(range(n_levels)):
            out_ch = chans[i]
            level = _Level()
            for _ in range(cfg.num_res_blocks + 1):
                level.res.append(_ResBlock(ch + skip_chans.pop(), out_ch, emb_dim, groups, cfg.dropout))
                if i in cfg.attention_levels:
                    level.attn.append(SelfAttention(out_ch, cfg.attention_heads, groups))
                ch = out_ch
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        assert not skip_chans

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels * s2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # ------------------------------------------------------------------ helpers
    def _check_inputs(self, x: torch.Tensor | None, cond: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        parts = [t for t in (cond, x) if t is not None]
        if not parts:
            raise InputError("the UNet got neither an image nor a condition", "pass x and/or cond")
        for name, t in (("cond", cond), ("x", x)):
            if t is not None and t.dim() != 4:
                raise InputError(
                    f"UNet input {name} must be a 4-D tensor [B, C, H, W], got shape {tuple(t.shape)}",
                    "add the missing batch or channel axis",
                )
        if x is not None and cond is not None and (x.shape[0] != cond.shape[0] or x.shape[2:] != cond.shape[2:]):
            raise InputError(
                f"UNet inputs disagree: x has shape {tuple(x.shape)}, cond has {tuple(cond.shape)}",
                "give x and cond the same batch size, height and width",
            )
        total = sum(t.shape[1] for t in parts)
        if total != cfg.in_channels:
            raise InputError(
                f"the UNet expects {cfg.in_channels} input channels (condition + target) but got {total} "
                f"(cond: {None if cond is None else cond.shape[1]}, x: {None if x is None else x.shape[1]})",
                "use the number of MR context slices the network was trained with, or a matching checkpoint",
            )
        h, w = parts[0].shape[2:]
        f = cfg.downsample_factor
        if h % f or w % f:
            raise InputError(
                f"image size {h}x{w} is not divisible by {f}, which this UNet needs "
                f"({len(cfg.channel_mults)} resolution levels)",
                f"pad or crop the slices to a multiple of {f} (e.g. {math.ceil(h / f) * f}x{math.ceil(w / f) * f})",
            )
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _embed(self, noise_cond: torch.Tensor | float | None, batch: int, device: torch.device) -> torch.Tensor:
        if noise_cond is None:
            raise InputError("this UNet has a time embedding and needs noise_cond",
                             "pass the noise level (e.g. 1000 * t) for each sample")
        t = torch.as_tensor(noise_cond, device=device)
        if t.dim() == 0 or t.numel() == 1:
            t = t.reshape(1).expand(batch)
        if t.dim() != 1 or t.shape[0] != batch:
            raise InputError(
                f"noise_cond must have shape [B] = [{batch}] (or be a scalar), got {tuple(t.shape)}",
                "pass one noise level per sample",
            )
        emb = sinusoidal_embedding(t, self.config.base_channels)
        return self.time_mlp(emb)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor | None,
        cond: torch.Tensor | None = None,
        noise_cond: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        inp = self._check_inputs(x, cond)
        emb = self._embed(noise_cond, inp.shape[0], inp.device) if self.time_mlp is not None else None

        s2d = self.config.space_to_depth
        h = self.conv_in(F.pixel_unshuffle(inp, s2d) if s2d > 1 else inp)
        skips = [h]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.res):
                h = block(h, emb)
                if len(level.attn):
                    h = level.attn[j](h)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)

        h = self.mid_res1(h, emb)
        h = self.mid_attn(h)
        h = self.mid_res2(h, emb)

        for i, level in enumerate(self.up):
            for j, block in enumerate(level.res):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                if len(level.attn):
                    h = level.attn[j](h)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))

        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, s2d) if s2d > 1 else out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
