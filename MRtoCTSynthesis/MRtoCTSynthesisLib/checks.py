"""The engine's small shared helpers, one of each kind: option range checks and the per-sample broadcast.

* :func:`check_real` / :func:`check_int` validate a numeric setting (a diffusion schedule value, a sampler
  option) and raise :class:`~.errors.InputError` naming the setting, the allowed range and the value.
  Bounds are closed unless ``lo_open`` / ``hi_open`` say otherwise.
* :func:`per_sample` shapes a schedule coefficient (a 0-d tensor, or one value per sample ``[B]``) to multiply
  a batch ``x`` of shape ``[B, ...]``: cast to ``x``'s dtype and device, reshaped to ``[B, 1, ..., 1]``.
  A ``[n]`` coefficient with ``n`` neither 1 nor ``B`` is refused (it would silently broadcast along the
  wrong axis).

Every copy that existed before (``diffusion/process.py``, ``samplers/base.py``, ``methods/
conditional_diffusion.py``, ``methods/syndiff.py``, ``methods/ddmm_synth.py``) now calls these.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .errors import InputError

__all__ = ["check_real", "check_int", "per_sample"]


def check_real(value: Any, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
               hi_open: bool = False, what: str = "option", fix: str | None = None) -> float:
    """``value`` as a float if it is a finite real number in the range, else :class:`InputError`.

    The range is ``[lo, hi]``; ``lo_open`` / ``hi_open`` exclude the bound (``(lo, hi]`` ...); ``None`` leaves
    that side unbounded. ``what`` names the kind of setting in the message (``"sampler option"``, ``"diffusion
    setting"``). Booleans are refused (``True`` is not a number a user meant).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InputError(f"{what} {name!r} must be a finite number, got {value!r}", fix)
    v = float(value)
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise InputError(f"{what} {name!r} must be " + " and ".join(s for s in (lo_s, hi_s) if s)
                         + f", got {value!r}", fix)
    return v


def check_int(value: Any, name: str, *, minimum: int = 1, what: str = "option", fix: str | None = None) -> int:
    """``value`` as an int if it is a whole number ``>= minimum`` (booleans refused), else :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise InputError(f"{what} {name!r} must be a whole number >= {minimum}, got {value!r}",
                         fix or f"pass {name} as an integer >= {minimum}")
    return int(value)


def per_sample(coef: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample coefficient, cast to ``x``'s dtype/device and shaped ``[B, 1, ..., 1]`` for ``x``.

    ``coef``: a number, a 0-d tensor (returned 0-d, it broadcasts as it is) or a ``[n]`` tensor with ``n`` equal
    to ``x.shape[0]`` or 1. Only the shape and dtype change, never the values (beyond the dtype cast).
    """
    c = torch.as_tensor(coef, device=x.device)
    c = c.to(device=x.device, dtype=x.dtype)
    if c.dim() == 0 or x.dim() == 0:
        return c
    if c.dim() != 1 or c.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"a per-sample coefficient must be a number or a [B] tensor with B = {x.shape[0]} "
                         f"(the batch of x), got shape {tuple(c.shape)}")
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))
