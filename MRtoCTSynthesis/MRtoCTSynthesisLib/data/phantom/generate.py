"""Image formation and the public entry points: :func:`generate_case` (labels -> CT in HU and T1/T2 MR on one
grid), :func:`write_case` and :func:`generate_dataset` (the SynthRAD folder layout of ``mrtoct phantom``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ...errors import InputError
from ...io.atomic import write_json
from ...io.volume import Geometry, Volume, make_geometry, write_volume
from .head import HeadAnatomy
from .pelvis import PelvisAnatomy
from .shapes import Points, Waves, f32
from .tissues import (
    AIR,
    CORTICAL,
    DEFAULT_SIZE,
    DEFAULT_SPACING,
    GAS,
    LABEL_NAMES,
    MR_WEIGHTINGS,
    REGIONS,
    TRABECULAR,
    PhantomCase,
    check_weighting,
)

PSF_SIGMA_VOX = 0.5        # partial-volume blur of the noise-free images, in voxels
CT_NOISE_SMOOTH_VOX = 0.6  # correlation of the CT noise, in voxels
HU_MIN, HU_MAX = -1024.0, 3071.0

ANATOMIES = {"pelvis": PelvisAnatomy, "head": HeadAnatomy}


def check_seed(seed) -> int:
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


def physical_grid(geom: Geometry):
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


def bias_field(rng: np.random.Generator, px, py, pz, amplitude: float):
    """A smooth multiplicative field exp(sum of long-wavelength cosines + linear ramp), about +-amplitude."""
    w = Waves(rng, 4, 250.0, 600.0)
    g = rng.normal(size=3)
    g /= np.linalg.norm(g)
    ramp = (px * f32(g[0]) + py * f32(g[1]) + pz * f32(g[2])) * f32(1 / 400.0)
    return np.exp(f32(amplitude * 0.6) * w(px, py, pz) + f32(amplitude * 0.5) * ramp)


def lookup(labels, table: dict) -> np.ndarray:
    lut = np.zeros(max(LABEL_NAMES) + 1, np.float32)
    for k, v in table.items():
        lut[k] = v
    return lut[labels]


def paint_anatomy(anat, px, py, pz, shape) -> dict:
    """Labels of ``anat`` at the physical points (px, py, pz) of a grid of ``shape`` (no random draws):
    ``inside`` (body mask), ``flat`` (its flat indices), ``lab_sub``/``bone_tex``/``soft_tex`` (per body
    voxel) and the full ``labels`` volume."""
    q = anat.to_anatomical(px, py, pz)
    inside = anat.body(q)
    flat = np.flatnonzero(inside.ravel())
    sub = Points(q.x.ravel()[flat], q.y.ravel()[flat], q.z.ravel()[flat])
    lab_sub, bone_tex, soft_tex = anat.paint(sub)
    labels = np.zeros(shape, np.uint8)
    labels.ravel()[flat] = lab_sub
    return dict(inside=inside, flat=flat, lab_sub=lab_sub, bone_tex=bone_tex, soft_tex=soft_tex, labels=labels)


def noise_free_ct(anat, painted: dict, shape) -> np.ndarray:
    """The CT in HU before blur and noise: a value per tissue, a trabecular density texture and a faint
    soft-tissue texture."""
    lab_sub, bone_tex, soft_tex = painted["lab_sub"], painted["bone_tex"], painted["soft_tex"]
    ct_sub = lookup(lab_sub, anat.ct_hu)
    trab = lab_sub == TRABECULAR
    ct_sub[trab] += f32(60.0) * bone_tex[trab]
    soft = (lab_sub != TRABECULAR) & (lab_sub != CORTICAL) & (lab_sub != GAS)
    ct_sub[soft] += f32(4.0) * soft_tex[soft]
    ct = np.full(shape, anat.ct_hu[AIR], np.float32)
    ct.ravel()[painted["flat"]] = ct_sub
    return ct


def blur_and_noise_ct(ct: np.ndarray, ct_sigma: float, rng_noise: np.random.Generator) -> np.ndarray:
    """Partial-volume blur (half a voxel), then slightly correlated Gaussian noise of std ``ct_sigma``, clipped."""
    ct = ndimage.gaussian_filter(ct, [PSF_SIGMA_VOX] * 3, mode="nearest")
    noise = ndimage.gaussian_filter(rng_noise.standard_normal(ct.shape, dtype=np.float32),
                                    [CT_NOISE_SMOOTH_VOX] * 3, mode="wrap")
    noise *= f32(ct_sigma / max(float(noise.std()), 1e-12))
    return np.clip(ct + noise, HU_MIN, HU_MAX).astype(np.float32)


def rician(signal: np.ndarray, sigma: float, rng_noise: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std ``sigma`` per channel (Rician)."""
    sg = f32(sigma)
    re = signal + sg * rng_noise.standard_normal(signal.shape, dtype=np.float32)
    im = sg * rng_noise.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


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
    seed = check_seed(seed)
    region = str(region).lower()
    if region not in ANATOMIES:
        raise InputError(f"unknown phantom region '{region}'.", f"use one of: {', '.join(REGIONS)}.")
    geom = phantom_geometry(size, spacing, origin, direction)
    region_code = REGIONS.index(region)
    rng_anat = np.random.default_rng(np.random.SeedSequence([seed, 1000 + region_code]))
    rng_noise = np.random.default_rng(np.random.SeedSequence([seed, 2000 + region_code]))
    anat = ANATOMIES[region](rng_anat)
    # imaging parameters: drawn from the anatomy generator too, so they do not depend on the grid
    ct_sigma = float(rng_anat.uniform(10.0, 20.0))
    mr_scale = float(rng_anat.uniform(0.85, 1.15))
    mr_sigma = {"t1": float(rng_anat.uniform(0.012, 0.025) * 800 * mr_scale),
                "t2": float(rng_anat.uniform(0.012, 0.025) * 800 * mr_scale)}
    bias_amp = float(rng_anat.uniform(0.12, 0.25))

    px, py, pz = physical_grid(geom)
    bias = {"t1": bias_field(rng_anat, px, py, pz, bias_amp), "t2": bias_field(rng_anat, px, py, pz, bias_amp)}
    shape = geom.shape
    painted = paint_anatomy(anat, px, py, pz, shape)
    inside, flat, lab_sub, bone_tex, soft_tex, labels = (painted[k] for k in (
        "inside", "flat", "lab_sub", "bone_tex", "soft_tex", "labels"))
    trab = lab_sub == TRABECULAR
    ct = noise_free_ct(anat, painted, shape)

    mr = {}
    for w, table in (("t1", anat.mr_t1), ("t2", anat.mr_t2)):
        s = lookup(lab_sub, table) * f32(mr_scale)
        s *= 1 + f32(0.03) * soft_tex
        if w == "t1":  # denser trabecular bone has less (fatty) marrow signal
            s[trab] -= f32(40.0 * mr_scale) * bone_tex[trab]
        full = np.zeros(shape, np.float32)
        full.ravel()[flat] = np.maximum(s, 0)
        mr[w] = full

    sig = [PSF_SIGMA_VOX] * 3
    ct = blur_and_noise_ct(ct, ct_sigma, rng_noise)

    mr_out = {}
    for w in MR_WEIGHTINGS:
        s = ndimage.gaussian_filter(mr[w], sig, mode="nearest") * bias[w]
        sg = f32(mr_sigma[w])
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
    w = check_weighting(mr_weighting)
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
    first_seed = check_seed(first_seed)
    check_weighting(mr_weighting)
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
