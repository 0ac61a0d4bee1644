"""Volume I/O that keeps geometry.

A :class:`Volume` is a numpy array in SimpleITK's index order ``(k, j, i)`` = ``(z, y, x)`` plus its
:class:`Geometry` (ITK/LPS physical space: spacing in mm, origin in mm, 3x3 direction cosines whose
*columns* are the physical directions of the i, j, k axes). Every array that leaves this module travels
with its geometry, and every output the engine writes is built with :meth:`Volume.with_array` from the
input MRI, so it has exactly the MRI's grid.

Reading accepts NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``)
and DICOM series (a folder). Writing accepts NIfTI, NRRD and ``.mha`` and is atomic: the file is written
next to the target under a temporary name and renamed over it only when complete, so a crash or a
cancel never leaves a half-written file in place of a good one.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_write

READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


@dataclass(frozen=True)
class Geometry:
    """Physical grid of a 3D image in ITK's LPS convention.

    ``size`` is ``(nx, ny, nz)`` (ITK order); the matching numpy array has shape ``(nz, ny, nx)``.
    ``direction`` is the row-major 3x3 matrix whose column c is the LPS direction of index axis c.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """The numpy shape ``(nz, ny, nx)`` of an array on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_physical(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry's spacing, origin and direction on ``image`` (sizes must agree)."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def matches(self, other: "Geometry", tol_mm: float = 1e-3, tol_dir: float = 1e-5) -> bool:
        """True when both grids cover the same voxels (same size; spacing/origin within ``tol_mm``)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=tol_dir)
        )

    def describe(self) -> str:
        sp = "x".join(f"{s:g}" for s in self.spacing)
        return f"size {self.size[0]}x{self.size[1]}x{self.size[2]}, spacing {sp} mm, origin {tuple(round(o, 3) for o in self.origin)}"


@dataclass
class Volume:
    """A 3D array ``(nz, ny, nx)`` with its physical :class:`Geometry`."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self):
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(
                f"array shape {tuple(self.array.shape)} does not match geometry shape {self.geometry.shape}"
            )

    @classmethod
    def from_sitk(cls, image: sitk.Image, dtype=np.float32) -> "Volume":
        with np.errstate(over="ignore"):  # float64 beyond the float32 range becomes +-Inf (read_volume refuses it)
            return cls(sitk.GetArrayFromImage(image).astype(dtype, copy=False), Geometry.from_sitk(image))

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        return self.geometry.apply_to(image)

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume on exactly this grid holding ``array`` (same shape required)."""
        return Volume(np.asarray(array), self.geometry)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)


