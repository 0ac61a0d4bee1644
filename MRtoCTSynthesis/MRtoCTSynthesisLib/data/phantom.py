"""Procedural paired MR/CT phantoms: perfectly co-registered synthetic pelvis and head volumes.

No public data set ships an MRI and a CT of the same subject under a licence that lets a demo carry
them, so the engine's demo, tests and smoke training run on phantoms made here. :func:`generate_case`
builds, for one integer ``seed``, a tissue label map and from it a CT in Hounsfield units and two MR
weightings (T1, T2) on one voxel grid, so the MR/CT pair is aligned exactly.

Anatomy is defined in physical millimetres, never in voxels: every structure is a continuous shape
(ellipsoids, tapered tubes, superellipses, elliptical shells, each with an approximate signed distance
so bones get a cortical shell of a given thickness in mm) evaluated at the physical centre of each
voxel. The same seed therefore gives the same anatomy on any grid: another spacing, field of view,
origin or an oblique direction matrix only changes where the anatomy is sampled. Per-case variation
(body width and depth, fat thickness, bone sizes and positions, bladder filling, bowel gas, sex
organs, a small rotation and shift, a smooth non-rigid deformation) comes from a random generator
seeded with ``seed`` alone, drawn before anything depends on the grid. Only the noise is drawn per
voxel (from a second generator, also seeded by ``seed``).

Image formation, in this order:

* CT: a Hounsfield value per tissue (air -1000, fat about -100, muscle about 50, urine about 8, soft
  organs about 38, trabecular bone 250-400, cortical bone 1050-1450, bowel gas about -900; each varied
  a little per case), a smooth trabecular-density texture, a Gaussian partial-volume blur of half a
  voxel, then Gaussian noise of standard deviation ``ct_noise_sigma`` (10-20 HU) that is itself
  smoothed slightly (0.6 voxel) and rescaled back to that standard deviation.
* MR: a signal per tissue for each weighting (T1: fat bright, fluid dark; T2: fluid very bright, fat
  bright-ish, muscle dark; cortical bone, air and gas dark in both; fatty marrow intermediate), a mild
  tissue texture, the same partial-volume blur, a smooth multiplicative bias field (about +-20 %,
  continuous in physical space), then Rician noise: the magnitude ``|S + n_re + i n_im|`` of the
  signal plus complex Gaussian noise with standard deviation ``meta['mr_noise_sigma'][w]`` per
  channel. In air far from the body the magnitude is therefore Rayleigh distributed, mean
  ``sigma * sqrt(pi / 2)``.

Bone is dark on MR and bright on CT, fat is bright on T1 and dark on CT, fluid is bright on T2 and
near water on CT: the mapping from MR to CT is non-linear and depends on anatomy, which is the point.

Regions: ``"pelvis"`` fits the default grid (128 x 128 x 48 voxels of 3 mm: 384 x 384 x 144 mm, from
below the lesser trochanters to the lower lumbar spine). The head is taller than that field of view;
``size=(96, 112, 96), spacing=(2.5, 2.5, 2.5)`` covers it from the neck to the vertex.

Coordinates are ITK/LPS (x towards the patient's left, y towards posterior, z towards superior); the
patient lies supine, so gas in a bowel loop rises to the anterior (-y) side with a flat gas/fluid
level. Arrays are ``(z, y, x)`` like everywhere in the engine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ..io.atomic import write_json
from ..errors import InputError
from ..io.volume import Geometry, Volume, make_geometry, write_volume

# ----------------------------------------------------------------------------------------------------
# Tissue labels (shared by all regions; a region uses a subset)
# ----------------------------------------------------------------------------------------------------
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

_PSF_SIGMA_VOX = 0.5        # partial-volume blur of the noise-free images, in voxels
_CT_NOISE_SMOOTH_VOX = 0.6  # correlation of the CT noise, in voxels
_HU_MIN, _HU_MAX = -1024.0, 3071.0


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
        w = _check_weighting(weighting)
        return self.mr_t1 if w == "t1" else self.mr_t2


# ----------------------------------------------------------------------------------------------------
# Small geometry kit: point sets and approximate signed distances (negative inside, in mm)
# ----------------------------------------------------------------------------------------------------
class _Pts:
    """Physical points as three flat float32 arrays (anatomical frame, mm)."""

    __slots__ = ("x", "y", "z")

    def __init__(self, x, y, z):
        self.x, self.y, self.z = x, y, z

    def take(self, sel) -> "_Pts":
        return _Pts(self.x[sel], self.y[sel], self.z[sel])

    def __len__(self):
        return self.x.shape[0]


def _f32(v):
    return np.float32(v)


def _sdf_sphere(p: _Pts, c, r):
    return np.sqrt((p.x - c[0]) ** 2 + (p.y - c[1]) ** 2 + (p.z - c[2]) ** 2) - r


def _sdf_ellipsoid(p: _Pts, c, radii, rot=None):
    """Approximate signed distance to an ellipsoid (exact on the surface, good near it).

    ``rot`` (3x3) has the ellipsoid's local axes as columns, in the anatomical frame.
    """
    dx, dy, dz = p.x - c[0], p.y - c[1], p.z - c[2]
    if rot is not None:
        r = np.asarray(rot, dtype=np.float64)
        dx, dy, dz = (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                      r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                      r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz)
    rx, ry, rz = (float(v) for v in radii)
    k0 = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + (dz / rz) ** 2)
    k1 = np.sqrt((dx / (rx * rx)) ** 2 + (dy / (ry * ry)) ** 2 + (dz / (rz * rz)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _sdf_ellipse2d(u, v, ru, rv):
    """Approximate signed distance to an axis-aligned ellipse in a plane (radii may be arrays)."""
    k0 = np.sqrt((u / ru) ** 2 + (v / rv) ** 2)
    k1 = np.sqrt((u / (ru * ru)) ** 2 + (v / (rv * rv)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _capsule(p: _Pts, a, b, ra, rb):
    """Signed distance to a tube from point ``a`` (radius ``ra``) to ``b`` (radius ``rb``), round caps.

    Returns ``(sdf, axis_y)``: ``axis_y`` is the y coordinate of the nearest axis point (used for
    gas/fluid levels inside bowel).
    """
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    bax, bay, baz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    L2 = max(bax * bax + bay * bay + baz * baz, 1e-9)
    pax, pay, paz = p.x - a[0], p.y - a[1], p.z - a[2]
    h = np.clip((pax * bax + pay * bay + paz * baz) / L2, 0.0, 1.0)
    d = np.sqrt((pax - bax * h) ** 2 + (pay - bay * h) ** 2 + (paz - baz * h) ** 2)
    return d - (ra + (rb - ra) * h), a[1] + bay * h


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Waves:
    """A smooth random field: a sum of plane-wave cosines with random directions, continuous in mm.

    Normalised so that the field has unit standard deviation over a large volume.
    """

    def __init__(self, rng: np.random.Generator, n: int, lam_min: float, lam_max: float):
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = rng.uniform(lam_min, lam_max, size=n)
        self.k = dirs * (2 * np.pi / lam)[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.norm = math.sqrt(2.0 / n)

    def __call__(self, x, y, z):
        out = np.zeros(np.shape(x), np.float32)
        for (kx, ky, kz), ph in zip(self.k, self.phase):
            out += np.cos(x * _f32(kx) + y * _f32(ky) + z * _f32(kz) + _f32(ph))
        return out * _f32(self.norm)


class _Paint:
    """Label painter over a point subset: later strokes override earlier ones."""

    def __init__(self, n: int, base: int):
        self.lab = np.full(n, base, np.uint8)

    def __call__(self, sel, label, where=None):
        if where is not None:
            sel = sel & where
        self.lab[sel] = label


class _Bones:
    """Accumulates bones: each bone is an SDF plus a cortex thickness (mm).

    A voxel is bone where any SDF is negative, trabecular where it is deeper than that bone's cortex
    in any bone, cortical otherwise (so bones that touch merge, with cortex only on the outside).
    """

    def __init__(self, n: int):
        self.bone = np.zeros(n, bool)
        self.trab = np.zeros(n, bool)

    def add(self, sdf, cortex: float, sel=None):
        b = sdf < 0
        t = sdf < -cortex
        if sel is None:
            self.bone |= b
            self.trab |= t
        else:
            self.bone[sel] |= b
            self.trab[sel] |= t

    def paint(self, paint: _Paint):
        paint(self.bone, CORTICAL)
        paint(self.trab, TRABECULAR)


# ----------------------------------------------------------------------------------------------------
# Anatomy base: global pose + smooth deformation, tissue tables
# ----------------------------------------------------------------------------------------------------
class _Anatomy:
    """Common frame handling: a per-case rigid pose and a smooth non-rigid deformation (mm)."""

    region = ""

    def _init_frame(self, rng, max_rot=(3.0, 3.0, 6.0), max_shift=(8.0, 8.0, 10.0), defo_mm=4.0):
        self.rot = _rotation(*(rng.uniform(-m, m) for m in max_rot))
        self.shift = np.array([rng.uniform(-m, m) for m in max_shift])
        # displacement u_c(q) = sum_j A_j sin(k_j . q + phi_j), wavelengths 150-400 mm
        self.defo = []
        for _ in range(3):
            k = rng.normal(size=(3, 3))
            k /= np.linalg.norm(k, axis=1, keepdims=True)
            k *= (2 * np.pi / rng.uniform(150, 400, size=3))[:, None]
            amp = rng.uniform(0.5, 1.0, size=3) * defo_mm / math.sqrt(3)
            ph = rng.uniform(0, 2 * np.pi, size=3)
            self.defo.append((k, amp, ph))

    def to_anatomical(self, px, py, pz) -> _Pts:
        """Map physical (scanner) coordinates to this case's deformed anatomical frame."""
        dx, dy, dz = px - _f32(self.shift[0]), py - _f32(self.shift[1]), pz - _f32(self.shift[2])
        r = self.rot  # q = R^T d
        qx = _f32(r[0, 0]) * dx + _f32(r[1, 0]) * dy + _f32(r[2, 0]) * dz
        qy = _f32(r[0, 1]) * dx + _f32(r[1, 1]) * dy + _f32(r[2, 1]) * dz
        qz = _f32(r[0, 2]) * dx + _f32(r[1, 2]) * dy + _f32(r[2, 2]) * dz
        out = []
        for q, (k, amp, ph) in zip((qx, qy, qz), self.defo):
            u = np.zeros_like(q)
            for j in range(3):
                u += _f32(amp[j]) * np.sin(qx * _f32(k[j, 0]) + qy * _f32(k[j, 1]) + qz * _f32(k[j, 2])
                                           + _f32(ph[j]))
            out.append(q + u)
        return _Pts(*out)

    # subclasses: body(p) -> bool, paint(p) -> (labels, bone_texture), tables
    def _jitter_tables(self, rng, ct, t1, t2, ct_jit, mr_rel=0.06):
        self.ct_hu = {k: float(v + rng.uniform(-ct_jit.get(k, 0.0), ct_jit.get(k, 0.0))) for k, v in ct.items()}
        self.mr_t1 = {k: float(v * (1 + rng.uniform(-mr_rel, mr_rel))) for k, v in t1.items()}
        self.mr_t2 = {k: float(v * (1 + rng.uniform(-mr_rel, mr_rel))) for k, v in t2.items()}


