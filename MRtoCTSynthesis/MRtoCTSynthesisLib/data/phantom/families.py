"""Phantom families: paired MR/CT cases whose anatomy, body size, MR contrast and acquisition vary per case.

A :class:`Family` is a set of ranges; :func:`generate_family_case` draws one case of a family from a seed:

* **anatomy**: the pelvis (or head) of :mod:`.pelvis`/:mod:`.head` for that seed (the same anatomy the plain
  :func:`.generate.generate_case` gives for the seed), scaled per axis (``body_scale``, ``z_scale``: body
  size and shape from child-like to large adults) and, optionally, with another body-outline exponent
  (``body_exponent``: rounder or boxier);
* **MR contrast**: a protocol drawn from ``protocols`` (:mod:`.mr_physics`: T1-, T2-, PD-weighted spin echo,
  T1 gradient echo with the chemical-shift phase of its TE, Dixon water / fat / in-phase / opposed-phase,
  T1-weighted inversion recovery, balanced SSFP) at a field strength from ``field_strengths``, with the
  tissues' PD, T1, T2 and fat fractions varied per case; ``legacy_t1`` / ``legacy_t2`` are the tables of
  :func:`.generate.generate_case` (the demo case's contrast) and ``random`` gives every soft tissue a random
  brightness (bone cortex, air and gas stay dark), so that shape, not one contrast's grey levels, has to carry
  the mapping;
* **acquisition**: in-plane pixel size (log-uniform in ``inplane_mm``), slice spacing (``slice_mm``; the
  partial-volume blur is half a voxel along each axis, so thick slices are blurred through the plane), the
  thick axis along z (axial), y (coronal) or x (sagittal) (``plane_weights``), an oblique rotation of the
  slice stack (``oblique_deg`` in a fraction ``oblique_fraction`` of cases), a field of view that covers
  the body or crops it (``fov_crop_fraction``), a slab of ``slab_mm`` around a height drawn in ``z_centre_mm``;
* **image formation**: the CT as in :func:`.generate.generate_case`; the MR signal per tissue with a mild
  texture (and, in marrow, the trabecular density: denser bone, less marrow signal), the partial-volume
  blur, a smooth multiplicative bias field of amplitude ``bias`` and Rician noise of standard deviation
  ``noise`` times the 99th percentile of the body signal.

:data:`FAMILIES` holds ``wide`` (the training distribution of the bundled model) and two held-out families
whose settings ``wide`` never draws (``heldout_large_t2``: a larger, boxier body, 3 T T2 spin echo, 0.93 x
0.93 x 3 mm oblique slices, 25 % bias; ``heldout_small_bssfp``: a small lean body and the balanced-SSFP
contrast, 1.3 x 1.3 x 5 mm). The anatomy is drawn from the seed alone and the imaging from the seed and the
family's name, so seeds used for training must not be reused for held-out cases (the recipe trains on seeds
from 1000, the held-out families use seeds from 9000, the demo case is seed 42).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from ...errors import InputError
from ...io.atomic import write_json
from ...io.volume import Volume, write_volume
from .generate import (
    ANATOMIES,
    PSF_SIGMA_VOX,
    bias_field,
    blur_and_noise_ct,
    check_seed,
    lookup,
    noise_free_ct,
    paint_anatomy,
    phantom_geometry,
    physical_grid,
    rician,
)
from .mr_physics import PROTOCOL_KINDS, TISSUES, draw_protocol, jitter, signal_table
from .shapes import f32
from .tissues import AIR, CORTICAL, GAS, LABEL_NAMES, REGIONS, TRABECULAR

CONTRASTS = PROTOCOL_KINDS + ("legacy_t1", "legacy_t2", "random")


@dataclass(frozen=True)
class Family:
    """Ranges a family's cases are drawn from (see the module docstring). Lengths in mm, angles in degrees."""

    name: str
    description: str
    region: str = "pelvis"
    protocols: dict = field(default_factory=lambda: {"t2_se": 1.0})   # contrast -> weight
    field_strengths: tuple = (1.5, 3.0)
    body_scale: tuple = (0.85, 1.15)      # in-plane scale of the anatomy, drawn per axis (x, y)
    z_scale: tuple = (0.92, 1.08)
    body_exponent: tuple | None = None    # superellipse exponent of the outline (None: the anatomy's own 2.3-2.9)
    inplane_mm: tuple = (1.2, 6.0)        # log-uniform
    slice_mm: tuple = (1.0, 6.0)
    plane_weights: tuple = (1.0, 0.0, 0.0)  # thick axis along z (axial), y (coronal), x (sagittal)
    oblique_deg: tuple = (0.0, 0.0)
    oblique_fraction: float = 0.0
    fov_crop_fraction: float = 0.0
    fov_margin_mm: tuple = (15.0, 70.0)
    slab_mm: tuple = (144.0, 144.0)
    z_centre_mm: tuple = (0.0, 0.0)
    bias: tuple = (0.12, 0.25)
    noise: tuple = (0.01, 0.03)
    ct_noise_hu: tuple = (10.0, 20.0)

    def to_dict(self) -> dict:
        return asdict(self)