def volume_suffix(path: Path) -> str:
    """The file format suffix of ``path`` (``.nii.gz`` counts as one suffix), lower case."""
    name = path.name.lower()
    for suf in (".nii.gz",) + tuple(s for s in READ_SUFFIXES if s != ".nii.gz"):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = list(reader.GetGDCMSeriesIDs(str(folder)) or [])
    if not series:
        raise InputError(
            f"{folder} is a folder but holds no DICOM series.",
            "point at a DICOM series folder, or at a NIfTI/NRRD/MHA file.",
        )
    if series_uid is None:
        if len(series) > 1:
            listing = "\n    ".join(series)
            raise InputError(
                f"{folder} holds {len(series)} DICOM series:\n    {listing}",
                "choose one with --series-uid UID (or move each series into its own folder).",
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise InputError(f"series {series_uid} is not in {folder}.", f"use one of: {', '.join(series)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader.SetFileNames(files)
    return reader.Execute()


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64


def _nifti_scan(path: Path) -> tuple[int, int, int] | None:
    """``(voxel bytes the header promises, voxel bytes present, NaN/Inf voxels)`` of a single-file NIfTI-1/-2.

    ITK's NIfTI reader silently fills the voxels missing from a truncated file with zeros and turns NaN and
    Inf into 0, so :func:`read_volume` cannot see either problem in the array it gets back; this reads the
    header and streams the voxel data itself (counting non-finite values of float types). Returns None when
    the header cannot be parsed (SimpleITK has already accepted the file by then, so that is not an error).
    """
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            try:
                head = fh.read(348)
                for endian in "<>":
                    sizeof_hdr = struct.unpack(endian + "i", head[:4])[0] if len(head) >= 4 else 0
                    if sizeof_hdr in (348, 540):
                        break
                else:
                    return None
                if sizeof_hdr == 540:
                    head += fh.read(540 - 348)
            except (EOFError, OSError):  # a compressed header cut short
                return 1, 0, 0
            if len(head) < sizeof_hdr:
                return 1, 0, 0
            if sizeof_hdr == 348:
                dims = struct.unpack(endian + "8h", head[40:56])
                datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
                offset = int(struct.unpack(endian + "f", head[108:112])[0])
            else:
                datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
                dims = struct.unpack(endian + "8q", head[16:80])
                offset = struct.unpack(endian + "q", head[168:176])[0]
            if not 1 <= dims[0] <= 7 or bitpix <= 0 or bitpix % 8 or offset < sizeof_hdr:
                return None
            n = 1
            for d in dims[1:dims[0] + 1]:
                n *= max(int(d), 1)
            expected = n * (bitpix // 8)
            code = _NIFTI_FLOAT_TYPES.get(datatype)
            dtype = np.dtype(endian + code) if code else np.dtype(np.uint8)
            step = dtype.itemsize * (1 << 20)
            present, bad, tail = 0, 0, b""
            if not code:  # no values to check: is the last voxel byte there?
                try:
                    fh.seek(offset + expected - 1)
                    return expected, expected if len(fh.read(1)) == 1 else 0, 0
                except (EOFError, OSError):
                    return expected, 0, 0
            try:
                fh.seek(offset)
            except (EOFError, OSError):
                return expected, present, bad
            while present < expected:
                try:
                    buf = fh.read(min(step, expected - present))
                except (EOFError, OSError):  # gzip stream cut short (the part of this read is not counted)
                    break
                if not buf:
                    break
                present += len(buf)
                if code:
                    buf = tail + buf
                    usable = len(buf) - len(buf) % dtype.itemsize
                    a = np.frombuffer(buf[:usable], dtype=dtype)
                    bad += int(a.size - np.count_nonzero(np.isfinite(a)))
                    tail = buf[usable:]
            return expected, present, bad
    except Exception:  # noqa: BLE001 - best effort (zlib.error, struct.error, ...): SimpleITK read the file
        return None


def read_volume(path: str | os.PathLike, what: str = "volume", series_uid: str | None = None,
                allow_nonfinite: bool = False) -> Volume:
    """Read a 3D scalar volume with its geometry, as float32.

    ``what`` names the input in error messages ("MRI", "reference CT", ...). A folder is read as a
    DICOM series (``series_uid`` picks one where the folder holds several). Raises :class:`InputError`
    for a missing or unreadable file, a 2D or 4D image, a multi-component (RGB/vector) image, a NIfTI file
    cut short, and NaN/Inf voxels (unless ``allow_nonfinite``; NIfTI files are checked for the values
    stored in the file, since ITK's NIfTI reader turns NaN/Inf into 0).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist.", "check the path (and the current folder).")
    if p.is_dir():
        image = _read_dicom_series(p, series_uid)
    else:
        if not os.access(p, os.R_OK):
            raise InputError(f"{what} file {p} is not readable.", "check its permissions.")
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise InputError(
                f"{what} file {p} could not be read as an image ({first}).",
                f"give a NIfTI, NRRD or MHA file or a DICOM folder; supported suffixes: {', '.join(READ_SUFFIXES)}.",
            ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{what} {p} has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector image).",
            "give a single-channel grey-scale volume (export one channel, e.g. with SimpleITK VectorIndexSelectionCast).",
        )
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        kind = "2D" if dim == 2 else f"{dim}D"
        fix = ("give the 3D volume the slice came from." if dim == 2 else
               "extract one 3D frame first (e.g. SimpleITK: image[:, :, :, t]).")
        raise InputError(f"{what} {p} is a {kind} image of size {image.GetSize()}; a 3D volume is needed.", fix)
    if min(image.GetSize()) < 1:
        raise InputError(f"{what} {p} is empty (size {image.GetSize()}).", "give a non-empty 3D volume.")
    vol = Volume.from_sitk(image)
    scan = _nifti_scan(p) if not p.is_dir() and volume_suffix(p) in (".nii", ".nii.gz") else None
    if scan is not None and scan[1] < scan[0]:
        raise InputError(
            f"{what} file {p} is truncated: it holds less voxel data than its header describes "
            "(the NIfTI reader would silently fill the rest with zeros).",
            "copy or download the file again, or export it again from the scanner or viewer.",
        )
    if not allow_nonfinite:
        n_bad = int(np.count_nonzero(~np.isfinite(vol.array)))
        if not n_bad and scan is not None:
            n_bad = scan[2]  # ITK's NIfTI reader turns NaN/Inf into 0: the values in the file itself
        if n_bad:
            raise InputError(
                f"{what} {p} has {n_bad} NaN/Inf voxels (or values beyond the float32 range, +-3.4e38).",
                "fill them first (e.g. replace with the background value) and save the volume again.",
            )
    return vol


def write_volume(volume: Volume, path: str | os.PathLike, dtype=None) -> Path:
    """Write ``volume`` atomically to ``path`` (NIfTI, NRRD or MHA) and return the path.

    The image is written to a temporary file in the target folder and renamed over ``path`` only
    after SimpleITK has finished; on any error the temporary file is removed and an existing
    ``path`` is left untouched. ``dtype`` casts the array first (e.g. ``np.int16`` for HU).
    """
    p = Path(path)
    suf = volume_suffix(p)
    if suf not in WRITE_SUFFIXES:
        raise InputError(
            f"cannot write {p}: unsupported suffix '{suf or '(none)'}'.",
            f"use one of {', '.join(WRITE_SUFFIXES)}.",
        )
    if not p.parent.exists():
        raise InputError(f"output folder {p.parent} does not exist.", "create it first or choose another path.")
    arr = volume.array if dtype is None else volume.array.astype(dtype)
    image = Volume(arr, volume.geometry).to_sitk()
    with atomic_write(p, suffix=suf) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return p


def require_same_geometry(a: Volume, b: Volume, what_a: str, what_b: str, tol_mm: float = 1e-3) -> None:
    """Raise :class:`InputError` unless ``a`` and ``b`` lie on the same voxel grid."""
    if not a.geometry.matches(b.geometry, tol_mm=tol_mm):
        raise InputError(
            f"{what_a} and {what_b} are on different grids:\n    {what_a}: {a.geometry.describe()}\n"
            f"    {what_b}: {b.geometry.describe()}",
            f"register/resample {what_b} onto {what_a} first (e.g. `mrtoct register`, or resample with Slicer's "
            "Resample Scalar/Vector/DWI Volume).",
        )


def resample_to(volume: Volume, reference: Geometry, transform: sitk.Transform | None = None,
                interpolator=sitk.sitkLinear, default_value: float = 0.0) -> Volume:
    """Resample ``volume`` onto the ``reference`` grid (optionally through ``transform``)."""
    ref = sitk.Image(list(reference.size), sitk.sitkFloat32)
    reference.apply_to(ref)
    out = sitk.Resample(volume.to_sitk(), ref, transform or sitk.Transform(), interpolator, default_value,
                        sitk.sitkFloat32)
    return Volume.from_sitk(out)


def make_geometry(size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  origin: Sequence[float] = (0.0, 0.0, 0.0),
                  direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Geometry:
    """Build a :class:`Geometry` from plain sequences (``size`` in ITK order x, y, z)."""
    return Geometry(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                    tuple(float(o) for o in origin), tuple(float(d) for d in direction))