# ----------------------------------------------------------------------------------------------------
# Pelvis
# ----------------------------------------------------------------------------------------------------
class _Pelvis(_Anatomy):
    """Adult pelvis: body outline with subcutaneous fat, muscle, pelvic cavity with visceral fat,
    bladder, rectum/sigmoid and small-bowel loops with gas, prostate+seminal vesicles or
    uterus+ovaries, iliac vessels, and the bony pelvis (ilia, acetabula, pubis, ischia, sacrum, lower
    lumbar vertebrae, femoral heads/necks/trochanters/shafts) with cortical shells.

    The anatomical origin is near the centre of the pelvis; ``hz`` is the height of the femoral head
    centres (about 25 mm below the origin), and most heights below are relative to it (``zr``).
    """

    region = "pelvis"

    def __init__(self, rng: np.random.Generator):
        self._init_frame(rng)
        u = rng.uniform
        g = u(0.0, 1.0)                       # adiposity
        self.adiposity = g
        self.a_lean = u(145.0, 163.0)         # muscle half-width at hip level
        self.b_lean = u(90.0, 110.0)          # muscle half-depth
        self.t_lat = 6 + 18 * g + u(-2, 2)    # subcutaneous fat thickness (mm)
        self.t_ant = 8 + 32 * g + u(-3, 3)
        self.t_post = 8 + 22 * g + u(-3, 3)
        self.n_body = u(2.3, 2.9)             # superellipse exponent
        self.hz = u(-32.0, -20.0)             # femoral head centre height
        self.hx = self.a_lean - 70 + u(-4, 4)
        self.hy = -0.1 * self.b_lean + u(-5, 5)
        self.rh = u(21.0, 25.5)
        self.asym = u(-1.5, 1.5)
        self.crest = u(85.0, 100.0)           # iliac crest height above hz
        self.zr_tip = u(-36.0, -26.0)         # coccyx tip
        self.zr_top = u(68.0, 82.0)           # sacral promontory
        self.zr_floor = -28.0 + u(-4, 4)      # pelvic floor
        self.sex = "male" if u() < 0.5 else "female"
        self.bladder_fill = u(0.15, 1.0)
        self.prostate_scale = u(0.9, 1.4)
        self.uterus_scale = u(0.8, 1.2)
        self.anteversion = u(20.0, 55.0)
        self.r_rect = u(13.0, 19.0)
        self.x_rect = u(-6.0, 6.0)
        self.zr_sig = u(35.0, 55.0)
        self.rect_gas = u(0.0, 0.6)
        self.rect_gas_phase = u(0, 2 * np.pi)
        self.sig_pts = [(u(25, 45), u(-45, -25), u(15, 25)), (u(45, 70), u(-30, -5), u(40, 55)),
                        (u(55, 75), u(0, 25), u(85, 100))]
        # free gas bubbles along the colon
        self.n_bubbles = int(rng.integers(0, 5))
        self.bubbles = [(u(0, 1), u(3.0, 7.0)) for _ in range(self.n_bubbles)]
        # small-bowel loops in the false pelvis
        self.loops = []
        for _ in range(int(rng.integers(3, 8))):
            pts = [np.array([u(-55, 55), u(-60, 0), u(20, 90)])]
            for _ in range(3):
                step = rng.normal(size=3)
                step /= np.linalg.norm(step)
                pts.append(pts[-1] + step * u(25, 45))
            self.loops.append(dict(pts=pts, r=u(9.0, 14.0), fluid=u() < 0.5,
                                   gas=(u(0.25, 0.6) if u() < 0.45 else 0.0)))
        # intermuscular fat
        self.fat_blobs = []
        for _ in range(int(rng.integers(6, 12))):
            s = 1 if u() < 0.5 else -1
            self.fat_blobs.append(((s * u(40, 130), u(10, 100), u(-70, 90)),
                                   (u(4, 9), u(4, 9), u(15, 40)), _rotation(u(-30, 30), u(-30, 30), u(-60, 60))))
        self.tex_bone = _Waves(rng, 8, 8.0, 30.0)
        self.tex_soft = _Waves(rng, 8, 15.0, 60.0)
        self._jitter_tables(
            rng,
            ct={AIR: -1000.0, FAT: -100.0, MUSCLE: 50.0, FLUID: 8.0, ORGAN: 38.0, TRABECULAR: 320.0,
                CORTICAL: 1250.0, GAS: -900.0},
            t1={AIR: 0.0, FAT: 820.0, MUSCLE: 330.0, FLUID: 90.0, ORGAN: 400.0, TRABECULAR: 560.0,
                CORTICAL: 25.0, GAS: 0.0},
            t2={AIR: 0.0, FAT: 560.0, MUSCLE: 170.0, FLUID: 920.0, ORGAN: 430.0, TRABECULAR: 330.0,
                CORTICAL: 18.0, GAS: 0.0},
            ct_jit={FAT: 10.0, MUSCLE: 7.0, FLUID: 6.0, ORGAN: 5.0, TRABECULAR: 70.0, CORTICAL: 200.0, GAS: 50.0},
        )

    # --- outline -------------------------------------------------------------------------------------
    def _lean(self, zr):
        a = self.a_lean * np.maximum(1 - 0.10 * ((zr + 15) / 110) ** 2, 0.6)
        b_ant = self.b_lean * (1 + 0.03 * zr / 100)
        b_post = self.b_lean * (1 + 0.10 * np.exp(-((zr + 25) / 40) ** 2))
        return a, b_ant, b_post

    def _superellipse_in(self, p, a, b_ant, b_post):
        by = np.where(p.y < 0, b_ant, b_post)
        n = self.n_body
        return (np.abs(p.x) / a) ** n + (np.abs(p.y) / by) ** n <= 1.0

    def body(self, p: _Pts):
        zr = p.z - _f32(self.hz)
        a, b_ant, b_post = self._lean(zr)
        bp = b_post + self.t_post
        inside = self._superellipse_in(p, a + self.t_lat, b_ant + self.t_ant, bp)
        # gluteal cleft below the coccyx
        cd = _smoothstep((self.zr_tip - 5 - zr) / 30.0) * 0.3 * bp
        cleft = (cd > 1.0) & (p.y > bp - cd) & (np.abs(p.x) < 1.5 + 0.3 * (p.y - (bp - cd)))
        return inside & ~cleft

    # --- sacrum / spine helpers ----------------------------------------------------------------------
    def _sacrum(self, zr):
        t = np.clip((zr - self.zr_tip) / (self.zr_top - self.zr_tip), 0.0, 1.0)
        _, _, b_post = self._lean(zr)
        w = 10 + 45 * t ** 0.9
        d = 7 + 13 * t
        yc = b_post - 25 - d - 32 * t
        return t, w, d, yc

    def _y_spine(self, zr):
        yc1 = self._sacrum(np.float32(self.zr_top))[3]
        return yc1 - 2 - 0.15 * (zr - self.zr_top)

    # --- painting ------------------------------------------------------------------------------------
    def paint(self, p: _Pts):
        n = len(p)
        zr = p.z - _f32(self.hz)
        a, b_ant, b_post = self._lean(zr)
        paint = _Paint(n, FAT)
        inner = self._superellipse_in(p, a, b_ant, b_post)
        paint(inner, MUSCLE)

        for c, r, rot in self.fat_blobs:
            paint(_sdf_ellipsoid(p, (c[0], c[1], c[2] + self.hz), r, rot) < 0, FAT, where=paint.lab == MUSCLE)

        hx, hy, hz, rh = self.hx, self.hy, self.hz, self.rh
        t_s, w_s, d_s, yc_s = self._sacrum(zr)
        y_sym = -self.b_lean * (1 + 0.03 * -10 / 100) + 16
        y_v = self._y_spine(zr)

        # pelvic cavity (visceral fat): true pelvis below, false pelvis between the iliac wings above
        w = _smoothstep((zr - 15) / 35.0)
        cx_t = hx - rh - 16
        ex_il = (hx - 12 - 20) + (0.86 * self.a_lean - 10 - hx) * _smoothstep(zr / 90.0)
        cx_f = 20 + 0.85 * ex_il - 18
        cx = cx_t + (cx_f - cx_t) * w
        below_tip = zr < self.zr_tip
        y_p_t = np.where(below_tip, b_post - 40, yc_s - d_s - 2)
        y_a = (y_sym + 10) + ((-b_ant + 14) - (y_sym + 10)) * w
        y_p = y_p_t + ((y_v - 17 - 6) - y_p_t) * w
        cy, hy_c = 0.5 * (y_a + y_p), np.maximum(0.5 * (y_p - y_a), 5.0)
        cavity = ((np.abs(p.x) / cx) ** 2.5 + (np.abs(p.y - cy) / hy_c) ** 2.5 <= 1.0) & \
                 (zr > self.zr_floor + 12 * (p.x / cx) ** 2) & inner
        paint(cavity, FAT)

        # iliopsoas (muscle) on both sides
        for s in (-1, 1):
            top = (s * 32, float(self._y_spine(np.float32(self.zr_top + 100))) + 5, hz + self.zr_top + 110)
            mid = (s * (hx - 5), hy - rh - 8, hz - 10)
            low = (s * (hx - 10), hy - rh - 5, hz - 70)
            paint(_capsule(p, top, mid, 22.0, 14.0)[0] < 0, MUSCLE, where=inner)
            paint(_capsule(p, mid, low, 14.0, 16.0)[0] < 0, MUSCLE, where=inner)

        # small-bowel loops (restricted to the cavity), then colon
        gas_pockets = 0
        bl_scale = self.bladder_fill ** (1 / 3)
        bl_r = (44 * bl_scale, 34 * bl_scale, 32 * bl_scale)
        bl_c = (0.0, y_sym + 10 + bl_r[1], hz - 12 + 0.9 * bl_r[2])
        bl_top = bl_c[2] + bl_r[2]
        for loop in self.loops:
            pts = [pt + np.array([0.0, 0.0, bl_top]) for pt in loop["pts"]]
            r = loop["r"]
            for a_pt, b_pt in zip(pts[:-1], pts[1:]):
                sdf, ax_y = _capsule(p, a_pt, b_pt, r, r)
                tube = (sdf < 0) & cavity
                lumen = (sdf < -2.5) & cavity
                paint(tube, ORGAN)
                paint(lumen, FLUID if loop["fluid"] else ORGAN)
                if loop["gas"] > 0:
                    rl = r - 2.5
                    paint(lumen & ((p.y - ax_y) < -rl + 2 * rl * loop["gas"]), GAS)
            gas_pockets += loop["gas"] > 0

        # rectum: a tube in front of the sacrum, narrowing to the anal canal below the coccyx tip
        rr = self.r_rect
        y_rect = np.where(below_tip, float(self._sacrum(np.float32(self.zr_tip))[3]) - 7 - 10 - rr,
                          yc_s - d_s - rr - 5)
        r_z = np.where(below_tip, rr - (rr - 8) * _smoothstep((self.zr_tip - zr) / 25.0), rr)
        dxy = np.sqrt((p.x - self.x_rect) ** 2 + (p.y - y_rect) ** 2)
        in_z = (zr > self.zr_tip - 45) & (zr < self.zr_sig)
        rect = (dxy < r_z) & in_z & inner
        rect_lumen = (dxy < r_z - 4) & in_z & inner & (zr > self.zr_tip - 15)
        paint(rect, ORGAN)
        gf = self.rect_gas * np.clip(0.5 + 0.8 * np.sin(zr / 17.0 + self.rect_gas_phase), 0, 1)
        rl = r_z - 4
        paint(rect_lumen & ((p.y - y_rect) < -rl + 2 * rl * gf), GAS)
        gas_pockets += self.rect_gas > 0.05
        # sigmoid and descending colon: a chain of tubes from the top of the rectum
        y_top = float(self._sacrum(np.float32(self.zr_sig))[3] - self._sacrum(np.float32(self.zr_sig))[2]) - rr - 5
        chain = [(self.x_rect, y_top, hz + self.zr_sig)]
        for (cxp, cyp, czp) in self.sig_pts:
            chain.append((cxp, cyp, hz + self.zr_sig + czp))
        chain.append((chain[-1][0], chain[-1][1] + 5, hz + self.zr_sig + 250))
        rs = 0.9 * rr
        for a_pt, b_pt in zip(chain[:-1], chain[1:]):
            sdf, ax_y = _capsule(p, a_pt, b_pt, rs, rs)
            tube = (sdf < 0) & inner
            paint(tube, ORGAN)
            paint((sdf < -4) & inner & ((p.y - ax_y) < -(rs - 4) + 2 * (rs - 4) * 0.35 * self.rect_gas), GAS)
        # free gas bubbles in the colon lumen
        for fpos, rad in self.bubbles:
            seg = min(int(fpos * (len(chain) - 1)), len(chain) - 2)
            f = fpos * (len(chain) - 1) - seg
            c = [chain[seg][i] + f * (chain[seg + 1][i] - chain[seg][i]) for i in range(3)]
            c[1] -= rs - 4 - rad  # against the anterior wall
            paint(_sdf_sphere(p, c, rad) < 0, GAS, where=inner)
        gas_pockets += len(self.bubbles)

        # bladder: urine inside a wall whose thickness grows as it empties
        bl = _sdf_ellipsoid(p, bl_c, bl_r)
        wall = 2.5 + 2.5 * (1 - self.bladder_fill)
        paint(bl < 0, ORGAN, where=inner)
        paint(bl < -wall, FLUID, where=inner)
        bl_bottom = bl_c[2] - bl_r[2]

        if self.sex == "male":
            ps = self.prostate_scale
            pr_r = (20 * ps, 15 * ps, 17 * ps)
            paint(_sdf_ellipsoid(p, (0, bl_c[1] + 0.3 * bl_r[1], bl_bottom - 6 - pr_r[2]), pr_r) < 0, ORGAN,
                  where=inner)
            for s in (-1, 1):
                paint(_sdf_ellipsoid(p, (s * 17, bl_c[1] + 0.85 * bl_r[1] + 6, bl_bottom + 6), (16, 6, 8),
                                     _rotation(0, 0, s * 20)) < 0, ORGAN, where=inner)
        else:
            us = self.uterus_scale
            al = math.radians(self.anteversion)
            rot = _rotation(-self.anteversion, 0, 0)  # tips the fundus anteriorly (towards -y)
            uc = (0.0, bl_c[1] + bl_r[1] + 20, bl_c[2] + 14)
            ur = (27 * us, 18 * us, 36 * us)
            paint(_sdf_ellipsoid(p, uc, ur, rot) < 0, ORGAN, where=inner)
            cervix = (0.0, uc[1] + ur[2] * 0.8 * math.sin(al), uc[2] - ur[2] * 0.8 * math.cos(al))
            paint(_capsule(p, cervix, (0.0, bl_c[1] + 0.5 * bl_r[1] + 12, hz - 55), 11.0, 9.0)[0] < 0, ORGAN,
                  where=inner)
            for s in (-1, 1):
                paint(_sdf_ellipsoid(p, (s * min(45.0, hx - rh - 22), uc[1] + 5, uc[2] + 8), (14, 9, 11)) < 0,
                      ORGAN, where=cavity)

        # iliac / femoral vessels
        for s in (-1, 1):
            y0 = float(self._y_spine(np.float32(self.zr_top + 20)))
            a0 = (s * 16, y0 - 24, hz + self.zr_top + 20)
            a1 = (s * (hx - 18), hy - rh - 20, hz - 5)
            a2 = (s * (hx - 12), hy - rh - 26, hz - 90)
            for off, rad in (((0, 0, 0), 4.5), ((-s * 8, 5, 0), 6.0)):
                pa = [a0[i] + off[i] for i in range(3)]
                pb = [a1[i] + off[i] for i in range(3)]
                pc = [a2[i] + off[i] for i in range(3)]
                paint(_capsule(p, pa, pb, rad, rad)[0] < 0, ORGAN, where=inner)
                paint(_capsule(p, pb, pc, rad, rad)[0] < 0, ORGAN, where=inner)

        # ---------------------------------------------------------------- bones
        bones = _Bones(n)
        # sacrum
        sac = _sdf_ellipse2d(p.x, p.y - yc_s, w_s, d_s)
        sac = np.maximum(sac, np.maximum(self.zr_tip - zr, zr - self.zr_top))
        bones.add(sac, 2.0)
        # lumbar vertebrae above the sacrum (bodies, discs, arches, spinous/transverse processes)
        discs = np.zeros(n, bool)
        canal_v = np.zeros(n, bool)
        for k in range(4):
            z0 = self.zr_top + 36 * k
            zc = z0 + 9 + 13.5
            sel = (zr > z0 - 5) & (zr < z0 + 60)
            if not sel.any():
                continue
            q = p.take(sel)
            zq = zr[sel]
            yv = self._y_spine(zq)
            body_xy = _sdf_ellipse2d(q.x, q.y - yv, 25.0, 17.0)
            vb = np.maximum(body_xy, np.maximum((z0 + 9) - zq, zq - (z0 + 36)))
            bones.add(vb, 1.5, sel)
            dsel = (body_xy < 0) & (zq > z0) & (zq <= z0 + 9)
            discs[np.flatnonzero(sel)[dsel]] = True
            ycan = yv + 17 + 10
            ring = _sdf_ellipse2d(q.x, q.y - ycan, 18.0, 15.0)
            arch = np.maximum(np.maximum(ring, -(_sdf_ellipse2d(q.x, q.y - ycan, 11.0, 8.0))), yv + 17 - q.y)
            arch = np.maximum(arch, np.maximum((z0 + 12) - zq, zq - (z0 + 33)))
            bones.add(arch, 1.5, sel)
            yv_c = float(self._y_spine(np.float32(zc)))
            sp, _ = _capsule(q, (0, yv_c + 40, hz + zc), (0, yv_c + 68, hz + zc - 8), 5.0, 5.0)
            bones.add(sp, 1.5, sel)
            for s in (-1, 1):
                tp, _ = _capsule(q, (s * 18, yv_c + 24, hz + zc), (s * (45 + 6 * (k == 0)), yv_c + 28, hz + zc), 6.0, 5.0)
                bones.add(tp, 1.5, sel)
            can = (_sdf_ellipse2d(q.x, q.y - ycan, 11.0, 8.0) < 0)
            canal_v[np.flatnonzero(sel)[can]] = True
        for s in (-1, 1):
            hxs = hx + s * self.asym
            H = (s * hxs, hy, hz)
            # femur: head, neck, greater/lesser trochanter, shaft
            bones.add(_sdf_sphere(p, H, rh), 2.0)
            N = (H[0] + s * 32, hy + 4, hz - 20)
            bones.add(_capsule(p, H, N, 14.0, 15.0)[0], 3.0)
            a_tr = float(self._lean(np.float32(-18.0))[0])
            G = (s * (a_tr - 27), hy + 8, hz - 20)
            bones.add(_sdf_ellipsoid(p, G, (14.0, 20.0, 22.0)), 2.5)
            bones.add(_capsule(p, (G[0] - s * 6, G[1] - 2, G[2] - 8), (G[0] - s * 28, G[1] - 12, G[2] - 260),
                               14.0, 14.0)[0], 5.5)
            bones.add(_sdf_ellipsoid(p, (N[0] - s * 8, N[1] + 14, N[2] - 30), (9.0, 9.0, 11.0)), 2.0)
            # acetabulum: a cup around the head opening laterally, anteriorly and inferiorly
            dH = _sdf_sphere(p, H, 0.0)
            cup = np.maximum(dH - (rh + 11), (rh + 2.5) - dH)
            o = np.array([s * 0.75, -0.35, -0.55])
            o /= np.linalg.norm(o)
            cup = np.maximum(cup, (p.x - H[0]) * o[0] + (p.y - H[1]) * o[1] + (p.z - H[2]) * o[2] - 4.0)
            bones.add(cup, 2.0)
            # ilium: an elliptical shell segment, thick above the acetabulum, thin wing, crest on top
            # the ellipse passes through the sacro-iliac joint (x = sacrum half-width + 2, y = sacrum centre)
            xc, yc = 20.0, hy + 5 - 15 * _smoothstep(zr / 80.0)
            ex = (hxs - 12 - xc) + (0.86 * self.a_lean - 10 - hxs) * _smoothstep(zr / 90.0)
            c_si = np.clip((w_s + 2 - xc) / ex, 0.0, 0.95)
            ey = np.clip((yc_s - yc) / np.sqrt(1 - c_si * c_si), 30.0, 90.0)
            u_, v_ = s * p.x - xc, p.y - yc
            th = np.arctan2(v_ / ey, u_ / ex)
            th_si = np.arccos(c_si)
            th_a = -0.3 - 0.6 * _smoothstep(zr / 70.0)
            th_p = 0.5 + 1.1 * _smoothstep((zr - 15) / 25.0)
            thick = (7 + 16 * np.exp(-((zr - 8) / 16) ** 2) + 5 * np.exp(-((zr - self.crest) / 7) ** 2)
                     + 12 * _smoothstep((th - th_si + 0.6) / 0.5))
            shell = np.abs(_sdf_ellipse2d(u_, v_, ex, ey)) - 0.5 * thick
            th_m, th_h = 0.5 * (th_a + th_p), 0.5 * (th_p - th_a)
            crest = self.crest - 12 * ((th - th_m) / th_h) ** 2
            rad = np.sqrt(u_ * u_ + v_ * v_)
            ang = np.maximum(th_a - th, th - th_p) * rad
            il = np.maximum(np.maximum(shell, ang), np.maximum(-5 - zr, zr - crest))
            il = np.maximum(il, (w_s + 2) - s * p.x)  # stops at the sacro-iliac joint
            bones.add(il, 2.0)
            # pubis (symphysis halves, superior and inferior rami) and ischium
            bones.add(_capsule(p, (s * 10.5, y_sym, hz - 22), (s * 10.5, y_sym, hz + 2), 8.5, 8.5)[0], 2.0)
            bones.add(_capsule(p, (H[0] - s * (rh + 4), hy - 0.5 * rh, hz + 2), (s * 12, y_sym + 2, hz - 2),
                               9.0, 8.0)[0], 2.0)
            IT = (s * (hxs - 30), hy + rh + 20, hz - 48)
            bones.add(_capsule(p, (s * 12, y_sym + 4, hz - 20), IT, 7.0, 11.0)[0], 2.0)
            bones.add(_capsule(p, (H[0] - s * 8, hy + 0.6 * rh, hz - 12), IT, 13.0, 12.0)[0], 2.0)
        bones.paint(paint)
        # soft tissue inside bones: discs, spinal and sacral canals
        paint(discs, ORGAN)
        paint(canal_v, FLUID)
        canal_s = (_sdf_ellipse2d(p.x, p.y - (yc_s + 0.45 * d_s), 5 + 7 * t_s, 3 + 3 * t_s) < 0) & \
                  (zr > self.zr_tip + 8) & (zr < self.zr_top + 5)
        paint(canal_s, FLUID, where=t_s > 0.7)
        paint(canal_s, FAT, where=t_s <= 0.7)

        bone_tex = self.tex_bone(p.x, p.y, p.z)
        soft_tex = self.tex_soft(p.x, p.y, p.z)
        self.info = dict(sex=self.sex, bladder_fill=round(self.bladder_fill, 3),
                         adiposity=round(self.adiposity, 3), gas_pockets=int(gas_pockets),
                         femoral_head_height_mm=round(self.hz, 2))
        return paint.lab, bone_tex, soft_tex


