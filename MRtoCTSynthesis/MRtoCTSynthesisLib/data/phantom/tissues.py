"""Tissue labels, regions and weightings shared by every phantom, and :class:`PhantomCase`, one generated case."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import InputError
from ...io.volume import Geometry, Volume

AIR, FAT, MUSCLE, FLUID, ORGAN, TRABECULAR, CORTICAL, GAS, GREY_MATTER, WHITE_MATTER = range(10)

LABEL_NAMES: dict[int, str] = {
    AIR: "air",
    FAT: "fat",
    MUSCLE: "muscle",
    FLUID: "fluid",
    ORGAN: "soft_organ",
    TRABECULAR: "trabecular_bone",
    CORTICAL: "cortical_bone",
    GAS: "gas",
    GREY_MATTER: "grey_matter",
    WHITE_MATTER: "white_matter",
}

REGIONS = ("pelvis", "head")
MR_WEIGHTINGS = ("t1", "t2")

DEFAULT_SIZE = (128, 128, 48)
DEFAULT_SPACING = (3.0, 3.0, 3.0)



@dataclass
class PhantomCase:
    """One paired phantom: CT (HU), T1 and T2 MR, body mask and tissue labels on one grid.

    All five volumes share exactly the same :class:`Geometry`. ``meta`` holds the seed, the region,
    ``label_names`` (label value -> tissue name), the per-case CT values per label (``ct_hu``), the
    noise levels (``ct_noise_sigma``, ``mr_noise_sigma``) and a few anatomy parameters.
    """

    ct: Volume
    mr_t1: Volume
    mr_t2: Volume
    mask: Volume
    labels: Volume
    meta: dict = field(default_factory=dict)

    @property
    def geometry(self) -> Geometry:
        return self.ct.geometry

    def mr(self, weighting: str = "t2") -> Volume:
        """The MR volume of the given weighting (``"t1"`` or ``"t2"``)."""
        w = check_weighting(weighting)
        return self.mr_t1 if w == "t1" else self.mr_t2


def check_weighting(weighting: str) -> str:
    w = str(weighting).lower()
    if w not in MR_WEIGHTINGS:
        raise InputError(f"unknown MR weighting '{weighting}'.", f"use one of: {', '.join(MR_WEIGHTINGS)}.")
    return w