FAMILIES: dict[str, Family] = {
    "wide": Family(
        "wide", "training distribution of the bundled default model: pelvis, every contrast of mr_physics except "
                "balanced SSFP, the demo's legacy tables and random contrasts; bodies 0.85-1.15x; 1.2-6 mm pixels, "
                "1-6 mm slices, axial/coronal/sagittal stacks, oblique up to 20 degrees, cropped fields of view",
        protocols={"t1_se": 1.0, "t2_se": 1.5, "pd_se": 0.7, "t1_gre": 0.8, "dixon": 1.2, "ir_t1": 0.4,
                   "legacy_t1": 0.5, "legacy_t2": 1.0, "random": 0.8},
        field_strengths=(1.5, 3.0), body_scale=(0.85, 1.15), z_scale=(0.92, 1.08), body_exponent=None,
        inplane_mm=(1.2, 6.0), slice_mm=(1.0, 6.0), plane_weights=(0.7, 0.15, 0.15),
        oblique_deg=(3.0, 20.0), oblique_fraction=0.5, fov_crop_fraction=0.3, fov_margin_mm=(10.0, 70.0),
        slab_mm=(40.0, 90.0), z_centre_mm=(-80.0, 80.0), bias=(0.0, 0.4), noise=(0.005, 0.05)),
    "heldout_large_t2": Family(
        "heldout_large_t2", "held out: a larger, boxier body (1.18-1.28x, outline exponent 3.0-3.4), 3 T T2 spin "
                            "echo, 0.93 x 0.93 x 3 mm oblique (12-20 degrees) slices, 25 % bias, Rician noise",
        protocols={"t2_se": 1.0}, field_strengths=(3.0,), body_scale=(1.18, 1.28), z_scale=(1.0, 1.1),
        body_exponent=(3.0, 3.4), inplane_mm=(0.93, 0.93), slice_mm=(3.0, 3.0), oblique_deg=(12.0, 20.0),
        oblique_fraction=1.0, fov_margin_mm=(20.0, 40.0), slab_mm=(96.0, 96.0), z_centre_mm=(-20.0, 20.0),
        bias=(0.25, 0.25), noise=(0.02, 0.03)),
    "heldout_small_bssfp": Family(
        "heldout_small_bssfp", "held out: a small lean body (0.74-0.82x), the balanced-SSFP contrast (never "
                               "trained), 1.3 x 1.3 x 5 mm axial slices, 15 % bias, Rician noise",
        protocols={"bssfp": 1.0}, field_strengths=(1.5,), body_scale=(0.74, 0.82), z_scale=(0.85, 0.9),
        inplane_mm=(1.3, 1.3), slice_mm=(5.0, 5.0), fov_margin_mm=(20.0, 40.0), slab_mm=(100.0, 100.0),
        z_centre_mm=(-20.0, 20.0), bias=(0.15, 0.15), noise=(0.03, 0.04)),
}


def get_family(family: str | Family) -> Family:
    if isinstance(family, Family):
        return family
    if family not in FAMILIES:
        raise InputError(f"unknown phantom family {family!r}.", f"use one of: {', '.join(FAMILIES)}.")
    return FAMILIES[family]


@dataclass
class FamilyCase:
    """One case of a family: MR (the drawn contrast), CT (HU), body mask and labels on one grid, and what was drawn."""

    mr: Volume
    ct: Volume
    mask: Volume
    labels: Volume
    meta: dict