# ----------------------------------------------------------------------------------------------------
# Head
# ----------------------------------------------------------------------------------------------------
class _Head(_Anatomy):
    """Adult head: scalp fat, temporalis muscles, skull (outer/inner cortical tables with diploe),
    CSF, grey and white matter with sulci, lateral/third/fourth ventricles, cerebellum, brainstem,
    eyes with orbital fat and lenses, frontal/sphenoid/maxillary sinuses and nasal cavity (air),
    mastoid air cells, face and neck soft tissue with the cervical spine and airway.

    The anatomical origin is near the centre of the brain, slightly below the ventricles.
    """

    region = "head"

    def __init__(self, rng: np.random.Generator):
        self._init_frame(rng, max_rot=(5.0, 3.0, 5.0), max_shift=(5.0, 6.0, 6.0), defo_mm=3.0)
        u = rng.uniform
        self.skull_r = (u(66.0, 76.0), u(86.0, 98.0), u(78.0, 88.0))
        self.skull_c = (0.0, u(2.0, 8.0), u(-6.0, 2.0))
        self.skull_t = u(5.5, 8.5)
        self.table = u(1.6, 2.2)
        self.scalp = u(4.0, 8.0)
        self.csf = u(1.5, 3.5)
        self.gm = u(2.5, 3.5)
        self.vent = u(0.6, 1.5)            # ventricle size (atrophy)
        self.eye_r = u(11.0, 12.5)
        self.eye_sep = u(29.0, 34.0)
        self.face_fat = u(4.0, 10.0)
        self.sinus = u(0.7, 1.25)          # sinus pneumatisation
        self.gyri = _Waves(rng, 10, 14.0, 28.0)
        self.tex_bone = _Waves(rng, 8, 6.0, 20.0)
        self.tex_soft = _Waves(rng, 8, 15.0, 60.0)
        self.mastoid = _Waves(rng, 6, 5.0, 9.0)
        self._jitter_tables(
            rng,
            ct={AIR: -1000.0, FAT: -95.0, MUSCLE: 50.0, FLUID: 8.0, ORGAN: 40.0, TRABECULAR: 620.0,
                CORTICAL: 1550.0, GAS: -930.0, GREY_MATTER: 40.0, WHITE_MATTER: 28.0},
            t1={AIR: 0.0, FAT: 800.0, MUSCLE: 320.0, FLUID: 90.0, ORGAN: 380.0, TRABECULAR: 500.0,
                CORTICAL: 20.0, GAS: 0.0, GREY_MATTER: 420.0, WHITE_MATTER: 600.0},
            t2={AIR: 0.0, FAT: 520.0, MUSCLE: 170.0, FLUID: 950.0, ORGAN: 420.0, TRABECULAR: 320.0,
                CORTICAL: 15.0, GAS: 0.0, GREY_MATTER: 560.0, WHITE_MATTER: 400.0},
            ct_jit={FAT: 8.0, MUSCLE: 6.0, FLUID: 4.0, ORGAN: 4.0, TRABECULAR: 120.0, CORTICAL: 200.0, GAS: 40.0,
                    GREY_MATTER: 3.0, WHITE_MATTER: 3.0},
        )

    def _skull(self, p):
        return _sdf_ellipsoid(p, self.skull_c, self.skull_r)

    def _face(self, p):
        c = self.skull_c
        face = _sdf_ellipsoid(p, (0.0, c[1] - 50, c[2] - 55), (56.0, 55.0, 45.0))
        nose = _capsule(p, (0.0, c[1] - 102, c[2] - 30), (0.0, c[1] - 108, c[2] - 62), 7.0, 13.0)[0]
        neck = np.maximum(_sdf_ellipse2d(p.x, p.y - (c[1] + 12), 55.0, 58.0), p.z - (c[2] - 45))
        return np.minimum(np.minimum(face, nose), neck)

    def body(self, p: _Pts):
        return (self._skull(p) < self.scalp) | (self._face(p) < 0)

    def _skull_base(self, p):
        """Height (mm) of the top of the skull base under each point: high under the frontal lobes,
        lower in the middle fossa, lowest in the posterior fossa."""
        c = self.skull_c
        dy = p.y - c[1]
        return c[2] - 28 - 0.25 * dy - 15 * _smoothstep((dy - 20) / 30.0)

    def paint(self, p: _Pts):
        n = len(p)
        c = self.skull_c
        paint = _Paint(n, FAT)
        d_sk = self._skull(p)
        face = self._face(p)
        zb = self._skull_base(p)
        T = self.skull_t
        # face, neck and everything inside the head below the skull base: muscle/soft tissue under a
        # subcutaneous fat layer
        paint((face < -self.face_fat) & (d_sk > 0), MUSCLE)
        paint((d_sk < -self.face_fat) & (p.z < zb - 6), MUSCLE)
        for s in (-1, 1):  # temporalis
            tm = _sdf_ellipsoid(p, (s * (self.skull_r[0] - 2), c[1] - 15, c[2] - 5), (9.0, 32.0, 30.0))
            paint((tm < 0) & (d_sk > 0), MUSCLE)
        # orbits: fat cone, eye globe (fluid), lens, optic nerve
        eyes = []
        for s in (-1, 1):
            ec = (s * self.eye_sep, c[1] - self.skull_r[1] + 22, c[2] - 30)
            eyes.append(ec)
            paint(_sdf_ellipsoid(p, (ec[0] * 0.9, ec[1] + 18, ec[2]), (17.0, 28.0, 15.0)) < 0, FAT)
            paint(_sdf_sphere(p, ec, self.eye_r) < 0, FLUID)
            paint(_sdf_ellipsoid(p, (ec[0], ec[1] - self.eye_r + 3, ec[2]), (4.5, 2.0, 4.5)) < 0, ORGAN)
            paint(_capsule(p, (ec[0], ec[1] + self.eye_r, ec[2]), (s * 12, ec[1] + 45, c[2] - 22), 2.5, 2.5)[0] < 0,
                  ORGAN)

        # intracranial space above the skull base: CSF, cortex (GM) with sulci over WM, deep GM,
        # ventricles, cerebellum below the tentorium, brainstem
        intra = (d_sk < -T) & (p.z > zb)
        paint(intra, FLUID)
        gyr = self.gyri(p.x, p.y, p.z)
        d_brain = np.maximum(d_sk + T + self.csf, zb + self.csf - p.z)
        brain = intra & (d_brain < 0)
        paint(brain, GREY_MATTER)
        wm = brain & (d_brain < -(self.gm + 2.0 + 2.5 * np.maximum(1.0 + gyr, 0.0)))
        paint(wm, WHITE_MATTER)
        paint(brain & (d_brain > -(self.gm + 2.5)) & (gyr > 0.9), FLUID)  # sulci
        for s in (-1, 1):  # basal ganglia / thalami
            paint(_sdf_ellipsoid(p, (s * 17, c[1] - 2, c[2] + 4), (9.0, 20.0, 10.0)) < 0, GREY_MATTER, where=wm)
        tent = c[2] - 12 + 0.1 * (p.y - c[1])
        post_fossa = brain & (p.z < tent) & (p.y > c[1] + 5)
        paint(post_fossa, GREY_MATTER)
        for s in (-1, 1):
            paint(_sdf_ellipsoid(p, (s * 20, c[1] + 50, c[2] - 32), (13.0, 15.0, 9.0)) < 0, WHITE_MATTER,
                  where=post_fossa)
        paint(_capsule(p, (0.0, c[1] + 12, c[2] - 2), (0.0, c[1] + 22, c[2] - 110), 11.0, 7.0)[0] < 0,
              WHITE_MATTER, where=(p.z > c[2] - 48))
        v = self.vent
        for s in (-1, 1):
            rot = _rotation(0, 0, s * 12)
            paint(_sdf_ellipsoid(p, (s * 9 * (0.6 + 0.4 * v), c[1] - 2, c[2] + 14), (5.0 * v, 32.0, 9.0 * v), rot) < 0,
                  FLUID, where=intra)
            paint(_capsule(p, (s * 12, c[1] + 20, c[2] + 14), (s * 24, c[1] + 40, c[2] - 8), 4.0 * v, 3.0 * v)[0] < 0,
                  FLUID, where=intra)
        paint(_sdf_ellipsoid(p, (0.0, c[1] + 5, c[2] + 2), (2.0 * v, 14.0, 9.0)) < 0, FLUID, where=intra)
        paint(_sdf_ellipsoid(p, (0.0, c[1] + 36, c[2] - 30), (6.0, 4.0, 6.0)) < 0, FLUID, where=intra)

        # skull: vault (outer and inner cortical tables around the diploe), frontal thickening, base plate
        bones = _Bones(n)
        vault = np.maximum(np.maximum(d_sk, -T - d_sk), (zb - 6) - p.z)
        bones.add(vault, self.table)  # the shell's cortex on both faces = outer and inner tables
        frontal = _sdf_ellipsoid(p, (0.0, c[1] - self.skull_r[1] + 10, c[2] + 8), (26.0, 11.0, 20.0))
        bones.add(np.maximum(frontal, d_sk), self.table)
        base = np.maximum(np.abs(p.z - (zb - 3)) - 3.0, d_sk)
        fm = _sdf_ellipse2d(p.x, p.y - (c[1] + 28), 15.0, 18.0)  # foramen magnum
        bones.add(np.maximum(base, -fm), self.table)
        bones.add(_sdf_ellipsoid(p, (0.0, c[1] - 20, c[2] - 40), (19.0, 18.0, 15.0)), 1.5)  # sphenoid body
        # face: maxilla and orbital walls
        bones.add(_sdf_ellipsoid(p, (0.0, c[1] - 62, c[2] - 66), (42.0, 30.0, 20.0)), 2.0)
        for ec in eyes:
            orb = _sdf_ellipsoid(p, (ec[0] * 0.9, ec[1] + 12, ec[2]), (19.0, 32.0, 17.0))
            bones.add(np.maximum(np.abs(orb) - 1.5, ec[1] - 4 - p.y), 1.0)
        # cervical spine below the skull base: bodies and posterior arches
        for k in range(4):
            zk = c[2] - 60 - 22 * k
            vb = np.maximum(_sdf_ellipse2d(p.x, p.y - (c[1] + 2), 16.0, 11.0), np.abs(p.z - zk) - 7.0)
            bones.add(vb, 1.5)
            ring = np.maximum(_sdf_ellipse2d(p.x, p.y - (c[1] + 24), 17.0, 15.0), np.abs(p.z - zk) - 5.0)
            ring = np.maximum(ring, -_sdf_ellipse2d(p.x, p.y - (c[1] + 24), 10.0, 9.0))
            bones.add(np.maximum(ring, (c[1] + 14) - p.y), 1.5)
        bones.paint(paint)
        # spinal canal and cord below the foramen magnum
        below = p.z < zb - 6
        canal = _sdf_ellipse2d(p.x, p.y - (c[1] + 24), 10.0, 9.0)
        paint((canal < 0) & below, FLUID)
        paint((canal < -3.5) & below, WHITE_MATTER)

        # air spaces: frontal, sphenoid and maxillary sinuses, nasal cavity, pharynx, mastoid cells;
        # where they cut bone a thin cortical wall is kept
        si = self.sinus
        air = [
            _sdf_ellipsoid(p, (0.0, c[1] - self.skull_r[1] + 9, c[2] + 6), (16 * si, 5.0 * si, 12 * si)),
            _sdf_ellipsoid(p, (0.0, c[1] - 20, c[2] - 40), (11 * si, 11 * si, 9 * si)),
            _sdf_ellipsoid(p, (0.0, c[1] - 62, c[2] - 56), (9.0, 30.0, 19.0)),
            _capsule(p, (0.0, c[1] - 26, c[2] - 62), (0.0, c[1] - 20, c[2] - 160), 8.0, 8.0)[0],
        ]
        for s in (-1, 1):
            air.append(_sdf_ellipsoid(p, (s * 27, c[1] - 60, c[2] - 64), (15 * si, 17 * si, 14 * si)))
        for a_sdf in air:
            wall = (a_sdf < 1.5) & (a_sdf >= 0) & ((paint.lab == TRABECULAR) | (paint.lab == CORTICAL))
            paint(wall, CORTICAL)
            paint(a_sdf < 0, GAS, where=(d_sk < 0) | (face < 0))
        mt = self.mastoid(p.x, p.y, p.z)
        for s in (-1, 1):
            m = _sdf_ellipsoid(p, (s * (self.skull_r[0] - 14), c[1] + 22, c[2] - 44), (10.0, 13.0, 10.0)) < 0
            paint(m, CORTICAL)
            paint(m & (mt > 0.2), GAS)

        bone_tex = self.tex_bone(p.x, p.y, p.z)
        soft_tex = self.tex_soft(p.x, p.y, p.z)
        self.info = dict(skull_thickness_mm=round(self.skull_t, 2), ventricle_scale=round(self.vent, 3),
                         sinus_scale=round(self.sinus, 3))
        return paint.lab, bone_tex, soft_tex


