"""Volume I/O that keeps geometry.

A :class:`Volume` is a numpy array in SimpleITK's index order ``(k, j, i)`` = ``(z, y, x)`` plus its
:class:`Geometry` (ITK/LPS physical space: spacing in mm, origin in mm, 3x3 direction cosines whose
*columns* are the physical directions of the i, j, k axes). Every array that leaves this module travels
with its geometry, and every output the engine writes is built with :meth:`Volume.with_array` from the
input MRI, so it has exactly the MRI's grid.

Reading accepts NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``)
and DICOM series (a folder). :func:`read_volume` checks the header before reading any voxel (voxel count against
the file size and free memory, real single-channel 3D data, spacing range, orthonormal directions) and a DICOM
series for one orientation, one size and even slice spacing. Writing accepts NIfTI, NRRD and ``.mha`` and is
atomic and verified (:func:`write_volume` through :mod:`.atomic`): the file is written next to the target under a
temporary name, checked, and renamed over it only when complete, so a crash, a cancel or a full disk never leaves a
half-written file in place of a good one.
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import OutputWriteError, atomic_write, check_path_encodable, free_space_note, incomplete_error
from .memory import check_fits_in_memory, format_bytes

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
        origin = tuple(round(o, 3) for o in self.origin)
        return f"size {self.size[0]}x{self.size[1]}x{self.size[2]}, spacing {sp} mm, origin {origin}"


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


# ------------------------------------------------------------------------------------------ limits and checks
#: direction cosines must be orthonormal to this tolerance (max |D^T D - I|; float32 headers are good to ~1e-7)
DIRECTION_TOLERANCE = 1e-3
#: the voxel spacing a volume may have, in mm (a micro-CT voxel is ~0.005 mm; nothing clinical is a metre wide)
SPACING_RANGE_MM = (1e-3, 1e3)
#: the most a deflate stream (gzip, zlib) can expand: 1032:1 -- so a compressed file of n bytes holds at most
#: 1032 n bytes of voxel data (plus a little slack for headers)
_DEFLATE_MAX_RATIO = 1032
#: a DICOM series' slice positions must be evenly spaced to this fraction of the median spacing (+ 0.01 mm)
DICOM_SPACING_TOLERANCE = 0.05

_COMPLEX_PIXEL_IDS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)
_SERIES_FIX = ("choose one series with --series-uid UID (its SeriesInstanceUID), or copy each series into its own "
               "folder")


def _bytes_per_component(pixel_id: int) -> int:
    try:
        return int(sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id, 1)).dtype.itemsize)
    except Exception:  # noqa: BLE001 - vector/label ids, or an id this SimpleITK cannot instantiate
        try:
            img = sitk.Image([1, 1], pixel_id, 2)
            return int(sitk.GetArrayViewFromImage(img).dtype.itemsize)
        except Exception:  # noqa: BLE001
            return 8


def check_regular_file(p: Path, what: str) -> os.stat_result:
    """``os.stat`` of an existing input file; refuse FIFOs, devices and sockets (reading them hangs or never ends)."""
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise InputError(f"{what} {p} is {kind}, not a regular file.",
                         "give the path of an image file (NIfTI, NRRD, MHA) or of a DICOM folder.")
    return st


def validate_geometry(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], what: str,
                      where) -> None:
    """Refuse a grid the engine cannot represent faithfully: non-finite or out-of-range spacing, a non-finite
    origin, a direction matrix that is not orthonormal (a sheared or scaled grid; see :data:`DIRECTION_TOLERANCE`)."""
    sp = np.asarray(spacing, dtype=np.float64)
    lo, hi = SPACING_RANGE_MM
    if not np.all(np.isfinite(sp)) or np.any(sp < lo) or np.any(sp > hi):
        shown = " x ".join(f"{s:g}" for s in sp)
        raise InputError(f"{what} {where} has voxel spacing {shown} mm, outside the range the engine accepts "
                         f"({lo:g} to {hi:g} mm; every value must be a positive finite number).",
                         "fix the spacing in the file's header (e.g. in 3D Slicer: Volumes > Volume Information, "
                         "then save), or export the volume again.")
    if not np.all(np.isfinite(np.asarray(origin, dtype=np.float64))):
        raise InputError(f"{what} {where} has a non-finite origin {tuple(origin)}.",
                         "fix the origin in the file's header, or export the volume again.")
    d = np.asarray(direction, dtype=np.float64)
    n = int(round(np.sqrt(d.size)))
    d = d.reshape(n, n)[:3, :3] if n >= 3 else d.reshape(n, n)
    err = float(np.max(np.abs(d.T @ d - np.eye(d.shape[0])))) if np.all(np.isfinite(d)) else float("inf")
    if not err <= DIRECTION_TOLERANCE:
        cols = d / np.maximum(np.linalg.norm(d, axis=0), 1e-300)
        angles = [float(np.degrees(np.arccos(np.clip(cols[:, a] @ cols[:, b], -1, 1))))
                  for a, b in ((0, 1), (0, 2), (1, 2))] if d.shape[0] == 3 else []
        detail = (f"angles between its axes {', '.join(f'{a:.2f}' for a in angles)} degrees instead of 90"
                  if angles and np.all(np.isfinite(angles)) else "non-finite or degenerate values")
        raise InputError(f"{what} {where} has a direction matrix that is not orthonormal ({detail}; max deviation "
                         f"{err:.2g}): its voxel grid is sheared or scaled, which SimpleITK and the engine would "
                         "silently get wrong.",
                         "resample the volume onto an orthogonal grid first (e.g. 3D Slicer: Resample Scalar Volume, "
                         "or SimpleITK Resample), or correct the direction cosines in its header.")


def _nifti_header_info(path: Path) -> dict | None:
    """Fields of a NIfTI-1/-2 header needed before reading: compression, sform code and matrix. None when the
    header cannot be parsed (SimpleITK reports that itself)."""
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        with opener(path, "rb") as fh:
            head = fh.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for endian in "<>":
        if len(head) >= 4 and struct.unpack(endian + "i", head[:4])[0] in (348, 540):
            break
    else:
        return None
    size = struct.unpack(endian + "i", head[:4])[0]
    if len(head) < size:
        return {"gz": gz, "sform_code": 0, "srow": None}
    if size == 348:
        sform_code = struct.unpack(endian + "h", head[254:256])[0]
        srow = struct.unpack(endian + "12f", head[280:328])
    else:
        sform_code = struct.unpack(endian + "i", head[348:352])[0]
        srow = struct.unpack(endian + "12d", head[400:496])
    return {"gz": gz, "sform_code": int(sform_code), "srow": srow}


def _text_header(path: Path, limit: int = 1 << 16) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("latin-1")
    except OSError:
        return ""


def _data_bytes_bound(p: Path, suffix: str, file_size: int) -> tuple[int | None, str]:
    """An upper bound of the voxel bytes the file can hold (None = no bound known) and how it was found."""
    deflate = file_size * _DEFLATE_MAX_RATIO + (1 << 20)
    if suffix in (".nii", ".nii.gz"):
        info = _nifti_header_info(p)
        if info is None:
            return None, ""
        return (deflate, "compressed") if info["gz"] else (file_size, "uncompressed")
    text = _text_header(p)
    if suffix in (".nrrd", ".nhdr"):
        fields = {}
        for line in text.split("\n\n", 1)[0].splitlines()[1:]:
            key, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                fields[key.strip().lower()] = value.strip().lstrip("=").strip()
        enc = fields.get("encoding", "raw").lower()
        size = file_size
        data_file = fields.get("data file") or fields.get("datafile")
        if data_file:
            if data_file.startswith("LIST") or "%" in data_file or " " in data_file:
                return None, ""
            try:
                size = check_regular_file(p.parent / data_file, "data file of").st_size
            except OSError:
                return None, ""
        if enc in ("raw",):
            return size, "uncompressed"
        if enc in ("gzip", "gz"):
            return size * _DEFLATE_MAX_RATIO + (1 << 20), "compressed"
        if enc in ("ascii", "txt", "text", "hex"):
            return size * 8, "text"  # at least one character and a separator per value of up to 8 bytes
        return None, ""  # bzip2: no useful bound
    if suffix in (".mha", ".mhd"):
        fields = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
        compressed = fields.get("compresseddata", "false").lower() == "true"
        data_file = fields.get("elementdatafile", "LOCAL")
        size = file_size
        if data_file.upper() != "LOCAL":
            if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
                return None, ""
            try:
                size = check_regular_file(p.parent / data_file, "data file of").st_size
            except OSError:
                return None, ""
        return (size * _DEFLATE_MAX_RATIO + (1 << 20), "compressed") if compressed else (size, "uncompressed")
    return None, ""


def _check_header_sizes(p: Path, reader: sitk.ImageFileReader, what: str, file_size: int) -> None:
    """Before any voxel is read: the voxel count the header claims must fit in the file and in free memory."""
    size = [int(s) for s in reader.GetSize()]
    nvox = int(np.prod(size, dtype=object))
    comp = max(1, int(reader.GetNumberOfComponents()))
    nbytes = nvox * comp * _bytes_per_component(reader.GetPixelID())
    suffix = volume_suffix(p)
    bound, kind = _data_bytes_bound(p, suffix, file_size)
    shown = "x".join(str(s) for s in size)
    if bound is not None and nbytes > bound:
        raise InputError(
            f"{what} file {p} is truncated or its header is wrong: the header describes {shown} voxels "
            f"({format_bytes(nbytes)} of voxel data) but the {kind} file has only {format_bytes(file_size)}.",
            "copy or download the file again, or export it again from the scanner or viewer.")
    # SimpleITK's buffer, numpy's copy of it and the float32 volume
    check_fits_in_memory(2 * nbytes + 4 * nvox * comp, f"reading {what} {p} ({shown} voxels)",
                         "close other programs or use a machine with more memory, or crop/resample the volume first.")


def _check_nifti_sform(p: Path, what: str) -> None:
    """ITK's NIfTI reader silently makes a non-orthogonal sform orthogonal; refuse such a file instead."""
    info = _nifti_header_info(p)
    if info is None or info["sform_code"] <= 0 or info["srow"] is None:
        return
    m = np.asarray(info["srow"], dtype=np.float64).reshape(3, 4)[:, :3]
    norms = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(norms <= 0):
        validate_geometry((1, 1, 1), (0, 0, 0), (np.nan,) * 9, what, p)
    validate_geometry((1, 1, 1), (0, 0, 0), tuple((m / norms).ravel()), what, p)


