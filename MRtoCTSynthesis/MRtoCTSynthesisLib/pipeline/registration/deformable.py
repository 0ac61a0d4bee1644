"""Deformable refinement after the rigid stage: a cubic B-spline (SimpleITK) or ANTs SyN (antspyx, optional).

Use: preparing *paired training data* when soft tissue moved between the MR and the CT sessions
(bladder and bowel filling, neck flexion), so that voxel-wise losses compare the same tissue. Not for
geometric work that needs the MRI's own shape (planning on the MRI): there the rigid result is the one
to use. The Jacobian determinant range of the result is reported (see :mod:`.quality`).

Limits measured on the phantoms (multi-modal CT vs T1, a 12 mm smooth bump, 3.5 x 3.5 x 4.5 mm): the
B-spline with the default 30 000 samples does not reduce the residual below the rigid one (1.5 mm);
with 80 000 samples it reaches 1.0 mm, in minutes on one core. On a single contrast (MR vs MR) it
takes 1.5 mm to 0.4 mm. Mutual information constrains local CT/MR deformations weakly; treat the
B-spline as a refinement to inspect (Jacobian range, edge alignment), and prefer ``"syn"`` when antspyx
is installed.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from .linear import ProgressFn, StageOptions, run_stage
from .pyramid import Level

BSPLINE_SPACING_MM = 40.0  # distance between B-spline control points
MAX_MESH = 24  # control-point intervals per axis at most (bounds the parameter count)
BSPLINE_MIN_RESOLUTION_MM = 1.5  # the B-spline runs at the finest level at or above this resolution
BSPLINE_MAX_ITERATIONS = 50  # L-BFGS-B iterations at most (each costs many metric evaluations)


def bspline_levels(levels: list[Level]) -> list[Level]:
    """The pyramid level the B-spline stage runs on: the finest at or above BSPLINE_MIN_RESOLUTION_MM
    (control points 40 mm apart need no finer image; each finer level costs minutes on large images)."""
    usable = [lv for lv in levels if lv.target_mm >= BSPLINE_MIN_RESOLUTION_MM] or levels[:1]
    return usable[-1:]


def bspline_stage(rigid: sitk.Transform, fixed: sitk.Image, moving: sitk.Image, levels: list[Level],
                  opts: StageOptions, progress: ProgressFn | None, base: float, weight: float):
    """A cubic B-spline (control points every BSPLINE_SPACING_MM) applied before ``rigid``; returns (bspline, info)."""
    extent = [(n - 1) * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [int(min(MAX_MESH, max(1, round(e / BSPLINE_SPACING_MM)))) for e in extent]
    initial = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    b_opts = replace(opts, iterations=min(opts.iterations, BSPLINE_MAX_ITERATIONS))
    out, info = run_stage("bspline", initial, fixed, moving, bspline_levels(levels), b_opts, progress, base, weight,
                          moving_initial=rigid, kind="bspline")
    info["mesh"] = mesh
    info["control_point_spacing_mm"] = [round(e / m, 2) for e, m in zip(extent, mesh)]
    return out, info


def antspyx_available() -> bool:
    try:
        import ants  # noqa: F401  (optional dependency: imported only to see whether it is there)
    except ImportError:
        return False
    return True


def syn_stage(rigid: sitk.Transform, fixed: sitk.Image, moving: sitk.Image, seed: int,
              progress: ProgressFn | None, base: float) -> tuple[sitk.Transform, dict]:
    """ANTs SyN (antspyx ``type_of_transform='SyNOnly'``) between the CT and the rigidly registered MRI.

    Returns the displacement-field transform (fixed -> rigidly registered MRI points), to be applied
    before ``rigid``, and a stage summary. antspyx is imported here only: it is an optional extra.
    """
    try:
        import ants  # optional, heavy: imported only for this mode
    except ImportError:
        raise InputError("registration mode 'syn' needs antspyx, which is not installed.",
                         "install it (pip install antspyx==0.6.3, the project's `bench` extra) or use mode "
                         "'bspline'.") from None
    import time

    t0 = time.perf_counter()
    if progress is not None:
        progress(base, "syn: ANTs SyN on the rigidly registered MRI (no per-iteration progress)")
    rigid_moving = sitk.Resample(moving, fixed, rigid, sitk.sitkLinear,
                                 float(np.min(sitk.GetArrayViewFromImage(moving))), sitk.sitkFloat32)
    with tempfile.TemporaryDirectory(prefix="mrtoct-syn-") as tmp:
        f_path, m_path = Path(tmp) / "fixed.nii.gz", Path(tmp) / "moving.nii.gz"
        sitk.WriteImage(sitk.Cast(fixed, sitk.sitkFloat32), str(f_path))
        sitk.WriteImage(rigid_moving, str(m_path))
        try:
            res = ants.registration(ants.image_read(str(f_path)), ants.image_read(str(m_path)),
                                    type_of_transform="SyNOnly", random_seed=int(seed) + 1,
                                    outprefix=str(Path(tmp) / "syn_"))
        except Exception as exc:  # antspyx raises plain RuntimeError/ValueError from ANTs
            raise InputError(f"ANTs SyN failed ({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}).",
                             "use mode 'bspline', or check that the rigid result overlaps the CT.") from None
        warp = [p for p in res["fwdtransforms"] if str(p).endswith((".nii.gz", ".nii"))]
        if not warp:
            raise InputError("ANTs SyN returned no displacement field.", "use mode 'bspline'.")
        field = sitk.ReadImage(str(warp[0]), sitk.sitkVectorFloat64)
    syn = sitk.DisplacementFieldTransform(field)
    info = dict(name="syn", tool=f"antspyx {getattr(ants, '__version__', '?')} SyNOnly", levels=[],
                metric=None, iterations_last_level=None, stop="ANTs SyN finished",
                seconds=round(time.perf_counter() - t0, 3))
    return syn, info