_ANATOMIES = {"pelvis": _Pelvis, "head": _Head}


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------
def _check_weighting(weighting: str) -> str:
    w = str(weighting).lower()
    if w not in MR_WEIGHTINGS:
        raise InputError(f"unknown MR weighting '{weighting}'.", f"use one of: {', '.join(MR_WEIGHTINGS)}.")
    return w


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}.", "pass e.g. seed=0.")
    return int(seed)


def phantom_geometry(size: Sequence[int] = DEFAULT_SIZE, spacing: Sequence[float] = DEFAULT_SPACING,
                     origin: Sequence[float] | None = None,
                     direction: Sequence[float] | None = None) -> Geometry:
    """The grid :func:`generate_case` samples on; by default the field of view is centred on (0,0,0).

    ``size`` is ``(nx, ny, nz)``. Raises :class:`InputError` for non-positive sizes or spacings and for
    a direction that is not a 3x3 orthonormal matrix.
    """
    try:
        size_t = tuple(int(s) for s in size)
        spacing_t = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"phantom size {size!r} / spacing {spacing!r} are not numbers.",
                         "give size as three integers (nx, ny, nz) and spacing as three mm values.") from None
    if len(size_t) != 3 or min(size_t) < 1:
        raise InputError(f"phantom size {size!r} is not three positive integers (nx, ny, nz).",
                         "use e.g. size=(128, 128, 48).")
    if len(spacing_t) != 3 or not all(np.isfinite(spacing_t)) or min(spacing_t) <= 0:
        raise InputError(f"phantom spacing {spacing!r} is not three positive numbers (mm).",
                         "use e.g. spacing=(3.0, 3.0, 3.0).")
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if d.size != 9 or not np.allclose(d.reshape(3, 3) @ d.reshape(3, 3).T, np.eye(3), atol=1e-4):
        raise InputError(f"phantom direction {direction!r} is not an orthonormal 3x3 matrix.",
                         "give nine row-major direction cosines of a rotation, e.g. (1,0,0, 0,1,0, 0,0,1).")
    d = d.reshape(3, 3)
    if origin is None:
        half = (np.asarray(size_t, float) - 1) * np.asarray(spacing_t) / 2
        origin_t = tuple(float(v) for v in -(d @ half))
    else:
        origin_t = tuple(float(o) for o in origin)
        if len(origin_t) != 3:
            raise InputError(f"phantom origin {origin!r} is not three numbers.", "use e.g. origin=(0, 0, 0).")
    return make_geometry(size_t, spacing_t, origin_t, tuple(d.ravel()))


