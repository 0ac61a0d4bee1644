"""Generated MR -> CT registration cases with a known rigid motion (for ``benchmarks/registration.py``).

Not a test and not part of the engine. Each case is built from a :class:`CaseSpec`:

* the anatomy comes from the project's phantom generator (:func:`MRtoCTSynthesisLib.data.phantom.generate_case`),
  defined in millimetres, so the CT and the MRI of one seed coincide in physical space;
* the fixed CT is generated on its own grid (spacing, size, a direction tilted by ``fixed_tilt_deg``);
* the moving MRI is generated on a grid ``thick_factor`` times finer along its slice axis and then
  resampled onto the thick grid by SimpleITK's ``BinShrink`` (each thick slice is the mean of
  ``thick_factor`` thin ones: a box slice profile, as a 2D acquisition has), on a direction tilted by
  ``moving_tilt_deg`` (the "oblique" acquisition), optionally cut to a partial field of view;
* the known motion ``true`` (Euler angles in degrees about the physical origin, then a shift in mm) is
  applied by carrying the MRI's grid (origin and direction), so the moved MRI is not interpolated and
  ``true`` maps each fixed (CT) physical point to where the same anatomy lies in the moving image:
  the transform a registration must find (fixed -> moving, ITK's convention).

Target points, all in fixed (CT) space: the centroid of every tissue label of the CT case, the eight
corners of the body's bounding box (index box of the CT mask, to physical), and 200 random body voxels.

``real_mni152`` cases use a real MRI instead: the ICBM 2009a T1 template (1 mm, an average of 152 adult
MRIs) that nilearn 0.14.1 ships inside its wheel (antspyx's ``ch2`` is downloaded at first use, so it is
not used). Fixed = a contrast-remapped copy (white matter dark, CSF bright: a T2-like look, no monotonic
relation) on the template's grid; moving = the T1 resampled to thick oblique slices (box slice profile)
and moved by ``true``; target points: the head box corners and random voxels of a threshold mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class CaseSpec:
    name: str
    region: str = "head"               # phantom region, or "real_mni152"
    seed: int = 11
    weighting: str = "t1"              # MR weighting of the moving image
    fixed_spacing: tuple = (0.93, 0.93, 3.0)
    fixed_size: tuple = (208, 240, 44)
    fixed_tilt_deg: tuple = (0.0, 7.0, 0.0)    # rotation of the CT grid's direction (about x, y, z)
    moving_spacing: tuple = (0.93, 0.93, 3.0)
    moving_size: tuple = (208, 240, 44)
    moving_tilt_deg: tuple = (7.0, 0.0, 0.0)   # oblique MR acquisition
    thick_factor: int = 3              # thin slices averaged into one thick slice (1: generated directly)
    angles_deg: tuple = (0.0, 0.0, 6.0)  # the known motion: rotation about x, y, z (degrees) ...
    shift_mm: tuple = (6.0, -4.0, 3.0)   # ... then this shift
    fov_center_mm: tuple = (0.0, 0.0, 0.0)  # centre of the moving MRI's field of view (before the motion)
    tags: tuple = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return asdict(self)


def rotation(deg_xyz) -> np.ndarray:
    """``Rz @ Ry @ Rx`` for angles in degrees about x, y, z: the direction matrix of a tilted grid."""
    ax, ay, az = np.deg2rad(deg_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def true_transform(spec: CaseSpec) -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform((0.0, 0.0, 0.0), *np.deg2rad(spec.angles_deg), tuple(float(s) for s in spec.shift_mm))


def centred_origin(size, spacing, direction: np.ndarray, center) -> tuple:
    half = (np.asarray(size, float) - 1) * np.asarray(spacing, float) / 2
    return tuple(float(v) for v in np.asarray(center, float) - direction @ half)


def carry(image: sitk.Image, transform: sitk.Euler3DTransform) -> sitk.Image:
    """``image`` with its grid moved by ``transform`` (p -> R p + t): the content moves rigidly, no interpolation."""
    out = sitk.Image(image)
    rot = np.asarray(transform.GetMatrix()).reshape(3, 3)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    out.SetOrigin(transform.TransformPoint(image.GetOrigin()))
    out.SetDirection(tuple((rot @ d).ravel()))
    return out


def _phantom_pair(spec: CaseSpec):
    from MRtoCTSynthesisLib.data.phantom import generate_case

    d_f = rotation(spec.fixed_tilt_deg)
    ct_case = generate_case(spec.seed, region=spec.region, size=spec.fixed_size, spacing=spec.fixed_spacing,
                            origin=centred_origin(spec.fixed_size, spec.fixed_spacing, d_f, (0, 0, 0)),
                            direction=tuple(d_f.ravel()))
    d_m = rotation(spec.moving_tilt_deg)
    k = int(spec.thick_factor)
    fine_spacing = (spec.moving_spacing[0], spec.moving_spacing[1], spec.moving_spacing[2] / k)
    fine_size = (spec.moving_size[0], spec.moving_size[1], spec.moving_size[2] * k)
    mr_case = generate_case(spec.seed, region=spec.region, size=fine_size, spacing=fine_spacing,
                            origin=centred_origin(fine_size, fine_spacing, d_m, spec.fov_center_mm),
                            direction=tuple(d_m.ravel()))
    mr = getattr(mr_case, f"mr_{spec.weighting}").to_sitk()
    if k > 1:
        mr = sitk.BinShrink(mr, [1, 1, k])  # box slice profile: mean of k thin slices
    fixed = ct_case.ct.to_sitk()
    mask = ct_case.mask.to_sitk()
    labels = ct_case.labels.array
    pts = []
    for lab in np.unique(labels):
        if lab == 0:
            continue
        idx = np.argwhere(labels == lab)
        if len(idx) < 20:
            continue
        c = idx.mean(0)[::-1]
        pts.append(fixed.TransformContinuousIndexToPhysicalPoint(c.tolist()))
    return fixed, mr, mask, np.asarray(pts, float)


def _remap_like_t2(t1: np.ndarray) -> np.ndarray:
    """A non-monotonic intensity remap of a T1 brain: background stays dark, the brightest tissue (white
    matter) becomes dark, CSF (dark on T1) becomes bright -- a T2-like contrast, no affine relation."""
    lo, hi = np.percentile(t1[t1 > 0], [1, 99]) if (t1 > 0).any() else (0.0, 1.0)
    x = np.clip((t1 - lo) / max(hi - lo, 1e-6), 0, 1)
    body = t1 > lo + 0.05 * (hi - lo)
    return np.where(body, 1000.0 * (1.05 - x) ** 1.5, 0.0).astype(np.float32)


def mni152_t1_path() -> Path:
    """The ICBM 2009a T1 template inside the installed nilearn wheel (the ``bench`` extra pins nilearn)."""
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _mni_pair(spec: CaseSpec):
    src = sitk.ReadImage(str(mni152_t1_path()), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(src)
    fixed = sitk.GetImageFromArray(_remap_like_t2(arr))
    fixed.CopyInformation(src)
    d_m = rotation(spec.moving_tilt_deg)
    k = int(spec.thick_factor)
    fine_spacing = (spec.moving_spacing[0], spec.moving_spacing[1], spec.moving_spacing[2] / k)
    fine_size = (spec.moving_size[0], spec.moving_size[1], spec.moving_size[2] * k)
    centre = np.asarray(src.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in src.GetSize()]))
    ref = sitk.Image(list(fine_size), sitk.sitkFloat32)
    ref.SetSpacing(fine_spacing)
    ref.SetDirection(tuple(d_m.ravel()))
    ref.SetOrigin(centred_origin(fine_size, fine_spacing, d_m, centre + np.asarray(spec.fov_center_mm)))
    mr = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    if k > 1:
        mr = sitk.BinShrink(mr, [1, 1, k])
    # independent noise on both (2 % of the bright end), so the two images are not one image remapped
    rng = np.random.default_rng(spec.seed)
    scale_f = float(np.percentile(sitk.GetArrayViewFromImage(fixed), 99))
    scale_m = float(np.percentile(sitk.GetArrayViewFromImage(mr), 99))
    fixed = _noisy(fixed, 0.02 * scale_f, rng)
    mr = _noisy(mr, 0.02 * scale_m, rng)
    mask = sitk.GetImageFromArray((arr > np.percentile(arr[arr > 0], 20)).astype(np.uint8))
    mask.CopyInformation(src)
    return fixed, mr, mask, np.zeros((0, 3))


def _noisy(image: sitk.Image, sigma: float, rng: np.random.Generator) -> sitk.Image:
    a = sitk.GetArrayFromImage(image).astype(np.float32)
    out = sitk.GetImageFromArray(np.abs(a + rng.normal(0, sigma, a.shape).astype(np.float32)))
    out.CopyInformation(image)
    return out


def build_case(spec: CaseSpec, n_random: int = 200):
    """``(fixed CT, moving MRI, true fixed->moving transform, target points N x 3 in fixed mm, info)``."""
    if spec.region == "real_mni152":
        fixed, mr, mask, pts = _mni_pair(spec)
    else:
        fixed, mr, mask, pts = _phantom_pair(spec)
    true = true_transform(spec)
    moving = carry(mr, true)
    m = sitk.GetArrayFromImage(mask) > 0
    idx = np.argwhere(m)  # (k, j, i)
    lo, hi = idx.min(0)[::-1], idx.max(0)[::-1]
    corners = [fixed.TransformContinuousIndexToPhysicalPoint([float(c[0]), float(c[1]), float(c[2])])
               for c in np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T]
    rng = np.random.default_rng(spec.seed)
    pick = idx[rng.choice(len(idx), min(n_random, len(idx)), replace=False)][:, ::-1]
    rand = [fixed.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in pick]
    points = np.concatenate([pts.reshape(-1, 3), np.asarray(corners), np.asarray(rand)])
    kinds = ["label_centroid"] * len(pts) + ["body_box_corner"] * len(corners) + ["body_point"] * len(rand)
    # how much of the fixed body the moving field of view covers (partial field of view)
    inside = 0
    msize = np.asarray(moving.GetSize())
    for p in rand:
        c = np.asarray(moving.TransformPhysicalPointToContinuousIndex(true.TransformPoint(p)))
        inside += bool(np.all(c >= -0.5) and np.all(c <= msize - 0.5))
    info = dict(spec=spec.as_dict(), n_points=len(points), point_kinds=kinds,
                fov_overlap=round(inside / max(1, len(rand)), 3),
                fixed_grid=dict(size=fixed.GetSize(), spacing=fixed.GetSpacing()),
                moving_grid=dict(size=moving.GetSize(), spacing=moving.GetSpacing()))
    return fixed, moving, true, points, info


def tre(estimated: sitk.Transform, true: sitk.Transform, points: np.ndarray) -> dict:
    """Target registration error: mean / max distance and mean |error| per physical axis (mm)."""
    a = np.array([estimated.TransformPoint(tuple(map(float, p))) for p in points])
    b = np.array([true.TransformPoint(tuple(map(float, p))) for p in points])
    d = a - b
    n = np.linalg.norm(d, axis=1)
    return dict(mean=float(n.mean()), median=float(np.median(n)), max=float(n.max()),
                p95=float(np.percentile(n, 95)), x=float(np.abs(d[:, 0]).mean()), y=float(np.abs(d[:, 1]).mean()),
                z=float(np.abs(d[:, 2]).mean()))


def write_case(spec: CaseSpec, folder: Path) -> dict:
    """Build ``spec`` and write ``fixed.nii``, ``moving.nii``, ``true.tfm``, ``points.npy`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fixed, moving, true, points, info = build_case(spec)
    sitk.WriteImage(sitk.Cast(fixed, sitk.sitkFloat32), str(folder / "fixed.nii"))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkFloat32), str(folder / "moving.nii"))
    sitk.WriteTransform(true, str(folder / "true.tfm"))
    np.save(folder / "points.npy", points)
    return info
