"""MR contrast from tissue properties: relaxation times per tissue and field strength, and signal equations.

Every tissue label has a water and a fat compartment (:class:`Tissue`: proton density ``pd``, fat fraction
``ff``, the water compartment's ``t1``/``t2`` in ms at 1.5 T, and a ``t2s_ratio`` T2*/T2 for gradient
echoes); the fat compartment has the relaxation times of adipose tissue. Values are rounded textbook figures
for adult tissue (1.5 T; at other field strengths T1 scales as ``(B0 / 1.5) ** 0.3`` for water, ``** 0.15``
for fat, and T2 a little down), varied per case by :func:`jitter`. Cortical bone's T2 (well below a
millisecond) makes it dark in every sequence here, as on clinical scanners; air and gas have no protons.

A :class:`Protocol` is one acquisition: sequence kind, B0, TR, TE, TI, flip angle and, for chemical-shift
(Dixon) images, which image of the water/fat pair is shown. :func:`signal` gives the noise-free magnitude of
each compartment mix:

* ``se`` (spin echo / turbo spin echo): ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``, water and fat add in phase;
* ``ir`` (inversion recovery): ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``;
* ``gre`` (spoiled gradient echo): ``PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*)``, water and fat add
  with the chemical-shift phase ``2 pi 3.4 ppm gamma B0 TE`` (in phase / opposed phase follows from TE);
* ``dixon``: the same gradient echo separated into ``water``, ``fat``, ``in`` (phase) or ``opp`` (opposed);
* ``bssfp`` (balanced steady-state free precession): ``PD sin(a) (1 - E1) / (1 - (E1 - E2) cos(a) - E1 E2)
  exp(-TE/T2)`` with TE = TR/2, i.e. T2/T1-weighted (fluid and fat bright).

:func:`draw_protocol` draws a protocol of a named kind (``t1_se``, ``t2_se``, ``pd_se``, ``t1_gre``,
``dixon``, ``ir_t1``, ``bssfp``) with TR/TE/TI/flip from clinical ranges.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .tissues import AIR, CORTICAL, FAT, FLUID, GAS, GREY_MATTER, MUSCLE, ORGAN, TRABECULAR, WHITE_MATTER

FAT_CHEMICAL_SHIFT_PPM = 3.4
GYROMAGNETIC_MHZ_PER_T = 42.577


@dataclass(frozen=True)
class Tissue:
    """MR properties of one tissue: proton density (relative to water), fat fraction, water compartment
    T1/T2 (ms, at 1.5 T) and the T2*/T2 ratio used by gradient echoes."""

    pd: float
    ff: float
    t1: float
    t2: float
    t2s_ratio: float = 0.6


#: the fat compartment of every tissue (adipose tissue, 1.5 T; T2 is the apparent T2 of turbo spin echo)
FAT_COMPARTMENT = Tissue(pd=1.0, ff=1.0, t1=260.0, t2=130.0, t2s_ratio=0.45)

#: per label, 1.5 T (water compartment; the fat compartment is FAT_COMPARTMENT)
TISSUES: dict[int, Tissue] = {
    AIR: Tissue(0.0, 0.0, 1.0, 1.0),
    GAS: Tissue(0.0, 0.0, 1.0, 1.0),
    FAT: Tissue(0.95, 0.92, 1000.0, 50.0),
    MUSCLE: Tissue(0.75, 0.03, 1000.0, 44.0, 0.55),
    FLUID: Tissue(1.00, 0.0, 3000.0, 1100.0, 0.7),
    ORGAN: Tissue(0.85, 0.02, 1100.0, 90.0, 0.6),
    TRABECULAR: Tissue(0.75, 0.6, 800.0, 60.0, 0.3),   # red/yellow marrow between trabeculae
    CORTICAL: Tissue(0.2, 0.0, 250.0, 0.5, 0.5),       # ultra-short T2: dark in every sequence here
    GREY_MATTER: Tissue(0.82, 0.0, 1100.0, 95.0, 0.65),
    WHITE_MATTER: Tissue(0.70, 0.0, 650.0, 75.0, 0.65),
}

PROTOCOL_KINDS = ("t1_se", "t2_se", "pd_se", "t1_gre", "dixon", "ir_t1", "bssfp")
DIXON_IMAGES = ("water", "fat", "in", "opp")


@dataclass(frozen=True)
class Protocol:
    """One MR acquisition (times in ms, flip in degrees, B0 in tesla)."""

    kind: str               # se | ir | gre | dixon | bssfp
    b0: float = 1.5
    tr: float = 500.0
    te: float = 15.0
    ti: float = 0.0
    flip: float = 90.0
    dixon_image: str = ""   # water | fat | in | opp (kind == "dixon")
    name: str = ""          # the drawn kind (t1_se, t2_se, ...)

    def to_dict(self) -> dict:
        return asdict(self)


def at_field(t: Tissue, b0: float, fat: bool = False) -> Tissue:
    """Relaxation times at field strength ``b0`` (T1 grows with B0, fat's more slowly; T2 shrinks a little)."""
    r = b0 / 1.5
    return replace(t, t1=t.t1 * r ** (0.15 if fat else 0.3), t2=t.t2 * r ** -0.1,
                   t2s_ratio=t.t2s_ratio * r ** -0.4)


def jitter(tissues: dict[int, Tissue], rng: np.random.Generator, rel: float = 0.12) -> dict[int, Tissue]:
    """Per-case biological variation: every PD, T1 and T2 times a factor in [1 - rel, 1 + rel]; fat fractions
    of marrow and muscle varied in clinical ranges (marrow 0.4-0.8: red/yellow marrow; muscle 0-0.1)."""
    out = {}
    for label in sorted(tissues):
        t = tissues[label]
        f = rng.uniform(1 - rel, 1 + rel, size=3)
        ff = t.ff
        if label == TRABECULAR:
            ff = float(rng.uniform(0.4, 0.8))
        elif label == MUSCLE:
            ff = float(rng.uniform(0.0, 0.1))
        out[label] = replace(t, pd=t.pd * f[0], t1=t.t1 * f[1], t2=t.t2 * f[2], ff=ff)
    return out


def _compartment(t: Tissue, p: Protocol) -> float:
    """Complex-free magnitude of one compartment (PD = 1) for the protocol, before the PD and fraction."""
    e1 = math.exp(-p.tr / max(t.t1, 1e-6))
    if p.kind == "se":
        return (1 - e1) * math.exp(-p.te / max(t.t2, 1e-6))
    if p.kind == "ir":
        return abs(1 - 2 * math.exp(-p.ti / max(t.t1, 1e-6)) + e1) * math.exp(-p.te / max(t.t2, 1e-6))
    a = math.radians(p.flip)
    if p.kind in ("gre", "dixon"):
        t2s = max(t.t2 * t.t2s_ratio, 1e-6)
        return math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-p.te / t2s)
    if p.kind == "bssfp":
        e2 = math.exp(-p.tr / max(t.t2, 1e-6))
        return math.sin(a) * (1 - e1) / (1 - (e1 - e2) * math.cos(a) - e1 * e2) * math.exp(-p.te / max(t.t2, 1e-6))
    raise ValueError(f"unknown sequence kind {p.kind!r}")