def _physical_grid(geom: Geometry):
    """Physical LPS coordinates (mm) of every voxel centre, three float32 arrays of shape (nz, ny, nx)."""
    m = geom.index_to_physical()
    nx, ny, nz = geom.size
    i = np.arange(nx, dtype=np.float64)[None, None, :]
    j = np.arange(ny, dtype=np.float64)[None, :, None]
    k = np.arange(nz, dtype=np.float64)[:, None, None]
    out = []
    for r in range(3):
        # float64 for the sum (large origins), then float32 for the anatomy
        out.append((m[r, 3] + m[r, 0] * i + m[r, 1] * j + m[r, 2] * k).astype(np.float32))
    return out


def _bias_field(rng: np.random.Generator, px, py, pz, amplitude: float):
    """A smooth multiplicative field exp(sum of long-wavelength cosines + linear ramp), about +-amplitude."""
    w = _Waves(rng, 4, 250.0, 600.0)
    g = rng.normal(size=3)
    g /= np.linalg.norm(g)
    ramp = (px * _f32(g[0]) + py * _f32(g[1]) + pz * _f32(g[2])) * _f32(1 / 400.0)
    return np.exp(_f32(amplitude * 0.6) * w(px, py, pz) + _f32(amplitude * 0.5) * ramp)


