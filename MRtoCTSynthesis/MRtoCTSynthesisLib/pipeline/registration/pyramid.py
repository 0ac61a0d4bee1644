"""Multi-resolution pyramid with per-axis shrink factors and smoothing in millimetres.

SimpleITK's own pyramid (``SetShrinkFactorsPerLevel``) applies one shrink factor to every axis. On a
0.93 x 0.93 x 3 mm MRI a factor of 4 turns the 3 mm slices into 12 mm ones, and smoothing given in
voxels smooths across slices by whole slices: the coarse levels then see little through-plane
structure. Here each level has a *target resolution* in mm (a multiple of the finest spacing of the
two images) and each image is brought to it on its own, axis by axis:

* shrink factor along an axis = ``floor(target / spacing)`` (at least 1), so an axis that is already
  as coarse as the target (a thick slice axis) keeps factor 1 and is never shrunk;
* Gaussian smoothing along an axis with ``sigma = sqrt(target^2 - spacing^2) / 2`` mm (0 when the
  spacing already reaches the target): it brings that axis' resolution to about the target before
  the shrink, so the shrink does not alias.

Each level is then registered on these pre-computed images with SimpleITK's own pyramid switched off
(shrink 1, smoothing 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import SimpleITK as sitk

MIN_LEVEL_VOXELS = 8  # a shrunken image keeps at least this many voxels along every axis
LEVEL_FACTORS = (4, 2, 1)  # level targets as multiples of the finest spacing, coarse to fine


@dataclass(frozen=True)
class Level:
    """One pyramid level: target resolution (mm) and, per image, shrink factors and smoothing sigmas (mm)."""

    target_mm: float
    fixed_shrink: tuple
    fixed_sigma_mm: tuple
    moving_shrink: tuple
    moving_sigma_mm: tuple

    def describe(self) -> str:
        f = "x".join(str(s) for s in self.fixed_shrink)
        m = "x".join(str(s) for s in self.moving_shrink)
        return f"{self.target_mm:.2f} mm (shrink fixed {f}, moving {m})"


def axis_plan(spacing: Sequence[float], size: Sequence[int], target_mm: float) -> tuple[tuple, tuple]:
    """Shrink factors and smoothing sigmas (mm) bringing an image of ``spacing``/``size`` to ``target_mm``."""
    shrink, sigma = [], []
    for sp, n in zip(spacing, size):
        f = max(1, int(math.floor(target_mm / sp + 1e-6)))
        f = max(1, min(f, int(n) // MIN_LEVEL_VOXELS))  # keep enough voxels along this axis
        shrink.append(f)
        sigma.append(math.sqrt(max(0.0, target_mm ** 2 - sp ** 2)) / 2.0)
    return tuple(shrink), tuple(round(s, 4) for s in sigma)


def plan_levels(fixed: sitk.Image, moving: sitk.Image, factors: Sequence[int] = LEVEL_FACTORS) -> list[Level]:
    """Coarse-to-fine levels for ``fixed``/``moving``; levels identical to a finer one are dropped."""
    base = min(min(fixed.GetSpacing()), min(moving.GetSpacing()))
    levels: list[Level] = []
    for k in factors:
        target = base * k
        fs, fsg = axis_plan(fixed.GetSpacing(), fixed.GetSize(), target)
        ms, msg = axis_plan(moving.GetSpacing(), moving.GetSize(), target)
        lv = Level(round(target, 4), fs, fsg, ms, msg)
        if levels and (levels[-1].fixed_shrink, levels[-1].fixed_sigma_mm, levels[-1].moving_shrink,
                       levels[-1].moving_sigma_mm) == (fs, fsg, ms, msg):
            continue
        levels.append(lv)
    return levels


def level_image(image: sitk.Image, shrink: Sequence[int], sigma_mm: Sequence[float]) -> sitk.Image:
    """``image`` smoothed by ``sigma_mm`` per axis (physical units) and shrunk by ``shrink`` per axis."""
    out = image
    if any(s > 0 for s in sigma_mm):
        out = sitk.DiscreteGaussian(out, [float(s) ** 2 for s in sigma_mm], 64, 0.01, True)
    if any(int(f) > 1 for f in shrink):
        out = sitk.Shrink(out, [int(f) for f in shrink])
    return out
