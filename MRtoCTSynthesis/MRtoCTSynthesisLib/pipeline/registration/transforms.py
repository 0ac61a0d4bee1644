"""Transform files, resampling onto the fixed grid, and target registration error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...io.atomic import atomic_write
from ...io.volume import Geometry, Volume

TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5")


def resample_moving(moving: Volume, fixed_geometry: Geometry, transform: sitk.Transform,
                    interpolator=sitk.sitkLinear, default_value: float | None = None) -> Volume:
    """Resample ``moving`` onto ``fixed_geometry`` through ``transform`` (fixed -> moving points).

    Voxels that map outside the moving image get ``default_value`` (by default the moving image's
    minimum, i.e. its background). The result has exactly ``fixed_geometry``.
    """
    if default_value is None:
        default_value = float(np.min(moving.array))
    ref = sitk.Image(list(fixed_geometry.size), sitk.sitkFloat32)
    fixed_geometry.apply_to(ref)
    src = Volume(np.asarray(moving.array, dtype=np.float32), moving.geometry).to_sitk()
    out = sitk.Resample(src, ref, transform, interpolator, float(default_value), sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(out), fixed_geometry)


def check_transform_suffix(p: Path) -> str:
    """The lower-case suffix of ``p`` when it is a transform file type this module writes; else InputError."""
    suf = p.suffix.lower()
    if suf not in TRANSFORM_SUFFIXES:
        raise InputError(f"cannot use {p} as a transform file: unsupported suffix '{suf or '(none)'}'.",
                         f"use one of {', '.join(TRANSFORM_SUFFIXES)} (Slicer reads .tfm and .h5).")
    return suf


def save_transform(transform: sitk.Transform, path: str | os.PathLike) -> Path:
    """Write ``transform`` to ``path`` (``.tfm``/``.txt`` text or ``.h5``/``.hdf5``) atomically.

    The file is written under a temporary name in the target folder and renamed over ``path`` only
    when complete. Note that Slicer interprets a transform file as the *resampling* (fixed -> moving)
    transform, the same convention as this module.
    """
    p = Path(path)
    suf = check_transform_suffix(p)
    if not p.parent.exists():
        raise InputError(f"output folder {p.parent} does not exist.", "create it first or choose another path.")
    with atomic_write(p, suffix=suf, verify=lambda tmp: sitk.ReadTransform(str(tmp))) as tmp:  # read back: complete
        sitk.WriteTransform(transform, str(tmp))
    return p


def load_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read a transform written by :func:`save_transform` (or by Slicer/ITK)."""
    p = Path(path)
    check_transform_suffix(p)
    if not p.is_file():
        raise InputError(f"transform file {p} does not exist.", "check the path.")
    try:
        t = sitk.ReadTransform(str(p))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"transform file {p} could not be read ({last}).",
                         "give an ITK transform file (.tfm, .txt, .h5) such as one written by `mrtoct register`."
                         ) from None
    return t.Downcast() if hasattr(t, "Downcast") else t


def target_registration_error(estimated: sitk.Transform, true: sitk.Transform,
                              points_mm: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Distance (mm) between where ``estimated`` and ``true`` send each point of ``points_mm`` (N x 3)."""
    pts = np.asarray(points_mm, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be an N x 3 array of millimetres, got shape {pts.shape}.",
                         "pass e.g. np.array([[x, y, z], ...]).")
    a = np.array([estimated.TransformPoint(tuple(p)) for p in pts]).reshape(-1, 3)
    b = np.array([true.TransformPoint(tuple(p)) for p in pts]).reshape(-1, 3)
    return np.linalg.norm(a - b, axis=1)


def transform_summary(transform: sitk.Transform) -> dict:
    """A plain (JSON-ready) description of ``transform``, with a one-line ``text``.

    Rigid: rotation angles (degrees, ITK Euler order) and translation (mm) about ``center_mm``; affine:
    the 3x3 matrix and translation; B-spline: mesh and parameter count; displacement field: grid size;
    composite: its parts, in the order they are listed (the last is applied first).
    """
    t = transform.Downcast() if hasattr(transform, "Downcast") else transform
    if isinstance(t, sitk.CompositeTransform):
        parts = [transform_summary(t.GetNthTransform(i)) for i in range(t.GetNumberOfTransforms())]
        return {"type": "composite", "parts": parts, "text": " o ".join(p["text"] for p in parts)}
    if isinstance(t, sitk.Euler3DTransform):
        ang = [float(np.rad2deg(a)) for a in (t.GetAngleX(), t.GetAngleY(), t.GetAngleZ())]
        tr = [float(v) for v in t.GetTranslation()]
        return {"type": "rigid", "rotation_deg": ang, "translation_mm": tr, "center_mm": list(t.GetCenter()),
                "text": "rigid: rotation " + "/".join(f"{a:.2f}" for a in ang) + " deg (x/y/z), translation "
                        + "/".join(f"{v:.2f}" for v in tr) + " mm"}
    if isinstance(t, sitk.AffineTransform):
        m = [float(v) for v in t.GetMatrix()]
        tr = [float(v) for v in t.GetTranslation()]
        return {"type": "affine", "matrix": m, "translation_mm": tr, "center_mm": list(t.GetCenter()),
                "text": "affine: det " + f"{np.linalg.det(np.reshape(m, (3, 3))):.4f}, translation "
                        + "/".join(f"{v:.2f}" for v in tr) + " mm"}
    if isinstance(t, sitk.BSplineTransform):
        mesh = [int(s) - int(t.GetOrder()) for s in t.GetCoefficientImages()[0].GetSize()]
        return {"type": "bspline", "mesh": mesh, "parameters": int(t.GetNumberOfParameters()),
                "text": f"bspline: mesh {'x'.join(map(str, mesh))}, {t.GetNumberOfParameters()} parameters"}
    if isinstance(t, sitk.DisplacementFieldTransform):
        size = list(t.GetDisplacementField().GetSize())
        return {"type": "displacement_field", "size": size, "text": f"displacement field {'x'.join(map(str, size))}"}
    return {"type": t.GetName(), "text": t.GetName()}