def _lookup(labels, table: dict) -> np.ndarray:
    lut = np.zeros(max(LABEL_NAMES) + 1, np.float32)
    for k, v in table.items():
        lut[k] = v
    return lut[labels]


def generate_case(seed: int, region: str = "pelvis", size: Sequence[int] = DEFAULT_SIZE,
                  spacing: Sequence[float] = DEFAULT_SPACING, origin: Sequence[float] | None = None,
                  direction: Sequence[float] | None = None) -> PhantomCase:
    """Generate one paired MR/CT phantom.

    ``seed`` (non-negative int) fixes the anatomy and the noise; ``region`` is ``"pelvis"`` or
    ``"head"``; ``size`` is ``(nx, ny, nz)``, ``spacing`` in mm; ``origin`` defaults to the value that
    centres the field of view on physical (0, 0, 0); ``direction`` (nine row-major cosines) defaults
    to identity. The anatomy depends only on ``seed`` and ``region`` (not on the grid); see the module
    docstring for the image model. Returns a :class:`PhantomCase` whose CT is float32 HU clipped to
    [-1024, 3071], MR volumes float32 >= 0, mask and labels uint8.
    """
    seed = _check_seed(seed)
    region = str(region).lower()
    if region not in _ANATOMIES:
        raise InputError(f"unknown phantom region '{region}'.", f"use one of: {', '.join(REGIONS)}.")
    geom = phantom_geometry(size, spacing, origin, direction)
    region_code = REGIONS.index(region)
    rng_anat = np.random.default_rng(np.random.SeedSequence([seed, 1000 + region_code]))
    rng_noise = np.random.default_rng(np.random.SeedSequence([seed, 2000 + region_code]))
    anat = _ANATOMIES[region](rng_anat)
    # imaging parameters: drawn from the anatomy generator too, so they do not depend on the grid
    ct_sigma = float(rng_anat.uniform(10.0, 20.0))
    mr_scale = float(rng_anat.uniform(0.85, 1.15))
    mr_sigma = {"t1": float(rng_anat.uniform(0.012, 0.025) * 800 * mr_scale),
                "t2": float(rng_anat.uniform(0.012, 0.025) * 800 * mr_scale)}
    bias_amp = float(rng_anat.uniform(0.12, 0.25))

    px, py, pz = _physical_grid(geom)
    bias = {"t1": _bias_field(rng_anat, px, py, pz, bias_amp), "t2": _bias_field(rng_anat, px, py, pz, bias_amp)}
    q = anat.to_anatomical(px, py, pz)
    inside = anat.body(q)
    flat = np.flatnonzero(inside.ravel())
    sub = _Pts(q.x.ravel()[flat], q.y.ravel()[flat], q.z.ravel()[flat])
    lab_sub, bone_tex, soft_tex = anat.paint(sub)

    shape = geom.shape
    labels = np.zeros(shape, np.uint8)
    labels.ravel()[flat] = lab_sub

    # noise-free CT with a trabecular density texture and a faint soft-tissue texture
    ct_sub = _lookup(lab_sub, anat.ct_hu)
    trab = lab_sub == TRABECULAR
    ct_sub[trab] += _f32(60.0) * bone_tex[trab]
    soft = (lab_sub != TRABECULAR) & (lab_sub != CORTICAL) & (lab_sub != GAS)
    ct_sub[soft] += _f32(4.0) * soft_tex[soft]
    ct = np.full(shape, anat.ct_hu[AIR], np.float32)
    ct.ravel()[flat] = ct_sub

    mr = {}
    for w, table in (("t1", anat.mr_t1), ("t2", anat.mr_t2)):
        s = _lookup(lab_sub, table) * _f32(mr_scale)
        s *= 1 + _f32(0.03) * soft_tex
        if w == "t1":  # denser trabecular bone has less (fatty) marrow signal
            s[trab] -= _f32(40.0 * mr_scale) * bone_tex[trab]
        full = np.zeros(shape, np.float32)
        full.ravel()[flat] = np.maximum(s, 0)
        mr[w] = full

    sig = [_PSF_SIGMA_VOX] * 3
    ct = ndimage.gaussian_filter(ct, sig, mode="nearest")
    noise = ndimage.gaussian_filter(rng_noise.standard_normal(shape, dtype=np.float32),
                                    [_CT_NOISE_SMOOTH_VOX] * 3, mode="wrap")
    noise *= _f32(ct_sigma / max(float(noise.std()), 1e-12))
    ct = np.clip(ct + noise, _HU_MIN, _HU_MAX).astype(np.float32)

    mr_out = {}
    for w in MR_WEIGHTINGS:
        s = ndimage.gaussian_filter(mr[w], sig, mode="nearest") * bias[w]
        sg = _f32(mr_sigma[w])
        re = s + sg * rng_noise.standard_normal(shape, dtype=np.float32)
        im = sg * rng_noise.standard_normal(shape, dtype=np.float32)
        mr_out[w] = np.sqrt(re * re + im * im).astype(np.float32)

    present = sorted(int(v) for v in np.unique(labels))
    meta = dict(seed=seed, region=region,
                label_names={k: v for k, v in LABEL_NAMES.items()},
                labels_present=present,
                ct_hu={LABEL_NAMES[k]: round(v, 1) for k, v in anat.ct_hu.items()},
                ct_noise_sigma=round(ct_sigma, 3),
                mr_noise_sigma={k: float(np.float32(v)) for k, v in mr_sigma.items()},
                bias_amplitude=round(bias_amp, 3),
                anatomy=dict(anat.info))
    vol = lambda a: Volume(a, geom)  # noqa: E731
    return PhantomCase(ct=vol(ct), mr_t1=vol(mr_out["t1"]), mr_t2=vol(mr_out["t2"]),
                       mask=vol(inside.astype(np.uint8)), labels=vol(labels), meta=meta)