def _dicom_tags(path: str) -> dict:
    r = sitk.ImageFileReader()
    r.SetFileName(path)
    r.ReadImageInformation()

    def tag(key):
        return r.GetMetaData(key).strip() if r.HasMetaDataKey(key) else None

    return {"ipp": tag("0020|0032"), "iop": tag("0020|0037"), "rows": tag("0028|0010"), "cols": tag("0028|0011"),
            "spacing": tag("0028|0030"), "size": tuple(int(s) for s in r.GetSize()[:2])}


def _floats(text: str | None, n: int):
    try:
        vals = [float(v) for v in (text or "").replace(",", "\\").split("\\") if v.strip()]
    except ValueError:
        return None
    return np.asarray(vals) if len(vals) == n and np.all(np.isfinite(vals)) else None


def check_dicom_series(files: Sequence[str], folder: Path, what: str) -> None:
    """A DICOM series must be one volume: one orientation, one image size and pixel spacing, and slice positions
    that are evenly spaced, without duplicates or gaps (ITK would silently take the spacing of the first two)."""
    tags = []
    for f in files:
        try:
            tags.append(_dicom_tags(f))
        except RuntimeError:
            raise InputError(f"{what}: the DICOM file {f} in {folder} cannot be read.",
                             "remove it from the folder, or export the series again.") from None
    sizes = sorted({t["size"] for t in tags})
    if len(sizes) > 1:
        shown = ", ".join(f"{a}x{b}" for a, b in sizes)
        raise InputError(f"{what}: the DICOM series in {folder} mixes images of different sizes ({shown}); it is "
                         "not one volume.", _SERIES_FIX + "; or remove the odd images (e.g. a localizer).")
    pix = {t["spacing"] for t in tags if t["spacing"]}
    if len({tuple(np.round(_floats(s, 2), 4)) for s in pix if _floats(s, 2) is not None}) > 1:
        raise InputError(f"{what}: the DICOM series in {folder} mixes different pixel spacings "
                         f"({', '.join(sorted(pix))}).",
                         _SERIES_FIX + "; or remove the odd images.")
    iops = [_floats(t["iop"], 6) for t in tags]
    ipps = [_floats(t["ipp"], 3) for t in tags]
    if any(v is None for v in iops) or any(v is None for v in ipps) or len(files) < 2:
        return  # no positions to check (e.g. secondary captures): ITK orders the files by name
    ref = iops[0]
    if any(np.max(np.abs(v - ref)) > 1e-3 for v in iops[1:]):
        n_orient = len({tuple(np.round(v, 3)) for v in iops})
        raise InputError(f"{what}: the DICOM series in {folder} mixes {n_orient} slice orientations (e.g. axial and "
                         "sagittal images, or a localizer); it is not one volume.",
                         _SERIES_FIX + "; or remove the images of the other orientation.")
    normal = np.cross(ref[:3], ref[3:])
    pos = np.sort(np.array([float(np.dot(p_, normal)) for p_ in ipps]))
    gaps = np.diff(pos)
    dup = int(np.count_nonzero(gaps < 1e-3))
    if dup:
        raise InputError(f"{what}: the DICOM series in {folder} holds {dup} duplicate slice position(s) (two images at "
                         "the same place, e.g. two echoes, repeated acquisitions or a copied file).",
                         _SERIES_FIX + "; or remove the duplicate images.")
    med = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - med)))
    if worst > DICOM_SPACING_TOLERANCE * med + 0.01:
        raise InputError(f"{what}: the slices of the DICOM series in {folder} are not evenly spaced (spacing "
                         f"{float(gaps.min()):.3g} to {float(gaps.max()):.3g} mm, median {med:.3g} mm): slices are "
                         "missing or the series mixes stacks, so the volume's geometry would be wrong.",
                         _SERIES_FIX + "; or export the complete series again (no missing slices).")