def pick_weighted(rng: np.random.Generator, weights: dict) -> str:
    names = sorted(weights)
    p = np.array([float(weights[n]) for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _uniform(rng, lo_hi) -> float:
    lo, hi = (float(v) for v in lo_hi)
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def draw_acquisition(rng: np.random.Generator, fam: Family, half_width: float, half_depth: float) -> dict:
    """Grid of one case: spacing, size, origin and direction (see :class:`Family`); ``half_width`` and
    ``half_depth`` (mm) are the body's approximate half extents in x and y."""
    lo, hi = fam.inplane_mm
    s = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)
    dz = _uniform(rng, fam.slice_mm)
    plane = int(rng.choice(3, p=np.asarray(fam.plane_weights, float) / sum(fam.plane_weights)))
    crop = rng.uniform() < fam.fov_crop_fraction
    if crop:
        fov_x = 2 * half_width * rng.uniform(0.6, 0.95)
        fov_y = 2 * half_depth * rng.uniform(0.7, 1.0)
    else:
        fov_x = 2 * half_width + 2 * _uniform(rng, fam.fov_margin_mm)
        fov_y = 2 * half_depth + 2 * _uniform(rng, fam.fov_margin_mm)
    slab = _uniform(rng, fam.slab_mm)
    zc = _uniform(rng, fam.z_centre_mm)
    shift = (rng.uniform(-20, 20), rng.uniform(-20, 20)) if not crop else (rng.uniform(-60, 60), rng.uniform(-40, 40))
    spacing = [s, s, s]
    spacing[2 - plane] = dz  # plane 0: thick z, 1: thick y, 2: thick x
    extent = (fov_x, fov_y, slab)
    size = [max(1, int(round(e / sp))) for e, sp in zip(extent, spacing)]
    if rng.uniform() < fam.oblique_fraction:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        ang = math.radians(_uniform(rng, fam.oblique_deg))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * (k @ k)  # Rodrigues
        angle_deg = math.degrees(ang)
    else:
        rot, angle_deg = np.eye(3), 0.0
    centre = np.array([shift[0], shift[1], zc])
    half = (np.asarray(size, float) - 1) * np.asarray(spacing) / 2
    origin = centre - rot @ half
    return dict(size=tuple(size), spacing=tuple(spacing), origin=tuple(float(v) for v in origin),
                direction=tuple(float(v) for v in rot.ravel()), plane=("axial", "coronal", "sagittal")[plane],
                oblique_deg=round(angle_deg, 2), fov_cropped=bool(crop))


def mr_table(rng: np.random.Generator, contrast: str, b0: float, anat) -> tuple[dict, dict]:
    """Signal per label for one case and a description of the protocol."""
    if contrast in ("legacy_t1", "legacy_t2"):
        table = dict(anat.mr_t1 if contrast == "legacy_t1" else anat.mr_t2)
        return table, {"name": contrast, "kind": "table of data.phantom.generate (the demo case's contrast)"}
    if contrast == "random":
        table = {label: float(rng.uniform(60.0, 1000.0)) for label in LABEL_NAMES}
        table[CORTICAL] = float(rng.uniform(0.0, 50.0))
        table[AIR] = table[GAS] = 0.0
        return table, {"name": "random", "kind": "random brightness per soft tissue; cortex, air, gas dark"}
    protocol = draw_protocol(rng, contrast, b0)
    return signal_table(jitter(TISSUES, rng), protocol), protocol.to_dict()


def generate_family_case(family: str | Family, seed: int) -> FamilyCase:
    """One case of ``family`` (a name of :data:`FAMILIES` or a :class:`Family`) for ``seed``; deterministic."""
    fam = get_family(family)
    seed = check_seed(seed)
    if fam.region not in ANATOMIES:
        raise InputError(f"unknown phantom region '{fam.region}'.", f"use one of: {', '.join(REGIONS)}.")
    region_code = REGIONS.index(fam.region)
    code = zlib.crc32(fam.name.encode())
    rng_anat = np.random.default_rng(np.random.SeedSequence([seed, 1000 + region_code]))
    rng_img = np.random.default_rng(np.random.SeedSequence([seed, 3000, code]))
    rng_noise = np.random.default_rng(np.random.SeedSequence([seed, 4000, code]))
    anat = ANATOMIES[fam.region](rng_anat)
    sx, sy = _uniform(rng_img, fam.body_scale), _uniform(rng_img, fam.body_scale)
    anat.scale = (sx, sy, _uniform(rng_img, fam.z_scale))
    if fam.body_exponent is not None and hasattr(anat, "n_body"):
        anat.n_body = _uniform(rng_img, fam.body_exponent)
    if fam.region == "pelvis":
        half_w = (anat.a_lean + anat.t_lat) * sx
        half_d = (anat.b_lean * 1.1 + max(anat.t_ant, anat.t_post)) * sy
    else:
        half_w, half_d = 85.0 * sx, 105.0 * sy
    acq = draw_acquisition(rng_img, fam, half_w, half_d)
    contrast = pick_weighted(rng_img, fam.protocols)
    b0 = float(fam.field_strengths[int(rng_img.integers(len(fam.field_strengths)))])
    table, protocol = mr_table(rng_img, contrast, b0, anat)
    bias_amp = _uniform(rng_img, fam.bias)
    noise_frac = _uniform(rng_img, fam.noise)
    ct_sigma = _uniform(rng_img, fam.ct_noise_hu)
    tex_amp = float(rng_img.uniform(0.02, 0.06))

    geom = phantom_geometry(acq["size"], acq["spacing"], acq["origin"], acq["direction"])
    shape = geom.shape
    if np.prod(shape) > 40_000_000:
        raise InputError(f"family {fam.name!r} drew a {shape} grid (over 40 M voxels).", "narrow the family's ranges.")
    px, py, pz = physical_grid(geom)
    bias = bias_field(rng_img, px, py, pz, bias_amp)
    painted = paint_anatomy(anat, px, py, pz, shape)
    del px, py, pz
    ct = blur_and_noise_ct(noise_free_ct(anat, painted, shape), ct_sigma, rng_noise)

    lab_sub, bone_tex, soft_tex = painted["lab_sub"], painted["bone_tex"], painted["soft_tex"]
    s = lookup(lab_sub, table)
    s *= 1 + f32(tex_amp) * soft_tex
    trab = lab_sub == TRABECULAR
    s[trab] *= 1 - f32(0.15) * bone_tex[trab]  # denser trabecular bone, less marrow signal
    mr = np.zeros(shape, np.float32)
    mr.ravel()[painted["flat"]] = np.maximum(s, 0)
    mr = ndimage.gaussian_filter(mr, [PSF_SIGMA_VOX] * 3, mode="nearest") * bias
    body = mr[painted["inside"]]
    level = float(np.percentile(body, 99)) if body.size else 1.0
    mr = rician(mr, noise_frac * max(level, 1e-6), rng_noise)

    meta = dict(family=fam.name, seed=seed, region=fam.region, contrast=contrast, field_strength_t=b0,
                protocol=protocol, body_scale=[round(v, 4) for v in anat.scale],
                body_exponent=round(float(getattr(anat, "n_body", float("nan"))), 3), acquisition=acq,
                bias_amplitude=round(bias_amp, 4), mr_noise_fraction=round(noise_frac, 5),
                ct_noise_sigma=round(ct_sigma, 3), labels_present=sorted(int(v) for v in np.unique(painted["labels"])),
                label_names={str(k): v for k, v in LABEL_NAMES.items()},
                ct_hu={LABEL_NAMES[k]: round(v, 1) for k, v in anat.ct_hu.items()}, anatomy=dict(anat.info))
    vol = lambda a: Volume(a, geom)  # noqa: E731
    return FamilyCase(mr=vol(mr), ct=vol(ct), mask=vol(painted["inside"].astype(np.uint8)),
                      labels=vol(painted["labels"]), meta=meta)


def write_family_case(case: FamilyCase, folder: str | os.PathLike) -> dict:
    """Write ``mr``, ``ct`` (int16 HU), ``mask``, ``labels`` and ``meta.json`` into ``folder`` (SynthRAD layout)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "mr": write_volume(case.mr, folder / "mr.nii.gz", dtype=np.float32),
        "ct": write_volume(case.ct.with_array(np.rint(case.ct.array)), folder / "ct.nii.gz", dtype=np.int16),
        "mask": write_volume(case.mask, folder / "mask.nii.gz", dtype=np.uint8),
        "labels": write_volume(case.labels, folder / "labels.nii.gz", dtype=np.uint8),
    }
    paths["meta"] = write_json(folder / "meta.json", json.loads(json.dumps(case.meta, default=float)), sort_keys=True)
    return paths


def generate_family_dataset(out_dir: str | os.PathLike, family: str | Family, n_cases: int, first_seed: int,
                            prefix: str | None = None,
                            progress: Callable[[float, str], None] | None = None) -> list[Path]:
    """``n_cases`` cases of ``family`` with seeds ``first_seed, first_seed + 1, ...`` into
    ``out_dir/<prefix>_<seed>``; a case folder that already has its ``meta.json`` is kept (resumable)."""
    fam = get_family(family)
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise InputError(f"number of cases must be a positive integer, got {n_cases!r}.", "pass e.g. n_cases=4.")
    out = Path(out_dir)
    folders = []
    for i in range(int(n_cases)):
        seed = int(first_seed) + i
        folder = out / f"{prefix or fam.name}_{seed:05d}"
        if not (folder / "meta.json").exists():
            write_family_case(generate_family_case(fam, seed), folder)
        folders.append(folder)
        if progress is not None:
            progress((i + 1) / n_cases, f"{fam.name} case {i + 1}/{n_cases} (seed {seed}) -> {folder}")
    return folders