def _write_json_atomic(obj, path: Path) -> Path:
    return write_json(path, obj, sort_keys=True)


def write_case(case: PhantomCase, folder: str | os.PathLike, mr_weighting: str = "t2") -> dict:
    """Write a case in the SynthRAD folder layout and return ``{name: path}``.

    Files: ``mr.nii.gz`` (the ``mr_weighting`` volume, float32), ``ct.nii.gz`` (int16 HU),
    ``mask.nii.gz`` (uint8 body mask), ``mr_t1.nii.gz``, ``mr_t2.nii.gz`` (float32),
    ``labels.nii.gz`` (uint8 tissue labels) and ``meta.json`` (the case's ``meta``, with
    ``mr_weighting``). Every file is written atomically; ``folder`` is created if missing.
    """
    w = _check_weighting(mr_weighting)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "mr": write_volume(case.mr(w), folder / "mr.nii.gz", dtype=np.float32),
        "ct": write_volume(case.ct.with_array(np.rint(case.ct.array)), folder / "ct.nii.gz", dtype=np.int16),
        "mask": write_volume(case.mask, folder / "mask.nii.gz", dtype=np.uint8),
        "mr_t1": write_volume(case.mr_t1, folder / "mr_t1.nii.gz", dtype=np.float32),
        "mr_t2": write_volume(case.mr_t2, folder / "mr_t2.nii.gz", dtype=np.float32),
        "labels": write_volume(case.labels, folder / "labels.nii.gz", dtype=np.uint8),
    }
    meta = dict(case.meta)
    meta["label_names"] = {str(k): v for k, v in meta.get("label_names", {}).items()}
    meta["mr_weighting"] = w
    paths["meta"] = _write_json_atomic(meta, folder / "meta.json")
    return paths