def _read_dicom_series(folder: Path, series_uid, what: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = list(reader.GetGDCMSeriesIDs(str(folder)) or [])
    if not series:
        raise InputError(
            f"{folder} is a folder but holds no DICOM series.",
            "point at a DICOM series folder, or at a NIfTI/NRRD/MHA file.",
        )
    wanted = [series_uid] if isinstance(series_uid, str) else list(series_uid or [])
    chosen = [u for u in wanted if u in series]
    if len(chosen) == 1:
        uid = chosen[0]
    elif len(chosen) > 1:
        raise InputError(f"{folder} holds several of the series given with --series-uid ({', '.join(chosen)}).",
                         "give the UID of only one series in this folder.")
    elif len(series) == 1 and (not wanted or len(wanted) > 1):
        uid = series[0]  # the only series (a --series-uid list may name series of other folders)
    elif wanted:
        raise InputError(f"series {', '.join(wanted)} is not in {folder}.", f"use one of: {', '.join(series)}")
    else:
        listing = "\n    ".join(series)
        raise InputError(f"{folder} holds {len(series)} DICOM series:\n    {listing}", _SERIES_FIX + ".")
    files = list(reader.GetGDCMSeriesFileNames(str(folder), uid))
    check_dicom_series(files, folder, what)
    per_file = _dicom_tags(files[0])["size"]
    nvox = int(np.prod(per_file, dtype=object)) * len(files)
    check_fits_in_memory(nvox * 2 * 2 + nvox * 4, f"reading {what} {folder} ({len(files)} slices)",
                         "close other programs or use a machine with more memory.")
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"{what}: the DICOM series in {folder} could not be read ({first}).",
                         _SERIES_FIX + "; or export the series again.") from None


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


