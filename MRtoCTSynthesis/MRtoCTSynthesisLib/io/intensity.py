"""Intensity mappings between scanner units and the model's range [-1, 1].

CT (fixed, global mapping; never per slice or per volume, which would destroy HU):
    HU is clipped to [HU_MIN, HU_MAX] = [-1024, 3071] and mapped linearly,
    ``x = 2 (HU - HU_MIN) / (HU_MAX - HU_MIN) - 1``, so -1024 HU -> -1, 3071 HU -> +1, 0 HU -> -0.49988.
    The inverse is ``HU = (x + 1) / 2 (HU_MAX - HU_MIN) + HU_MIN`` (model outputs are clipped to [-1, 1] first).
    One model unit is 2047.5 HU, so a model-scale noise sigma of 0.1 is ~205 HU.

MR (per volume, robust percentiles): MR intensities have no physical unit, so each volume is scaled by its own
    robust range: ``lo``/``hi`` are the 0.5th/99.5th percentiles of the voxels above the volume's background
    threshold (the mean intensity, a crude foreground mask), then ``x = 2 (v - lo) / (hi - lo) - 1`` clipped to
    [-1, 1]. Background therefore sits near -1 and the brightest 0.5 % of foreground saturates at +1.
    :class:`MRNormalization` records ``lo``/``hi`` so the mapping is reproducible and can be reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError

HU_MIN = -1024.0
HU_MAX = 3071.0
HU_RANGE = HU_MAX - HU_MIN
MR_PERCENTILES = (0.5, 99.5)

CT_MAPPING = {
    "type": "linear_hu",
    "hu_min": HU_MIN,
    "hu_max": HU_MAX,
    "model_min": -1.0,
    "model_max": 1.0,
}


def hu_to_model(hu):
    """Map CT in HU to the model range [-1, 1] (clip to [HU_MIN, HU_MAX] first). Works on numpy and torch."""
    lib = _lib(hu)
    clipped = lib.clip(hu, HU_MIN, HU_MAX)
    return (clipped - HU_MIN) * (2.0 / HU_RANGE) - 1.0


def model_to_hu(x):
    """Inverse of :func:`hu_to_model`: model values (clipped to [-1, 1]) back to HU."""
    lib = _lib(x)
    return (lib.clip(x, -1.0, 1.0) + 1.0) * (HU_RANGE / 2.0) + HU_MIN


def model_std_to_hu(std):
    """Scale a standard deviation from model units to HU (the CT mapping is linear: factor HU_RANGE/2)."""
    return std * (HU_RANGE / 2.0)


def _lib(a):
    try:
        import torch  # here, not at the top: the numpy path of this module never loads torch

        if isinstance(a, torch.Tensor):
            return torch
    except ImportError:  # pragma: no cover - torch is a hard dependency, but keep this module light
        pass
    return np


def check_ct_in_hu(array: np.ndarray, what: str = "reference CT") -> None:
    """Refuse a CT that is clearly not in Hounsfield units.

    A CT in HU has air near -1000. A volume whose values are all >= 0 and reach above 1000 was almost
    certainly stored without its DICOM rescale (raw 0..4095 values: HU = stored * slope + intercept, usually
    intercept -1024). Raises :class:`InputError` naming the fix.
    """
    a = np.asarray(array)
    if a.size == 0:
        raise InputError(f"{what} is empty.", "give a non-empty CT volume.")
    lo, hi = float(a.min()), float(a.max())
    if lo == hi:
        raise InputError(f"{what} is constant ({lo:g} everywhere).", "give the real CT volume.")
    if lo >= 0.0 and hi > 1000.0:
        raise InputError(
            f"{what} does not look like Hounsfield units: its values span {lo:g}..{hi:g} with no air "
            "(air is about -1000 HU).",
            "apply the DICOM rescale first (HU = stored * RescaleSlope + RescaleIntercept, usually intercept -1024); "
            "e.g. subtract 1024 if the scanner stored HU + 1024.",
        )
    if hi - lo < 200.0:
        raise InputError(
            f"{what} spans only {lo:g}..{hi:g}; a CT in HU spans air (-1000) to bone (> 300).",
            "check that this is a CT in HU and not a mask, label map or normalised image.",
        )


@dataclass(frozen=True)
class MRNormalization:
    """Per-volume robust MR scaling: ``[lo, hi]`` -> ``[-1, 1]`` (see module docstring)."""

    lo: float
    hi: float
    percentiles: tuple[float, float] = MR_PERCENTILES

    @classmethod
    def fit(cls, array: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES,
            what: str = "MRI") -> "MRNormalization":
        a = np.asarray(array, dtype=np.float64)
        if a.size == 0:
            raise InputError(f"{what} is empty.", "give a non-empty MR volume.")
        if not np.isfinite(a).all():
            raise InputError(f"{what} has NaN/Inf voxels.", "fill them before synthesis.")
        amin, amax = float(a.min()), float(a.max())
        if amax - amin <= 1e-6 * max(1.0, abs(amax)):
            raise InputError(f"{what} is constant ({amin:g} everywhere); nothing to synthesise from.",
                             "check that the right volume was selected.")
        fg = a[a > a.mean()]
        if fg.size < 16:
            fg = a.ravel()
        lo, hi = np.percentile(fg, percentiles)
        if hi - lo <= 1e-6 * max(1.0, abs(hi)):
            lo, hi = amin, amax
        return cls(float(lo), float(hi), tuple(percentiles))

    def apply(self, array):
        lib = _lib(array)
        x = (array - self.lo) * (2.0 / (self.hi - self.lo)) - 1.0
        return lib.clip(x, -1.0, 1.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["type"] = "robust_percentile"
        d["percentiles"] = list(self.percentiles)
        return d


def mr_mapping_description(percentiles: tuple[float, float] = MR_PERCENTILES) -> dict:
    """The MR normalisation recipe as stored in checkpoints (the per-volume lo/hi are computed at run time)."""
    return {"type": "robust_percentile", "percentiles": list(percentiles), "foreground": "voxels above mean",
            "model_min": -1.0, "model_max": 1.0}