def generate_dataset(out_dir: str | os.PathLike, n_cases: int, first_seed: int = 0, region: str = "pelvis",
                     size: Sequence[int] = DEFAULT_SIZE, spacing: Sequence[float] = DEFAULT_SPACING,
                     mr_weighting: str = "t2",
                     progress: Callable[[float, str], None] | None = None) -> list[Path]:
    """Generate ``n_cases`` phantoms with seeds ``first_seed, first_seed + 1, ...`` into ``out_dir``.

    Case ``i`` goes to ``out_dir/case_{i:03d}`` (see :func:`write_case`). ``progress(fraction,
    message)`` is called after each case. Returns the case folders in order.
    """
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise InputError(f"number of phantom cases must be a positive integer, got {n_cases!r}.",
                         "pass e.g. n_cases=4.")
    first_seed = _check_seed(first_seed)
    _check_weighting(mr_weighting)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for i in range(int(n_cases)):
        case = generate_case(first_seed + i, region=region, size=size, spacing=spacing)
        folder = out / f"case_{i:03d}"
        write_case(case, folder, mr_weighting=mr_weighting)
        folders.append(folder)
        if progress is not None:
            progress((i + 1) / n_cases, f"phantom {i + 1}/{n_cases} (seed {first_seed + i}) -> {folder}")
    return folders
