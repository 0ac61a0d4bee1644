"""The phantoms' geometry kit: point sets, approximate signed distances (negative inside, in mm), smooth
textures, label painting, bones with a cortical shell, and the :class:`Anatomy` base (a per-case rigid pose and
smooth non-rigid deformation, and per-case jitter of the tissue tables)."""

from __future__ import annotations

import math

import numpy as np

from .tissues import CORTICAL, TRABECULAR


class Points:
    """Physical points as three flat float32 arrays (anatomical frame, mm)."""

    __slots__ = ("x", "y", "z")

    def __init__(self, x, y, z):
        self.x, self.y, self.z = x, y, z

    def take(self, sel) -> "Points":
        return Points(self.x[sel], self.y[sel], self.z[sel])

    def __len__(self):
        return self.x.shape[0]


def f32(v):
    return np.float32(v)


def sdf_sphere(p: Points, c, r):
    return np.sqrt((p.x - c[0]) ** 2 + (p.y - c[1]) ** 2 + (p.z - c[2]) ** 2) - r


def sdf_ellipsoid(p: Points, c, radii, rot=None):
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


def sdf_ellipse2d(u, v, ru, rv):
    """Approximate signed distance to an axis-aligned ellipse in a plane (radii may be arrays)."""
    k0 = np.sqrt((u / ru) ** 2 + (v / rv) ** 2)
    k1 = np.sqrt((u / (ru * ru)) ** 2 + (v / (rv * rv)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def sdf_capsule(p: Points, a, b, ra, rb):
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


def smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def rotation_matrix(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Waves:
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
            out += np.cos(x * f32(kx) + y * f32(ky) + z * f32(kz) + f32(ph))
        return out * f32(self.norm)


class Paint:
    """Label painter over a point subset: later strokes override earlier ones."""

    def __init__(self, n: int, base: int):
        self.lab = np.full(n, base, np.uint8)

    def __call__(self, sel, label, where=None):
        if where is not None:
            sel = sel & where
        self.lab[sel] = label


class Bones:
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

    def paint(self, paint: Paint):
        paint(self.bone, CORTICAL)
        paint(self.trab, TRABECULAR)


class Anatomy:
    """Common frame handling: a per-case rigid pose and a smooth non-rigid deformation (mm)."""

    region = ""

    def _init_frame(self, rng, max_rot=(3.0, 3.0, 6.0), max_shift=(8.0, 8.0, 10.0), defo_mm=4.0):
        self.rot = rotation_matrix(*(rng.uniform(-m, m) for m in max_rot))
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

    def to_anatomical(self, px, py, pz) -> Points:
        """Map physical (scanner) coordinates to this case's deformed anatomical frame."""
        dx, dy, dz = px - f32(self.shift[0]), py - f32(self.shift[1]), pz - f32(self.shift[2])
        r = self.rot  # q = R^T d
        qx = f32(r[0, 0]) * dx + f32(r[1, 0]) * dy + f32(r[2, 0]) * dz
        qy = f32(r[0, 1]) * dx + f32(r[1, 1]) * dy + f32(r[2, 1]) * dz
        qz = f32(r[0, 2]) * dx + f32(r[1, 2]) * dy + f32(r[2, 2]) * dz
        out = []
        for q, (k, amp, ph) in zip((qx, qy, qz), self.defo):
            u = np.zeros_like(q)
            for j in range(3):
                u += f32(amp[j]) * np.sin(qx * f32(k[j, 0]) + qy * f32(k[j, 1]) + qz * f32(k[j, 2])
                                           + f32(ph[j]))
            out.append(q + u)
        scale = getattr(self, "scale", None)  # optional per-axis body scale (data.phantom.families)
        if scale is not None:
            out = [q / f32(s) for q, s in zip(out, scale)]
        return Points(*out)

    # subclasses: body(p) -> bool, paint(p) -> (labels, bone_texture), tables
    def _jitter_tables(self, rng, ct, t1, t2, ct_jit, mr_rel=0.06):
        self.ct_hu = {k: float(v + rng.uniform(-ct_jit.get(k, 0.0), ct_jit.get(k, 0.0))) for k, v in ct.items()}
        self.mr_t1 = {k: float(v * (1 + rng.uniform(-mr_rel, mr_rel))) for k, v in t1.items()}
        self.mr_t2 = {k: float(v * (1 + rng.uniform(-mr_rel, mr_rel))) for k, v in t2.items()}