def signal(tissue: Tissue, p: Protocol) -> float:
    """Noise-free signal (magnitude, arbitrary units) of one tissue for protocol ``p``."""
    water_t = at_field(tissue, p.b0)
    fat_t = at_field(FAT_COMPARTMENT, p.b0, fat=True)
    w = tissue.pd * (1 - tissue.ff) * _compartment(water_t, p)
    f = tissue.pd * tissue.ff * _compartment(fat_t, p)
    if p.kind == "dixon":
        return {"water": w, "fat": f, "in": w + f, "opp": abs(w - f)}[p.dixon_image]
    if p.kind == "gre":  # water and fat add with the chemical-shift phase accrued by TE
        phase = 2 * math.pi * FAT_CHEMICAL_SHIFT_PPM * GYROMAGNETIC_MHZ_PER_T * p.b0 * p.te * 1e-3
        return abs(complex(w + f * math.cos(phase), f * math.sin(phase)))
    return w + f


def signal_table(tissues: dict[int, Tissue], p: Protocol) -> dict[int, float]:
    """:func:`signal` for every label, scaled so that the brightest tissue is 1000."""
    raw = {label: signal(t, p) for label, t in tissues.items()}
    top = max(raw.values()) or 1.0
    return {label: 1000.0 * v / top for label, v in raw.items()}


def draw_protocol(rng: np.random.Generator, name: str, b0: float) -> Protocol:
    """A protocol of kind ``name`` (one of :data:`PROTOCOL_KINDS`) with parameters drawn from clinical ranges."""
    u = rng.uniform
    if name == "t1_se":
        return Protocol("se", b0, tr=u(400, 800), te=u(8, 20), name=name)
    if name == "t2_se":
        return Protocol("se", b0, tr=u(2500, 6000), te=u(70, 120), name=name)
    if name == "pd_se":
        return Protocol("se", b0, tr=u(2000, 4000), te=u(10, 35), name=name)
    if name == "t1_gre":
        return Protocol("gre", b0, tr=u(4, 12), te=u(1.2, 6.0), flip=u(8, 30), name=name)
    if name == "dixon":
        return Protocol("dixon", b0, tr=u(4, 8), te=u(1.5, 3.0), flip=u(8, 15),
                        dixon_image=DIXON_IMAGES[int(rng.integers(len(DIXON_IMAGES)))], name=name)
    if name == "ir_t1":  # T1-weighted inversion recovery (TI well above fat's null point)
        return Protocol("ir", b0, tr=u(1800, 3000), te=u(8, 20), ti=u(600, 1000), name=name)
    if name == "bssfp":
        tr = u(3.0, 5.0)
        return Protocol("bssfp", b0, tr=tr, te=tr / 2, flip=u(40, 70), name=name)
    raise ValueError(f"unknown protocol kind {name!r}; use one of {PROTOCOL_KINDS}")