def read_volume(path: str | os.PathLike, what: str = "volume", series_uid=None,
                allow_nonfinite: bool = False) -> Volume:
    """Read a 3D scalar volume with its geometry, as float32.

    ``what`` names the input in error messages ("MRI", "reference CT", ...). A folder is read as a DICOM series
    (``series_uid``, one UID or a list of UIDs, picks the series where the folder holds several). Before any voxel
    is read, the header is checked: a single-channel 3D real-valued image (RGB/vector, 2D, 4D and complex images are
    refused), a voxel count that fits in the file (a header claiming more data than the file can hold is refused,
    see :func:`_data_bytes_bound`) and in free memory, spacing within :data:`SPACING_RANGE_MM`, an orthonormal
    direction matrix (:func:`validate_geometry`; for NIfTI also the sform, which ITK would silently make
    orthogonal). A DICOM series must be one evenly spaced volume (:func:`check_dicom_series`). Files that are not
    regular files (FIFOs, devices) and names that are not valid UTF-8 are refused. After reading: a NIfTI file cut
    short and NaN/Inf voxels (unless ``allow_nonfinite``; NIfTI files are checked for the values stored in the
    file, since ITK's NIfTI reader turns NaN/Inf into 0) are refused. Every problem is an :class:`InputError`.
    """
    p = Path(path)
    check_path_encodable(p, f"{what} file")
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist.", "check the path (and the current folder).")
    if p.is_dir():
        image = _read_dicom_series(p, series_uid, what)
    else:
        st = check_regular_file(p, f"{what} file")
        if not os.access(p, os.R_OK):
            raise InputError(f"{what} file {p} is not readable.", "check its permissions.")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise InputError(
                f"{what} file {p} could not be read as an image ({first}).",
                f"give a NIfTI, NRRD or MHA file or a DICOM folder; supported suffixes: {', '.join(READ_SUFFIXES)}.",
            ) from None
        _check_image_kind(reader.GetNumberOfComponents(), reader.GetDimension(), tuple(reader.GetSize()),
                          reader.GetPixelID(), what, p)
        _check_header_sizes(p, reader, what, st.st_size)
        dim = reader.GetDimension()
        if dim >= 3:
            validate_geometry(reader.GetSpacing()[:3], reader.GetOrigin()[:3], reader.GetDirection(), what, p)
        if volume_suffix(p) in (".nii", ".nii.gz"):
            _check_nifti_sform(p, what)
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise InputError(f"{what} file {p} could not be read ({first}).",
                             "copy or download the file again, or export it again from the scanner or viewer."
                             ) from None
    _check_image_kind(image.GetNumberOfComponentsPerPixel(), image.GetDimension(), tuple(image.GetSize()),
                      image.GetPixelID(), what, p)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    validate_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), what, p)
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


