"""Registration quality that needs no ground truth: metric values, edge agreement, overlap, Jacobians.

All measures are taken on the fixed (CT) grid (binned down to at most 1.5 million voxels, see
:func:`quality_grid`), over the voxels whose transformed position falls inside the moving image (the
overlap):

* ``mattes_metric``: SimpleITK's Mattes mutual information (negative; lower is better) over *all*
  overlap voxels, so the start and final values are comparable and free of sampling noise.
* ``gradient_correlation``: Pearson correlation of the gradient magnitudes of the fixed and the
  resampled moving image (edges in the same places give a high value, whatever their contrast).
* ``edge_alignment``: the gradient-magnitude weighted mean of ``|cos(angle)|`` between the two
  gradient directions (a normalised-gradient-field score, blind to contrast inversion): 1 when every
  edge is parallel, about 0.5 for unrelated directions in 3D.
* ``jacobian_range``: minimum and maximum of the Jacobian determinant of a transform on the fixed grid
  (1 everywhere for a rigid transform; <= 0 means the deformation folds).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

MAX_FIELD_VOXELS = 4_000_000  # Jacobian fields are computed on a grid no larger than this (coarser if needed)
MAX_QUALITY_VOXELS = 1_500_000  # the quality checks run on the fixed image binned down to at most this


def quality_grid(fixed: sitk.Image) -> sitk.Image:
    """``fixed`` averaged in blocks (per-axis integer factors, the finest axis first) down to at most
    MAX_QUALITY_VOXELS voxels, so the checks cost a bounded time whatever the CT's size."""
    size = np.asarray(fixed.GetSize())
    sp = np.asarray(fixed.GetSpacing(), float)
    f = np.ones(3, int)
    while np.prod(-(-size // f)) > MAX_QUALITY_VOXELS:
        a = int(np.argmin(sp * f + 1e-9 * np.arange(3)))  # coarsen the finest axis (ties: x first)
        f[a] += 1
    return fixed if (f == 1).all() else sitk.BinShrink(fixed, [int(v) for v in f])


def mattes_metric(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, bins: int) -> float | None:
    """Mattes MI of ``moving`` through ``transform`` against ``fixed``, every fixed voxel; None if no overlap."""
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
    r.SetMetricUseFixedImageGradientFilter(False)
    r.SetMetricUseMovingImageGradientFilter(False)
    r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetInitialTransform(transform, inPlace=False)
    try:
        return float(r.MetricEvaluate(fixed, moving))
    except RuntimeError:  # "too many samples map outside the moving image": no usable overlap
        return None


def overlap_mask(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Boolean array on the fixed grid: voxels whose transformed position lies inside the moving image."""
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(inside) > 0


def gradient(image: sitk.Image, sigma_mm: float) -> np.ndarray:
    """Physical-space gradient (array ``(z, y, x, 3)``) of ``image`` at scale ``sigma_mm``."""
    g = sitk.GradientRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), float(sigma_mm), True, True)
    return sitk.GetArrayFromImage(g).astype(np.float32)


def edge_scores(fixed_gradient: np.ndarray, registered: sitk.Image, region: np.ndarray, sigma_mm: float) -> dict:
    """``gradient_correlation`` and ``edge_alignment`` between ``fixed_gradient`` (:func:`gradient` of the
    fixed image) and ``registered`` (on the fixed grid), inside ``region``."""
    if int(region.sum()) < 100:
        return {"gradient_correlation": None, "edge_alignment": None}
    gf, gm = fixed_gradient[region], gradient(registered, sigma_mm)[region]
    nf, nm = np.linalg.norm(gf, axis=1), np.linalg.norm(gm, axis=1)
    corr = None
    if nf.std() > 0 and nm.std() > 0:
        corr = float(np.corrcoef(nf, nm)[0, 1])
    w = nf * nm
    align = float(np.abs((gf * gm).sum(axis=1)).sum() / w.sum()) if w.sum() > 0 else None
    return {"gradient_correlation": corr, "edge_alignment": align}


def jacobian_range(transform: sitk.Transform, reference: sitk.Image) -> tuple[float, float, float]:
    """``(min, max, fraction <= 0)`` of the Jacobian determinant of ``transform`` on ``reference``'s grid
    (on a proportionally coarser grid over the same box when it has more than MAX_FIELD_VOXELS voxels).

    The displacement field is sampled on the grid, differentiated along the grid axes (central
    differences, spacing in mm) and rotated to physical axes with the grid's direction, so oblique grids
    are handled: ``J = I + (du/dxi) D^T`` with ``xi`` the grid coordinates in mm.
    """
    size = np.asarray(reference.GetSize())
    sp = np.asarray(reference.GetSpacing(), float)
    factor = max(1, int(np.ceil((np.prod(size) / MAX_FIELD_VOXELS) ** (1 / 3))))  # bound the memory
    if factor > 1:
        size = np.maximum(3, -(-size // factor))
        sp = sp * factor
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, [int(v) for v in size],
                                              reference.GetOrigin(), [float(v) for v in sp],
                                              reference.GetDirection())
    u = sitk.GetArrayFromImage(field)  # (z, y, x, 3): physical displacement
    d = np.asarray(reference.GetDirection(), float).reshape(3, 3)
    # du/dxi[..., comp, axis] with axis in ITK order (x, y, z) = numpy axes (2, 1, 0)
    grads = [np.gradient(u, sp[a], axis=2 - a) for a in range(3)]
    j = np.stack(grads, axis=-1)  # (z, y, x, comp, axis)
    j = j @ d.T + np.eye(3)
    det = np.linalg.det(j)
    return float(det.min()), float(det.max()), float((det <= 0).mean())