def _check_image_kind(components: int, dim: int, size: tuple, pixel_id: int, what: str, p: Path) -> None:
    """One channel, real values, 3D (or 4D with one frame), no empty axis."""
    if pixel_id in _COMPLEX_PIXEL_IDS:
        raise InputError(f"{what} {p} holds complex-valued voxels (e.g. raw MR phase/k-space data); the engine needs "
                         "real values and would otherwise silently keep only the real part.",
                         "give the magnitude image instead (e.g. SimpleITK ComplexToModulus, or the scanner's "
                         "magnitude series).")
    if components != 1:
        raise InputError(
            f"{what} {p} has {components} components per voxel (RGB or vector image).",
            "give a single-channel grey-scale volume (export one channel, e.g. with SimpleITK "
            "VectorIndexSelectionCast).",
        )
    if not (dim == 3 or (dim == 4 and size[3] == 1)):
        kind = "2D" if dim == 2 else f"{dim}D"
        fix = ("give the 3D volume the slice came from." if dim == 2 else
               "extract one 3D frame first (e.g. SimpleITK: image[:, :, :, t]).")
        raise InputError(f"{what} {p} is a {kind} image of size {size}; a 3D volume is needed.", fix)
    if min(size) < 1:
        raise InputError(f"{what} {p} is empty (size {size}).", "give a non-empty 3D volume.")


def verify_volume_file(tmp: Path, image: sitk.Image, target: Path, what: str | None = None) -> None:
    """Check a volume file just written: its header reads back with the written size, spacing and voxel type, and
    all its voxel data are there (NIfTI: the data length the header promises, and for .nii.gz an intact gzip stream
    with its CRC; NRRD/MHA: the voxels read back equal those written). Raises :class:`OutputWriteError`."""
    r = sitk.ImageFileReader()
    r.SetFileName(str(tmp))
    try:
        r.ReadImageInformation()
    except RuntimeError as exc:
        raise incomplete_error(target, f"its header cannot be read back: {str(exc).strip().splitlines()[-1]}",
                               what) from None
    if tuple(r.GetSize()) != tuple(image.GetSize()) or r.GetPixelID() != image.GetPixelID() \
            or not np.allclose(r.GetSpacing(), image.GetSpacing(), rtol=1e-6):
        raise incomplete_error(target, "its header does not describe the volume written", what)
    suf = volume_suffix(target)
    if suf in (".nii", ".nii.gz"):
        scan = _nifti_scan(tmp)
        if scan is None or scan[1] < scan[0]:
            got = "unknown" if scan is None else f"{scan[1]} of {scan[0]}"
            raise incomplete_error(target, f"voxel bytes present: {got}", what)
        if _is_gzip(tmp):
            try:
                with gzip.open(tmp, "rb") as fh:
                    while fh.read(1 << 22):
                        pass
            except (OSError, EOFError, zlib.error) as exc:
                raise incomplete_error(target, f"its gzip stream is cut short or damaged ({exc})", what) from None
        return
    try:
        back = sitk.ReadImage(str(tmp))
    except RuntimeError as exc:
        raise incomplete_error(target, f"it cannot be read back: {str(exc).strip().splitlines()[-1]}", what) from None
    a, b = sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)
    if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(
            np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)):
        raise incomplete_error(target, "the voxels read back differ from those written", what)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def write_volume(volume: Volume, path: str | os.PathLike, dtype=None, what: str | None = None) -> Path:
    """Write ``volume`` atomically to ``path`` (NIfTI, NRRD or MHA) and return the path.

    Through :func:`.atomic.atomic_write`: the image goes to a temporary file in the target folder, is fsync-ed,
    verified by :func:`verify_volume_file` (ITK does not always report a full disk: the check catches a truncated
    file) and renamed over ``path`` only then. On any error the temporary file is removed, an existing ``path`` is
    left untouched, and a write failure is an :class:`.atomic.OutputWriteError`. ``dtype`` casts the array first
    (e.g. ``np.int16`` for HU); ``what`` names the output in messages (e.g. ``--out-ct``).
    """
    p = Path(path)
    suf = volume_suffix(p)
    if suf not in WRITE_SUFFIXES:
        raise InputError(
            f"cannot write {p}: unsupported suffix '{suf or '(none)'}'.",
            f"use one of {', '.join(WRITE_SUFFIXES)}.",
        )
    check_path_encodable(p, what or "output")
    if not p.parent.exists():
        raise InputError(f"output folder {p.parent} does not exist.", "create it first or choose another path.")
    arr = volume.array if dtype is None else volume.array.astype(dtype)
    image = Volume(arr, volume.geometry).to_sitk()
    label = f"{what} {p}" if what else str(p)
    with atomic_write(p, suffix=suf, verify=lambda tmp: verify_volume_file(tmp, image, p, label), what=label) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            kept = " the previous file is unchanged." if p.exists() else " nothing was written."
            raise OutputWriteError(f"could not write {label}: SimpleITK failed ({first}){free_space_note(p.parent)};"
                                   f"{kept}", "check the free disk space and the folder, then run again.") from None
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
